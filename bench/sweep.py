"""The performance sweep: NPC counts x worker counts, plus the single-process baseline beside them.

Runs ``python run.py loadtest`` once per configuration (each starts and stops its own scripted
LLM and server) and writes every report to a JSON file and a markdown table to stdout, for
docs/performance.md. Not part of the test run: it takes minutes and its figures depend on the
machine.

    python bench/sweep.py [--npcs 10 100 500 1000] [--workers 1 2 4] [--duration 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("turns_completed", "events_per_s", "tokens_per_s")
LATENCIES = ("first_tag_ms", "chunk_latency_ms", "interrupt_ms")


def run(npcs: int, workers: int | None, duration: float, extra: list[str]) -> dict:
    """One load test; ``workers`` None runs the baseline relay instead of the server."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        target = ["--baseline"] if workers is None else ["--workers", str(workers)]
        command = [
            sys.executable,
            "run.py",
            "loadtest",
            "--npcs",
            str(npcs),
            "--duration",
            str(duration),
            "--report",
            str(report),
            *target,
            *extra,
        ]
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return json.loads(report.read_text()) if report.exists() else {"error": "no report"}


def row(npcs: int, workers: int | None, report: dict) -> str:
    if "error" in report:
        return f"| {npcs} | {workers or 'baseline'} | failed |"
    cells = [str(npcs), "baseline" if workers is None else str(workers)]
    cells += [f"{report[key]:,.0f}" for key in COLUMNS]
    cells += [" / ".join(_ms(report[key][q]) for q in ("p50", "p99")) for key in LATENCIES]
    cells.append(f"{report['turn_ms']['mean']:.0f} / {report['ideal_turn_ms']:.0f}")
    server = report["server"]
    cells.append(f"{server['cpu_percent']['mean']:.0f}% / {server['rss_mb']['max']:.0f} MB")
    cells.append(f"{server['cpu_percent']['mean'] * 1e4 / max(report['events_per_s'], 1):.0f}")
    integrity = sum(report[key] for key in ("lost_events", "duplicated_events", "out_of_order_events"))
    cells.append(str(integrity))
    return "| " + " | ".join(cells) + " |"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"  # None: no such event in the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npcs", type=int, nargs="+", default=[10, 100, 500, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--out", default="bench/sweep.json", help="where to write every report")
    args, extra = parser.parse_known_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; loadtest defaults unless given: {' '.join(extra) or '(none)'}\n"
    )
    print(
        "| NPCs | workers | turns | frames/s | tokens/s | first tag ms p50 / p99 | chunk ms p50 / p99 "
        "| interrupt ms p50 / p99 | turn ms mean / ideal | server CPU / RSS | CPU µs per frame | lost+dup+reordered |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for npcs in args.npcs:
        for workers in [*args.workers, None]:
            report = run(npcs, workers, args.duration, extra)
            results.append({"npcs": npcs, "workers": workers, "report": report})
            print(row(npcs, workers, report), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
