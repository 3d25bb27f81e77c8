"""The teacher's own cuts that the quality panel compares, as nasbert model directories with the teacher's weights
(as the export builds its cut members): the teacher itself in nasbert form, the default family's members and the
layer-dropped free baselines.

    python bench/teacher_cuts.py --out runs/cuts      # -> runs/cuts/{teacher,2x,3x,4x,bottom2,bottom1,...}/

Then, e.g., ``python bench/finetune_models.py --model 4x=runs/cuts/4x ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.data import CorpusConfig, load_corpus
from nasbert.export.calibrate import calibrate_cut
from nasbert.export.cuts import cut_arch, cut_name
from nasbert.export.hf import save_hf_model
from nasbert.teacher import load_teacher

#: name -> (teacher sub-layers kept: 2i is layer i's attention, 2i + 1 its FFN; FFN neurons kept; every FFN pruned),
#: or an architecture string for a cut with FFNs of different sizes (slot 2i holds layer i's attention, 2i + 1 its FFN)
CUTS = {
    "teacher": (range(12), None, False),
    "2x": (range(6), 1152, False),    # teacher-L2+mha2+ffn2@1152
    "3x": (range(5), 768, True),      # teacher-L2+mha2@ffn768 (the 3x member before TOP_ATTENTION_WEIGHT)
    "4x": (range(3), None, False),    # teacher-L1+mha1 (the 4x member before TOP_ATTENTION_WEIGHT)
    "bottom2": (range(4), None, False),
    "bottom1": (range(2), None, False),
    "bottom3": (range(6), None, False),  # 1.98x: just short of 2x
    # the same work as the former 3x / 4x members, spent on FFN neurons instead of a third / second attention:
    # the members since (nasbert.export.cuts.TOP_ATTENTION_WEIGHT)
    "3x-ffn": (range(4), 1152, False),   # teacher-L1+mha1+ffn1@1152
    "4x-ffn": (range(4), 768, True),     # teacher-L2@ffn768
    "3x-every": (range(5), 768, True),   # teacher-L2+mha2@ffn768 (the same cut as "3x")
    "l3-ffn384": (range(6), 384, True),  # teacher-L3@ffn384: the bottom 3 layers, every FFN at a quarter
    "2x-every": (range(8), 768, True),   # teacher-L4@ffn768: the bottom 4 layers, every FFN halved (2.12x)
    "l3-ffn576": (range(6), 576, True),  # teacher-L3@ffn576: the bottom 3 layers, every FFN at 3/8 (3.30x bound)
    # three attentions at 4x: the bottom 3 layers with every FFN at 1/6 and 1/8 (4.22x and 4.47x bounds)
    "l3-ffn256": (range(6), 256, True),
    "l3-ffn192": (range(6), 192, True),
    # more attentions, fewer FFN neurons at 2x and 3x: every attention of the bottom 4 / 5 / 6 layers
    "l4-ffn192": (range(8), 192, True),    # 3.36x bound
    "l5-ffn384": (range(10), 384, True),   # 2.28x bound
    "l6-ffn192": (range(12), 192, True),   # 2.24x bound
    "l3-mha3-ffn1152": (range(7), 1152, True),  # 4 attentions, the 3 FFNs between them at 3/4 (2.07x bound)
    "l3-mha3-ffn1088": (range(7), 1088, True),  # the same with FFNs at 1088 (2.13x bound)
    "l2-mha2-ffn192": (range(5), 192, True),    # 3 attentions, the 2 FFNs between them at 1/8: 4x runner-up
    # the bottom 4 layers at 2x with the FFN neurons kept low: layer 0 whole, 3/4 of layer 1's, 1/4 of layers 2-3'
    "l4-mixed": "384:mha,ffn,mha,ffn1152|384:mha,ffn384,mha,ffn384|384:identity,identity,identity,identity",
}


def bench_cut(space: SearchSpace, name: str) -> tuple[str, Arch]:
    """The cut ``name`` of :data:`CUTS`: its name as the export gives it (``name`` itself for an architecture
    string) and its architecture."""
    spec = CUTS[name]
    if isinstance(spec, str):
        return name, Arch.parse(spec)
    kept, pruned, every = spec
    return cut_name(kept, pruned=pruned, every=every), cut_arch(space, kept, pruned=pruned, every=every)


def load_text(paths: list[str], tokenizer):
    """The corpus of ``paths`` (text files or directories), or the built-in one for ``["builtin"]``."""
    config = CorpusConfig() if paths == ["builtin"] else CorpusConfig(source="files", paths=tuple(paths))
    return load_corpus(config, tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--only", nargs="+", choices=sorted(CUTS), help="default: all of them")
    parser.add_argument("--space", default="minilm_l6", help="a search space of the built-in teacher")
    parser.add_argument("--teacher", help="a local copy of the built-in teacher (a BERT directory; default: the "
                                          "built-in one)")
    parser.add_argument("--calibrate", type=int, default=0, metavar="ROWS",
                        help="calibrate the pruned FFNs (nasbert.export.calibrate) on this many 128-token rows of "
                             "--corpus (0: the neurons and weights the export has without calibration)")
    parser.add_argument("--corpus", nargs="+", default=["../shared/data/wikipedia-en-sample"],
                        help="text files or directories for --calibrate; builtin: the built-in corpus (what the "
                             "offline `nasbert run` calibrates on)")
    parser.add_argument("--suffix", default="", help="appended to every model's directory name")
    args = parser.parse_args()
    teacher, tokenizer, _ = load_teacher(args.teacher)
    rows = None
    if args.calibrate:
        rows = load_text(args.corpus, tokenizer).train[: args.calibrate]
    space = SearchSpace.load(args.space)
    net = SuperNet.from_teacher(space, teacher, reorder="units").eval()
    for name in args.only or CUTS:
        label, arch = bench_cut(space, name)
        model = net.extract(arch, drop_identity_adapters=True)
        report = calibrate_cut(model, arch, space, teacher, rows) if rows is not None else []
        save_hf_model(model, args.out / (name + args.suffix), tokenizer=tokenizer)
        print(f"{args.out / (name + args.suffix)}: {label} ({arch})"
              + "".join(f"; layer {r.teacher_layer}'s FFN {r.neurons} neurons, error {r.error_before:.4f} -> "
                        f"{r.error_after:.4f}" for r in report))


if __name__ == "__main__":
    main()
