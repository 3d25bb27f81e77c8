"""``nasbert pick``: print the family member that fits one budget (:func:`nasbert.export.pick.pick`).

Exit status: 0 picked, 1 bad input, 2 nothing fits.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ..export.family import Family, FamilyError, FamilyMember
from ..export.pick import PRECISIONS, NoFit, format_params, pick_with_family

__all__ = ["build_pick_parser", "pick_main", "run_pick"]


def build_pick_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``nasbert pick``'s arguments to ``parser`` (a sub-command's parser), or build a parser."""
    if parser is None:
        parser = argparse.ArgumentParser(prog="nasbert pick", description=_CLI_DESCRIPTION)
    parser.add_argument("family", help="family directory (holding family.json) or a family.json path")
    parser.add_argument("--latency-ms", type=float, metavar="X", help="at most X ms on the family's device")
    parser.add_argument("--speedup", type=float, metavar="S", help="at least S times faster than the teacher")
    parser.add_argument("--max-params", metavar="P", help="at most P parameters (10M, 500k, 12000000)")
    parser.add_argument("--measure", action="store_true",
                        help="measure every member (and teacher.onnx, if there) on this machine first")
    parser.add_argument("--threads", type=int, metavar="N", help="threads for --measure (default: the family's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 graphs only (default), int8 graphs only, or any: the best member and precision "
                             "that meet the budget (a member's fp32 graph before its int8 one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


_CLI_DESCRIPTION = ("Print the path of the best family member (highest cosine to the teacher) that meets one budget "
                    "(--latency-ms, --speedup or --max-params). Exit 2 when none does.")


def _report(member: FamilyMember, family: Family, measured: bool) -> dict:
    onnx = family.onnx_path(member)
    return {
        **member.to_dict(),
        "path": str(family.member_dir(member)),
        "onnx": None if onnx is None else str(onnx),
        "family": str(family._root()),
        "teacher_latency_ms": family.teacher_latency_ms,
        "device": family.device,
        "measured": measured,
    }


def _table(member: FamilyMember, family: Family, measured: bool) -> str:
    where = "measured here" if measured else "from family.json"
    rows = [
        ("name", member.name),
        ("precision", f"{member.extra.get('precision', 'fp32')} (load {member.onnx or 'the model directory'})"),
        ("budget", member.budget),
        ("params", format_params(member.params)),
        ("flops", f"{member.flops:,} @ {family.device['seq_len']} tokens"),
        ("latency", f"{member.latency_ms:.3f} ms ({where}, {family.device['key']})"),
        ("predicted", "n/a" if member.predicted_latency_ms is None else f"{member.predicted_latency_ms:.3f} ms"),
        ("speed-up", f"{member.speedup:.2f}x over the teacher ({family.teacher_latency_ms:.3f} ms)"),
        ("valid loss", "n/a" if member.valid_loss is None else f"{member.valid_loss:.4f}"),
        ("proxy loss", "n/a" if member.proxy_loss is None else f"{member.proxy_loss:.4f}"),
    ]
    first, runs = member.extra.get("first_speedup"), member.extra.get("edge_runs")
    if measured and first is not None:  # measure_family timed it again near the budget's edge
        rows.insert(-2, ("edge", f"timed {first:.2f}x first, near the budget's edge, then again, longer" + (
            f", and a third time ({' / '.join(f'{r:.3f}x' for r in runs)}; the median decides)" if runs else "")))
    rows.append(("fine-tune", f"nasbert finetune {shlex.quote(str(family.member_dir(member)))} --task TASK --out "
                              "ft/TASK   (README: Fine-tuning)"))
    return "\n".join(f"  {k:<11} {v}" for k, v in rows)


def run_pick(args: argparse.Namespace) -> int:
    """``nasbert pick`` on parsed arguments: 0 picked, 1 bad input, 2 nothing fits."""
    given = [flag for flag, v in (("--latency-ms", args.latency_ms), ("--speedup", args.speedup),
                                  ("--max-params", args.max_params)) if v is not None]
    if len(given) != 1:
        print("nasbert pick: error: give exactly one budget: --latency-ms X, --speedup S or --max-params P"
              + (f" (got {', '.join(given)})" if given else ""), file=sys.stderr)
        return 1
    if args.threads is not None and args.threads < 1:
        print(f"nasbert pick: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 1
    try:
        member, family = pick_with_family(args.family, latency_ms=args.latency_ms, speedup=args.speedup,
                                          max_params=args.max_params, measure=args.measure, threads=args.threads,
                                          precision=args.precision)
    except NoFit as e:
        print(f"nasbert pick: {e}", file=sys.stderr)
        return 2
    except (FamilyError, ValueError, OSError) as e:
        print(f"nasbert pick: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_report(member, family, args.measure), indent=2))
    else:
        print(family.member_dir(member))
        print(_table(member, family, args.measure))
    return 0


def pick_main(argv: list[str] | None = None) -> int:
    """``nasbert pick FAMILY (--latency-ms X | --speedup S | --max-params P) [--measure] [--threads N] [--json]``."""
    parser = build_pick_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors: argparse has printed the message; its convention is exit 2
        return int(e.code or 0)
    return run_pick(args)
