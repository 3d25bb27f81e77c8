"""A layer-dropped teacher with its least important heads and FFN neurons switched off, as a nasbert model
directory (the form of the export's teacher cuts): the quality a head-pruned model would have, measured before
the search space has such an op.

The bottom ``--layers`` layers of the teacher are kept; in each, the attention heads after the ``--heads`` most
important (:func:`nasbert.supernet.importance.head_order`) get zero value rows, value biases and output columns,
and the FFN neurons after the ``--ffn`` most important (:func:`~nasbert.supernet.importance.neuron_order`) zero
input rows, biases and output columns. A unit switched off that way has zero gradients everywhere (its output
is zero whatever its queries and keys, and nothing flows back through a zero output column), so AdamW leaves it
at zero and fine-tuning trains exactly the smaller model. It is not faster: time the real op once it exists;
the work it stands for is given by its FLOPs.

    python bench/zeroed_units.py --layers 2 --heads 6 --ffn 1152 --out runs/default/models/L2-h6-ffn1152
"""

from __future__ import annotations

import argparse

import torch

from nasbert import SearchSpace, SuperNet
from nasbert.export.cuts import cut_arch
from nasbert.export.hf import save_hf_model
from nasbert.supernet.importance import head_order, neuron_order
from nasbert.teacher import load_teacher


def switch_off(teacher, layers: int, heads: int, ffn: int):
    """``teacher``'s bottom ``layers`` layers, in place, each with only ``heads`` heads and ``ffn`` FFN neurons
    switched on. Returns the teacher and the numbers of heads and neurons switched off."""
    config = teacher.config
    head_size = config.hidden_size // config.num_attention_heads
    if not (1 <= layers <= config.num_hidden_layers and 1 <= heads <= config.num_attention_heads
            and 1 <= ffn <= config.intermediate_size):
        raise SystemExit(f"give --layers 1..{config.num_hidden_layers}, --heads 1..{config.num_attention_heads} "
                         f"and --ffn 1..{config.intermediate_size}")
    off_heads = off_neurons = 0
    with torch.no_grad():
        for layer in teacher.encoder.layer[:layers]:
            state = layer.state_dict()  # shares the weights: both orders are taken before any zeroing
            off, neurons = head_order(state, head_size)[heads:].tolist(), neuron_order(state)[ffn:]
            for h in off:
                rows = slice(h * head_size, (h + 1) * head_size)
                layer.attention.self.value.weight[rows] = 0
                layer.attention.self.value.bias[rows] = 0
                layer.attention.output.dense.weight[:, rows] = 0
                off_heads += 1
            layer.intermediate.dense.weight[neurons] = 0
            layer.intermediate.dense.bias[neurons] = 0
            layer.output.dense.weight[:, neurons] = 0
            off_neurons += len(neurons)
    return teacher, off_heads, off_neurons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True, help="heads kept in each layer")
    parser.add_argument("--ffn", type=int, required=True, help="FFN neurons kept in each layer")
    parser.add_argument("--teacher", default=None, help="default: the built-in teacher")
    parser.add_argument("--space", default="minilm_l6", help="a search space of that teacher")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    teacher, tokenizer, _ = load_teacher(args.teacher)
    space = SearchSpace.load(args.space)
    teacher, off_heads, off_neurons = switch_off(teacher, args.layers, args.heads, args.ffn)
    net = SuperNet.from_teacher(space, teacher, reorder="units").eval()
    model = net.extract(cut_arch(space, range(2 * args.layers)), drop_identity_adapters=True)
    save_hf_model(model, args.out, tokenizer=tokenizer)
    print(f"{args.out}: bottom {args.layers} layers, {off_heads} heads and {off_neurons} FFN neurons switched off")


if __name__ == "__main__":
    main()
