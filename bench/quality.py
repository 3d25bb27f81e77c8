"""Quality benchmark: the family against the free baselines and the teacher, fine-tuned, at measured latency.

    python bench/quality.py                                   # the default run (built-in corpus), then the report
    python bench/quality.py --config experiments/wikipedia/config.yaml --run runs/wiki
    python bench/quality.py --run runs/default -- --seeds 3 --lr-select first-seed   # extra `nasbert report` flags

1. ``nasbert run`` (skipped when RUN/family/family.json exists).
2. ``nasbert report RUN --data-dir ../shared/data`` with the panel SST-2, CoLA and SICK (resumable: a stopped
   benchmark goes on where it was).
3. The results are copied to ``bench/results/quality_report.json`` (with the command, machine and date),
   ``bench/results/quality_report.md`` and ``docs/quality_report.png``.

Needs ``../shared/data`` (GLUE SST-2 / CoLA and SICK); without it, pass ``--data-dir`` or report from the hub.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default", help="run directory (default runs/default)")
    parser.add_argument("--config", help="run config for `nasbert run` (default: the built-in default run)")
    parser.add_argument("--data-dir", default=str(DATA), help=f"task data (default {DATA})")
    parser.add_argument("--out", help="report directory (default RUN/report)")
    parser.add_argument("report_args", nargs="*", help="more `nasbert report` flags, after --")
    args = parser.parse_args()
    nasbert = shutil.which("nasbert") or str(Path(sys.executable).with_name("nasbert"))
    run = Path(args.run)
    if not (run / "family" / "family.json").is_file():
        cmd = [nasbert, "run", "--out", str(run), "--no-progress"]
        if args.config:
            cmd += ["--config", args.config]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not Path(args.data_dir).is_dir():
        sys.exit(f"no task data in {args.data_dir}: pass --data-dir (GLUE root or a folder with glue/ and sick/)")
    out = Path(args.out) if args.out else run / "report"
    cmd = [nasbert, "report", str(run), "--out", str(out), "--data-dir", args.data_dir, *args.report_args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    results = json.loads((out / "quality_results.json").read_text())
    models = json.loads((out / "models.json").read_text())
    results = {"command": " ".join(["python", *sys.argv]), "report_command": " ".join(cmd),
               "date": dt.date.today().isoformat(), "machine": models["device"], **results}
    (ROOT / "bench" / "results" / "quality_report.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.copy(out / "quality.md", ROOT / "bench" / "results" / "quality_report.md")
    shutil.copy(out / "quality.png", ROOT / "docs" / "quality_report.png")
    print(f"{len(results['rows'])} rows; bench/results/quality_report.json, bench/results/quality_report.md, "
          "docs/quality_report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
