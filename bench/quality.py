"""Quality benchmark: the family against the free baselines, a former rule's members and the teacher, fine-tuned,
at measured latency; every number comes from ``nasbert report``.

    python bench/quality.py                                   # the default run (built-in corpus), then the report
    python bench/quality.py --run runs/default -- --seeds 3 --tasks sst2 sick   # `nasbert report` flags after --
    python bench/quality.py --publish                         # also rewrite the README's and docs' table

1. ``nasbert run`` (skipped when RUN/family/family.json exists).
2. ``nasbert report RUN --data-dir ../shared/data ...`` (resumable: a stopped benchmark goes on where it was).
3. The results go to ``bench/results/quality_report.json`` (with the command, machine and date; the shape
   ``{"teacher": {task: [scores]}, "rows": [{"budget", "kind", "name", "speedup", "scores": {task: [scores]}}]}``),
   ``bench/results/quality_report.md`` and ``docs/quality_report.png``. With ``--publish``, the report's table, under
   a line giving the commands, machine and date, replaces what stands between the ``quality-report`` markers of
   README.md and docs/benchmarks.md.

Needs ``../shared/data`` (GLUE SST-2 / CoLA and SICK); without it, pass ``--data-dir`` or report from the hub.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from nasbert.io import atomic_write_text
from nasbert.latency.measure import host

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BEGIN, END = "<!-- quality-report:begin -->", "<!-- quality-report:end -->"


def publish(path: Path, block: str) -> None:
    """Replace what stands between the markers in ``path`` by ``block``."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"{path} has no {BEGIN} ... {END} section to publish into")
    atomic_write_text(path, pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text, count=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default", help="run directory (default runs/default)")
    parser.add_argument("--config", help="run config for `nasbert run` (default: the built-in default run)")
    parser.add_argument("--data-dir", default=str(DATA), help=f"task data (default {DATA})")
    parser.add_argument("--out", help="report directory (default RUN/report)")
    parser.add_argument("--publish", action="store_true",
                        help="rewrite the quality-report sections of README.md and docs/benchmarks.md")
    parser.add_argument("report_args", nargs="*", help="more `nasbert report` flags, after --")
    args = parser.parse_args()
    nasbert = shutil.which("nasbert") or str(Path(sys.executable).with_name("nasbert"))
    run = Path(args.run)
    run_cmd = None
    if not (run / "family" / "family.json").is_file():
        run_cmd = ["nasbert", "run", "--out", str(run), "--no-progress", *(["--config", args.config] if args.config
                                                                          else [])]
        print("$", shlex.join(run_cmd), flush=True)
        subprocess.run([nasbert, *run_cmd[1:]], check=True)
    if not Path(args.data_dir).is_dir():
        sys.exit(f"no task data in {args.data_dir}: pass --data-dir (GLUE root or a folder with glue/ and sick/)")
    out = Path(args.out) if args.out else run / "report"
    report_cmd = ["nasbert", "report", str(run), "--out", str(out), "--data-dir", args.data_dir, *args.report_args]
    print("$", shlex.join(report_cmd), flush=True)
    subprocess.run([nasbert, *report_cmd[1:]], check=True)
    results = json.loads((out / "quality_results.json").read_text())
    models = json.loads((out / "models.json").read_text())
    date = dt.date.today().isoformat()
    record = {"command": shlex.join(["python", *sys.argv]), "report_command": shlex.join(report_cmd),
              "run_command": shlex.join(run_cmd) if run_cmd else None, "date": date, "host": host(),
              "machine": models["device"], **results}
    atomic_write_text(ROOT / "bench" / "results" / "quality_report.json", json.dumps(record, indent=2) + "\n")
    table = (out / "quality.md").read_text()
    shutil.copy(out / "quality.md", ROOT / "bench" / "results" / "quality_report.md")
    shutil.copy(out / "quality.png", ROOT / "docs" / "quality_report.png")
    if args.publish:
        machine = record["host"]
        block = (f"Made by `{shlex.join(report_cmd)}` on {machine['cpu']} ({machine['cores']} cores; latency: "
                 f"{models['device'].get('key', '')}), {date}; "
                 f"raw numbers in `bench/results/quality_report.json` (`{record['command']}`).\n\n{table}")
        for path in (ROOT / "README.md", ROOT / "docs" / "benchmarks.md"):
            publish(path, block)
    print(f"{len(results['rows'])} rows; bench/results/quality_report.json, bench/results/quality_report.md, "
          "docs/quality_report.png" + ("; README.md and docs/benchmarks.md" if args.publish else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
