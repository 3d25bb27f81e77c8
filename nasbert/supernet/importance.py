"""Reordering the teacher's units by importance, once, before its weights enter the supernet.

Prefix slicing keeps the first units of every layer, so the most useful units must come first. Three
function-preserving permutations are applied to a BERT state dict:

- heads of each layer, by the magnitude of their value -> output path, ``||W_o[:, h]|| * ||W_v[h, :]||``;
- FFN neurons of each layer, by ``||W_in[j, :]|| * ||W_out[:, j]||`` (the weight-magnitude criterion of
  DynaBERT's and once-for-all's channel sorting, without data);
- hidden channels, one permutation for the whole residual stream, by the sum over every LayerNorm of ``|gamma|``
  (the channels each LayerNorm scales up carry the most signal downstream).

The permuted network computes the same function up to the hidden permutation, which the supernet's adapters
undo (see ``SuperNet.from_teacher``).
"""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``scores`` from the most to the least important; ties keep their original order."""
    return torch.sort(-scores.double(), stable=True).indices


def head_order(layer: Tensors, head_size: int) -> torch.Tensor:
    v = layer["attention.self.value.weight"].double()  # (H, H): rows are heads x head_size
    o = layer["attention.output.dense.weight"].double()  # (H, H): columns are heads x head_size
    n_heads = v.shape[0] // head_size
    v_norm = v.view(n_heads, head_size, -1).pow(2).sum(dim=(1, 2)).sqrt()
    o_norm = o.view(o.shape[0], n_heads, head_size).pow(2).sum(dim=(0, 2)).sqrt()
    return _order(v_norm * o_norm)


def neuron_order(layer: Tensors) -> torch.Tensor:
    w_in = layer["intermediate.dense.weight"].double()  # (I, H)
    w_out = layer["output.dense.weight"].double()  # (H, I)
    return _order(w_in.norm(dim=1) * w_out.norm(dim=0))


def hidden_order(embeddings: Tensors, layers: list[Tensors]) -> torch.Tensor:
    score = embeddings["LayerNorm.weight"].double().abs()
    for layer in layers:
        score = score + layer["attention.output.LayerNorm.weight"].double().abs()
        score = score + layer["output.LayerNorm.weight"].double().abs()
    return _order(score)


def split_bert_state(state: Tensors, num_layers: int) -> tuple[Tensors, list[Tensors]]:
    """A ``BertModel`` state dict -> (embedding tensors, one dict per layer), keys without their prefixes."""
    embeddings = {k[len("embeddings."):]: v for k, v in state.items() if k.startswith("embeddings.")}
    embeddings.pop("position_ids", None)
    embeddings.pop("token_type_ids", None)
    layers = []
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        layers.append({k[len(p):]: v for k, v in state.items() if k.startswith(p)})
    return embeddings, layers


def reorder_units(layers: list[Tensors], head_size: int) -> list[Tensors]:
    """The heads and FFN neurons of each layer by importance, hidden channels as they are: the network computes
    exactly the same function (a teacher cut that prunes a layer's FFN keeps its most important neurons)."""
    new_layers = []
    for layer in layers:
        layer = dict(layer)
        heads = head_order(layer, head_size)
        rows = (heads[:, None] * head_size + torch.arange(head_size)[None, :]).reshape(-1)
        for name in ("query", "key", "value"):
            layer[f"attention.self.{name}.weight"] = layer[f"attention.self.{name}.weight"][rows]
            layer[f"attention.self.{name}.bias"] = layer[f"attention.self.{name}.bias"][rows]
        layer["attention.output.dense.weight"] = layer["attention.output.dense.weight"][:, rows]
        neurons = neuron_order(layer)
        layer["intermediate.dense.weight"] = layer["intermediate.dense.weight"][neurons]
        layer["intermediate.dense.bias"] = layer["intermediate.dense.bias"][neurons]
        layer["output.dense.weight"] = layer["output.dense.weight"][:, neurons]
        new_layers.append(layer)
    return new_layers


def reorder_bert(
    embeddings: Tensors, layers: list[Tensors], head_size: int
) -> tuple[Tensors, list[Tensors], torch.Tensor]:
    """Apply the three permutations. Returns new (embeddings, layers) and the hidden order ``perm``:
    channel ``i`` of the reordered network is channel ``perm[i]`` of the original."""
    new_layers = reorder_units(layers, head_size)
    perm = hidden_order(embeddings, new_layers)
    embeddings = {k: (v[:, perm] if v.dim() == 2 else v[perm]) for k, v in embeddings.items()}
    for layer in new_layers:
        for name in ("query", "key", "value"):  # inputs are hidden channels
            layer[f"attention.self.{name}.weight"] = layer[f"attention.self.{name}.weight"][:, perm]
        layer["intermediate.dense.weight"] = layer["intermediate.dense.weight"][:, perm]
        for name in ("attention.output", "output"):  # outputs are hidden channels
            layer[f"{name}.dense.weight"] = layer[f"{name}.dense.weight"][perm]
            layer[f"{name}.dense.bias"] = layer[f"{name}.dense.bias"][perm]
            layer[f"{name}.LayerNorm.weight"] = layer[f"{name}.LayerNorm.weight"][perm]
            layer[f"{name}.LayerNorm.bias"] = layer[f"{name}.LayerNorm.bias"][perm]
    return embeddings, new_layers, perm
