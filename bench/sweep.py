"""The performance sweep: NPC counts x worker counts, plus the single-process baseline beside them.

Runs ``python run.py loadtest`` once per configuration (each starts and stops its own scripted
LLM and server) and writes every report to a JSON file and a markdown table to stdout, for
docs/performance.md. Not part of the test run: it takes minutes and its figures depend on the
machine.

With ``--rounds N`` it runs every configuration N times, round after round (each round has its own
baseline run), and ends with each figure's ratio to the baseline of its own round, median and range
over the rounds: on a shared machine the same code's CPU per frame moves by 10-20% between runs,
and both sides of a ratio move together only when run close together.

    python bench/sweep.py [--npcs 10 100 500 1000] [--workers 1 2 4] [--duration 20] [--rounds N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    cells.append(f"{cpu_per_frame(report):.0f}")
    integrity = sum(report[key] for key in ("lost_events", "duplicated_events", "out_of_order_events"))
    cells.append(str(integrity))
    return "| " + " | ".join(cells) + " |"


def cpu_per_frame(report: dict) -> float:
    """µs of server CPU (all its processes) per frame delivered."""
    return report["server"]["cpu_percent"]["mean"] * 1e4 / max(report["events_per_s"], 1)


RATIOS = {  # figure of a run -> its value; each is divided by its round's baseline's
    "CPU per frame": cpu_per_frame,
    "chunk p99": lambda report: report["chunk_latency_ms"]["p99"],
    "frames/s": lambda report: report["events_per_s"],
}


def ratios(results: list[dict]) -> list[str]:
    """Per NPC count and workers: each figure over its round's baseline, median [min-max]."""
    lines = ["| NPCs | workers | rounds | " + " | ".join(f"{name} ratio" for name in RATIOS) + " |"]
    lines.append("|---|---|---|" + "---|" * len(RATIOS))
    baselines = {(r["round"], r["npcs"]): r["report"] for r in results if r["workers"] is None}
    groups: dict[tuple[int, int], list[tuple[dict, dict]]] = {}
    for r in results:
        base = baselines.get((r["round"], r["npcs"]))
        if r["workers"] is not None and base and "error" not in base and "error" not in r["report"]:
            groups.setdefault((r["npcs"], r["workers"]), []).append((r["report"], base))
    for (npcs, workers), pairs in sorted(groups.items()):
        cells = []
        for figure in RATIOS.values():
            values = [figure(run) / figure(base) for run, base in pairs if figure(base) and figure(run) is not None]
            cells.append(f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]" if values else "-")
        lines.append(f"| {npcs} | {workers} | {len(pairs)} | " + " | ".join(cells) + " |")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"  # None: no such event in the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npcs", type=int, nargs="+", default=[10, 100, 500, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times")
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
    for round_ in range(args.rounds):
        for npcs in args.npcs:
            for workers in [None, *args.workers]:
                report = run(npcs, workers, args.duration, extra)
                results.append({"round": round_, "npcs": npcs, "workers": workers, "report": report})
                print(row(npcs, workers, report), flush=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
    print("\nRatios to the baseline of the same round:\n")
    print("\n".join(ratios(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
