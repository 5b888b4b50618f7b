"""The load test's results: merged from the generator processes into one JSON report, printed as a
table, drawn as a PNG.

The report is the single source of every figure (the table and the plot are made from it alone),
so a saved report can be compared with a later run or plotted again.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

import orjson

from loadtest.metrics import Problems, percentiles, summary

LATENCY_KEYS = ("first_tag_ms", "chunk_latency_ms", "interrupt_ms", "interrupt_close_ms", "ping_ms")


class Timeline:
    """Per-second figures, summed over the generator processes as their ticks arrive."""

    def __init__(self) -> None:
        self.seconds: dict[int, list] = {}  # second -> [frames, tokens, completed, interrupted, latencies]
        self.reports: dict[int, int] = {}  # second -> generator processes that reported it
        self.server: dict[int, tuple[float, float]] = {}  # second -> (CPU %, RSS MB) of the server

    def add(self, second: int, frames: int, tokens: int, completed: int, interrupted: int, latencies: array) -> None:
        entry = self.seconds.setdefault(second, [0, 0, 0, 0, array("d")])
        entry[0] += frames
        entry[1] += tokens
        entry[2] += completed
        entry[3] += interrupted
        entry[4].extend(latencies)
        self.reports[second] = self.reports.get(second, 0) + 1

    def rows(self, duration_s: float) -> list[dict]:
        rows = []
        for second in sorted(self.seconds):
            frames, tokens, completed, interrupted, latencies = self.seconds[second]
            stats = percentiles(latencies)
            cpu, rss = self.server.get(second, (None, None))
            rows.append(
                {
                    "t": second + 1,
                    "active": second < duration_s,
                    "frames": frames,
                    "tokens": tokens,
                    "turns_completed": completed,
                    "turns_interrupted": interrupted,
                    "chunk_p50_ms": stats["p50"],
                    "chunk_p99_ms": stats["p99"],
                    "server_cpu_percent": cpu,
                    "server_rss_mb": rss,
                }
            )
        return rows

    def latencies(self) -> list[float]:
        merged = array("d")
        for entry in self.seconds.values():
            merged.extend(entry[4])
        return merged.tolist()


def build(
    config: dict,
    target: dict,
    finals: list[dict],
    timeline: Timeline,
    resources: dict,
    interrupt_close: list[float] | None,
    leftovers: list[int],
) -> dict:
    """The whole report (see the module doc of loadtest.cli for the meaning of each key)."""
    totals: dict[str, int] = {}
    problems = Problems()
    errors: dict[str, Any] = {"count": 0, "first": [], "codes": {}}
    samples: dict[str, list[float]] = {"first_tag_ms": [], "interrupt_ms": [], "turn_ms": [], "ping_ms": []}
    for final in finals:
        for key, value in final["totals"].items():
            totals[key] = totals.get(key, 0) + value
        problems.merge(final["problems"]["counts"], final["problems"]["examples"])
        errors["count"] += final["errors"]["count"]
        errors["first"].extend(final["errors"]["examples"][: 10 - len(errors["first"])])
        for code, count in final["errors"]["codes"].items():
            errors["codes"][code] = errors["codes"].get(code, 0) + count
        for key, values in samples.items():
            values.extend(final[key])
    duration = config["duration_s"]
    rows = timeline.rows(duration)
    active = [row for row in rows if row["active"]]
    tps = config["llm_tps"]
    return {
        "target": target,
        "config": config,
        "turns_started": totals.get("turns_started", 0),
        "turns_completed": totals.get("turns_completed", 0),
        "turns_interrupted": totals.get("turns_interrupted", 0),
        "turns_error": totals.get("turns_error", 0),
        "events_sent": totals.get("events_sent", 0),
        "interrupts_sent": totals.get("interrupts_sent", 0),
        "notifications_sent": totals.get("notifications_sent", 0),
        "turn_results_sent": totals.get("turn_results_sent", 0),
        "tool_results_sent": totals.get("tool_results_sent", 0),
        "frames_received": totals.get("frames", 0),
        "tokens_received": totals.get("tokens", 0),
        "errors": errors,
        "lost_events": problems.counts["lost"],
        "duplicated_events": problems.counts["duplicated"],
        "out_of_order_events": problems.counts["out_of_order"],
        "corrupted_chunks": problems.counts["corrupted"],
        "integrity_problems": problems.examples,
        "first_tag_ms": percentiles(samples["first_tag_ms"]),
        "chunk_latency_ms": percentiles(timeline.latencies()),
        "interrupt_ms": percentiles(samples["interrupt_ms"]),
        "interrupt_close_ms": percentiles(interrupt_close or []),
        "ping_ms": percentiles(samples["ping_ms"]),
        "turn_ms": summary(samples["turn_ms"]),
        "ideal_turn_ms": round(1000 * (config["llm_ttft_s"] + (config["llm_tokens"] / tps if tps else 0)), 1),
        "tokens_per_s": round(sum(row["tokens"] for row in active) / duration, 1),
        "events_per_s": round(sum(row["frames"] for row in active) / duration, 1),
        **resources,
        "timeline": rows,
        "leftover_processes": leftovers,
        "logs": None,  # where the processes' logs were kept, when the run was not clean
    }


def llm_cost(before: float | None, after: float | None, npcs: int, seconds: float) -> dict | None:
    """The estimated LLM cost of a run from two readings of the server's cost counter, and per
    NPC-hour (the run's NPCs over its measured seconds); None when the server reported none."""
    if after is None:
        return None
    total = after - (before or 0.0)
    return {"total": round(total, 6), "per_npc_hour": round(total * 3600 / (npcs * seconds), 6)}


def write_json(report: dict, path: str) -> None:
    Path(path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def table(report: dict) -> str:
    """A readable summary of the report."""
    config = report["config"]
    lines = [
        f"target      {report['target']['kind']} {report['target']['url']}"
        + (f", workers: {report['target']['workers']}" if report["target"].get("workers") else ""),
        f"load        {config['npcs']} NPCs on {config['clients']} connections, {config['rate_per_npc']:g} "
        f"events/s per NPC, {config['interrupt_ratio']:.0%} interrupted, LLM {config['llm_tokens']} tokens at "
        f"{config['llm_tps']:g}/s after {config['llm_ttft_s']:g} s, {config['duration_s']:g} s",
        f"turns       {report['turns_completed']} completed, {report['turns_interrupted']} interrupted, "
        f"{report['turns_error']} failed (of {report['turns_started']} started)",
        f"sent        {report['events_sent']} events ({report['interrupts_sent']} to interrupt), "
        f"{report['notifications_sent']} notifications, {report['turn_results_sent']} turn results, "
        f"{report['tool_results_sent']} tool results",
        f"received    {report['events_per_s']:,.0f} frames/s, {report['tokens_per_s']:,.0f} tokens/s",
        *(
            f"node        {node['name']}: {node['workers']} workers, {node['frames_per_s']:,.0f} frames/s"
            for node in report.get("nodes") or []
        ),
        f"integrity   lost {report['lost_events']}, duplicated {report['duplicated_events']}, "
        f"out of order {report['out_of_order_events']}, corrupted {report['corrupted_chunks']}",
        f"errors      {report['errors']['count']}"
        + (f" {report['errors']['codes']}" if report["errors"]["codes"] else ""),
        _cost_line(report.get("llm_cost")),
        "",
        f"{'latency (ms)':<22}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'n':>9}",
    ]
    for key in (*LATENCY_KEYS, "turn_ms"):
        stats = report[key]
        cells = "".join(
            f"{'-' if stats[k] is None else format(stats[k], '.1f'):>9}" for k in ("p50", "p95", "p99", "max")
        )
        lines.append(f"{key:<22}{cells}{stats['n']:>9}")
    mean = report["turn_ms"]["mean"]
    lines.append(
        f"turn_ms mean {'-' if mean is None else format(mean, '.1f')}, "
        f"ideal {report['ideal_turn_ms']:.1f} (ttft + tokens / tps)"
    )
    lines += ["", f"{'CPU % of a core / RSS MB':<32}{'cpu mean':>10}{'cpu max':>10}{'rss mean':>10}{'rss max':>10}"]
    for group in ("server", "llm", "generator"):
        if report.get(group) is None:
            continue
        lines.append(_resource_line(group, report[group]))
        for proc in report[group]["processes"]:
            lines.append(_resource_line(f"  {proc['role']} {proc['pid']}", proc))
    for what, items in (("integrity problems", report["integrity_problems"]), ("errors", report["errors"]["first"])):
        if items:
            lines += ["", f"first {what}:", *(f"  {item}" for item in items)]
    if report["leftover_processes"]:
        lines += ["", f"processes left behind and killed: {report['leftover_processes']}"]
    if report["logs"]:
        lines += ["", f"logs kept in {report['logs']}"]
    return "\n".join(lines)


def _resource_line(label: str, entry: dict) -> str:
    def cell(value: float | None) -> str:
        return f"{'-' if value is None else format(value, '.1f'):>10}"

    return (
        f"{label:<32}{cell(entry['cpu_percent']['mean'])}{cell(entry['cpu_percent']['max'])}"
        f"{cell(entry['rss_mb']['mean'])}{cell(entry['rss_mb']['max'])}"
    )


def _cost_line(cost: dict | None) -> str:
    if cost is None:
        return "cost        - (the server exports no npc_llm_cost_total: setting llm_prices)"
    return f"cost        {cost['total']:.6f} for the run, {cost['per_npc_hour']:.6f} per NPC-hour (setting llm_prices)"


def plot(report: dict, path: str) -> None:
    """Chunk latency (p50, p99) and throughput (frames/s, tokens/s) per second, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = report["timeline"]
    seconds = [row["t"] for row in rows]
    figure, (latency, throughput) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7))
    config = report["config"]
    figure.suptitle(
        f"{report['target']['kind']}: {config['npcs']} NPCs, {config['llm_tps']:g} tokens/s per "
        f"stream, {config['interrupt_ratio']:.0%} interrupted"
    )
    for key, label in (("chunk_p50_ms", "p50"), ("chunk_p99_ms", "p99")):
        latency.plot(seconds, [row[key] for row in rows], marker=".", label=f"chunk latency {label}")
    latency.set_ylabel("ms (LLM write to client receipt)")
    latency.legend()
    latency.grid(alpha=0.3)
    throughput.plot(seconds, [row["frames"] for row in rows], marker=".", label="frames received/s")
    throughput.plot(seconds, [row["tokens"] for row in rows], marker=".", label="tokens received/s")
    throughput.set_ylabel("per second")
    throughput.set_xlabel("seconds since start")
    throughput.legend()
    throughput.grid(alpha=0.3)
    for axes in (latency, throughput):
        axes.axvline(config["duration_s"], color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
