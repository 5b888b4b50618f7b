"""``python run.py loadtest``: many simulated Godot clients against a real server, one report.

By default one command does everything: it starts the scripted LLM (paced by ``--llm-ttft``,
``--llm-tps``, ``--llm-tokens``, stamping each token with its write time) and the server
(``run.py --workers N``, or the single-process baseline relay with ``--baseline``) pointed at it,
runs the simulated game for ``--duration`` seconds, lets in-flight turns end, stops both (no
process left behind: the server's are found by their unique admin port), and prints a table,
writes ``--report`` (JSON) and ``--plot`` (PNG).

``--url`` targets a server that is already running instead, and starts nothing. Text checks,
chunk latencies and ``interrupt_close_ms`` need the server's LLM to be a scripted LLM the tool
controls: give its address with ``--llm-url`` (the tool then sets its pace, token count and token
stamps through ``/_control/defaults``, which stay set, clears its records and reads them at the
end). Without it the tool still checks the frame order and times the rest, and the ``--llm-*``
options must describe the LLM the server uses (``first_tag_ms`` subtracts ``--llm-ttft``, and
``ideal_turn_ms`` uses all three). The CPU and memory of a ``--url`` server are those of the
process listening on its port and of every process with the same command line. ``--llm-url``
without ``--url`` runs our own server against that LLM.

Load model: ``--rate`` is interaction events per second *per NPC* (Poisson). An NPC has one turn
at a time, like a game character that waits for its answer: an event that falls due while the
turn still plays waits for its end, so a rate above 1 / turn time makes every NPC stream back to
back (the frame rate then is about NPCs x tokens/s). Interruptions come on top: a share
``--interrupt-ratio`` of the turns is cut by a newer event at a random chunk. ``--clients``
WebSocket connections carry the NPCs (spread evenly; each its own session, as a session has one
connection at a time; agent ids are unique), and ``--generator-processes`` spreads the connections
over that many processes when one event loop cannot keep up.

The report (JSON) holds:
  turns_started / turns_completed / turns_interrupted / turns_error, and what was sent
  errors            {count, first: [messages], codes: {error code: count}}: error frames and
                    client-side failures (connection lost, turns still running after the drain)
  lost_events / duplicated_events / out_of_order_events / corrupted_chunks
                    integrity problems (loadtest.metrics), first ones in integrity_problems
  first_tag_ms      snapshot sent -> first agent_tag_open received, minus the LLM's first-token delay
  chunk_latency_ms  LLM wrote a token -> the client received its agent_tag_chunk
  interrupt_ms      newer event sent -> agent_turn_interrupted received
  interrupt_close_ms  newer event sent -> the scripted LLM saw the cut turn's stream closed
  ping_ms           JSON ping -> pong, once a second per connection
  turn_ms           event (or tool results) sent -> agent_turn_finished, completed turns, with mean;
                    ideal_turn_ms = ttft + tokens / tps
  tokens_per_s, events_per_s   tokens and frames received per second over the duration
  llm_cost          {total, per_npc_hour}: the server's npc_llm_cost_total (GET /metrics) over the run,
                    and per NPC and hour of it; our own server prices the scripted model at
                    --price-prompt / --price-completion per million tokens; None when the server
                    exports no cost (the baseline, no llm_prices for its model, a token required)
  server / llm / generator     CPU (% of one core) and RSS (MB), sum and per process, mean and max
                               of one-second samples over the duration
  timeline          per second: frames, tokens, turns, chunk p50/p99, server CPU and RSS
Each latency is {"p50", "p95", "p99", "max", "n"}.

Exit status: 0 when the run was clean (turns completed; no error, integrity problem or leftover
process), 1 otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from loadtest import processes, report
from loadtest.metrics import interrupt_close_ms, percentiles
from loadtest.npc import ShardConfig, run_shard
from loadtest.resources import Group, server_labeller

READY_TIMEOUT_S: Final = 60.0
START_DELAY_S: Final = 0.2  # between "all connected" and the first events


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py loadtest",
        description="Load-test the NPC turn server with simulated Godot clients.",
        epilog="See loadtest/cli.py for the load model and the report's keys.",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--npcs", type=int, default=50, help="simulated NPCs (default %(default)s)")
    load.add_argument(
        "--clients", type=int, default=2, help="WebSocket connections, each its own session (default %(default)s)"
    )
    load.add_argument("--duration", type=float, default=20, help="seconds of load (default %(default)s)")
    load.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="interaction events per second per NPC; one turn at a time per NPC (default %(default)s)",
    )
    load.add_argument(
        "--interrupt-ratio",
        type=float,
        default=0.1,
        help="share of turns cut by a newer event while streaming (default %(default)s)",
    )
    load.add_argument(
        "--tool-share",
        type=float,
        default=0.2,
        help="share of NPCs with tools; half their events ask for a tool call (default %(default)s)",
    )
    load.add_argument(
        "--notify-rate",
        type=float,
        default=1.0,
        help="notification_event frames per second per connection (default %(default)s)",
    )
    load.add_argument(
        "--generator-processes",
        type=int,
        default=1,
        help="processes running the simulated clients (default %(default)s)",
    )
    load.add_argument("--seed", type=int, default=1, help="random seed of specs and load (default %(default)s)")
    llm = parser.add_argument_group("scripted LLM")
    llm.add_argument("--llm-ttft", type=float, default=0.3, help="first-token delay, s (default %(default)s)")
    llm.add_argument(
        "--llm-tps",
        type=float,
        default=20,
        help="tokens per second per stream; 0 = as fast as possible (default %(default)s)",
    )
    llm.add_argument("--llm-tokens", type=int, default=40, help="tokens per reply, >= 6 (default %(default)s)")
    llm.add_argument("--llm-url", help="use this running scripted LLM (base URL, without /v1) instead of starting one")
    llm.add_argument(
        "--price-prompt",
        type=float,
        default=0.15,
        help="our own server's price of the scripted model, per million prompt tokens (default %(default)s)",
    )
    llm.add_argument(
        "--price-completion",
        type=float,
        default=0.60,
        help="and per million completion tokens (default %(default)s): the report's llm_cost",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--workers", type=int, default=2, help="server worker processes (default %(default)s)")
    target.add_argument(
        "--baseline",
        action="store_true",
        help="start bench/baseline_relay.py (one process, no actors) instead of run.py",
    )
    target.add_argument("--url", help="load a running server at this base URL (http://host:port); start nothing")
    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="PATH", help="write the JSON report here")
    out.add_argument("--plot", metavar="PATH", help="draw latency and throughput over time to this PNG")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check(args)
    if problem:
        parser.error(problem)
    try:
        return LoadTest(args).run()
    except (processes.ProcessError, OSError) as exc:  # a process that would not start, an LLM URL that fails
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # everything started has been stopped on the way out
        print("loadtest: interrupted", file=sys.stderr)
        return 130


def _check(args: argparse.Namespace) -> str | None:
    if args.npcs < 1 or args.duration <= 0 or args.rate <= 0:
        return "--npcs, --duration and --rate must be positive"
    if not 1 <= args.clients <= args.npcs:
        return "--clients must be between 1 and --npcs"
    if not 1 <= args.generator_processes <= args.clients:
        return "--generator-processes must be between 1 and --clients"
    if not (0 <= args.interrupt_ratio <= 1 and 0 <= args.tool_share <= 1):
        return "--interrupt-ratio and --tool-share must be between 0 and 1"
    if args.llm_tokens < 6 or args.llm_tps < 0 or args.llm_ttft < 0 or args.notify_rate < 0:
        return "--llm-tokens must be at least 6; rates and delays cannot be negative"
    if args.price_prompt < 0 or args.price_completion < 0:
        return "--price-prompt and --price-completion cannot be negative"
    if args.url and args.baseline:
        return "--baseline starts a relay; --url targets a running server: give one of them"
    if args.workers < 1:
        return "--workers must be at least 1"
    return None


class LoadTest:
    """One run: start what is needed, drive the generators, sample, stop everything, report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="loadtest-"))
        self.started: list[processes.Managed] = []
        self.timeline = report.Timeline()
        self.finals: dict[int, dict] = {}

    def run(self) -> int:
        args = self.args
        leftovers: list[int] = []
        try:
            llm_url = args.llm_url.rstrip("/") if args.llm_url else None
            if llm_url:
                _control(
                    llm_url,
                    "defaults",
                    {
                        "first_token_delay_s": args.llm_ttft,
                        "tokens_per_s": args.llm_tps,
                        "default_tokens": args.llm_tokens,
                        "stamp_tokens": True,
                    },
                )
                _control(llm_url, "reset", {})
            elif not args.url:
                llm, llm_url = processes.start_llm(self.tmp, args.llm_ttft, args.llm_tps, args.llm_tokens)
                self.started.append(llm)
            if args.url:
                url, server = args.url.rstrip("/"), None
            else:
                assert llm_url is not None  # given, or started just above
                prices = self.tmp / "prices.toml"
                prices.write_text(
                    f'[llm_prices]\n"{processes.MODEL}" = '
                    f"{{ prompt = {args.price_prompt!r}, completion = {args.price_completion!r} }}\n"
                )
                server, url = processes.start_server(self.tmp, llm_url, args.workers, args.baseline, prices)
                self.started.insert(0, server)  # stopped first: its turns end before the LLM goes
            groups = self._groups(url, server, llm_url)
            nodes_before, cost_before, started_at = _nodes(url), _cost(url), time.monotonic()
            self._drive(url, llm_url is not None, groups)
            seconds = time.monotonic() - started_at
            nodes = _node_rates(nodes_before, _nodes(url), seconds)
            cost = report.llm_cost(cost_before, _cost(url), args.npcs, seconds)
            records = _requests(llm_url) if llm_url else None
        finally:
            for proc in self.started:
                leftovers += proc.stop()
        closes = [c for final in self.finals.values() for c in final["interrupt_closes"]]
        target = {
            "kind": "url" if args.url else "baseline" if args.baseline else "server",
            "url": url,
            "workers": None if args.url or args.baseline else args.workers,
        }
        resources = {name: (group.report() if group else None) for name, group in groups.items()}
        result = report.build(
            self._config(),
            target,
            list(self.finals.values()),
            self.timeline,
            resources,
            interrupt_close_ms(records, closes) if records is not None else None,
            leftovers,
        )
        result["nodes"] = nodes
        result["llm_cost"] = cost
        clean = (
            result["turns_completed"] > 0
            and not result["errors"]["count"]
            and not leftovers
            and len(self.finals) == args.generator_processes
            and not any(
                result[k] for k in ("lost_events", "duplicated_events", "out_of_order_events", "corrupted_chunks")
            )
        )
        if clean:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            result["logs"] = str(self.tmp)
        print(report.table(result))
        if args.report:
            report.write_json(result, args.report)
        if args.plot:
            report.plot(result, args.plot)
        return 0 if clean else 1

    def _config(self) -> dict:
        args = self.args
        return {
            "npcs": args.npcs,
            "clients": args.clients,
            "generator_processes": args.generator_processes,
            "duration_s": args.duration,
            "rate_per_npc": args.rate,
            "interrupt_ratio": args.interrupt_ratio,
            "tool_share": args.tool_share,
            "notify_rate_per_client": args.notify_rate,
            "llm_ttft_s": args.llm_ttft,
            "llm_tps": args.llm_tps,
            "llm_tokens": args.llm_tokens,
            "seed": args.seed,
        }

    def _groups(self, url: str, server: processes.Managed | None, llm_url: str | None) -> dict:
        port = urlsplit(url).port or (443 if url.startswith("https") else 80)
        llm_port = urlsplit(llm_url).port if llm_url else None
        if server is None:
            server_group = Group(
                lambda: processes.listener_processes(port), server_labeller(None, port, None, llm_port)
            )
        else:
            admin_port = getattr(server, "admin_port", None)
            main = (server.proc.pid, "relay" if self.args.baseline else "run.py")
            server_group = Group(server.processes, server_labeller(main, port, admin_port, llm_port))
        llm = next((proc for proc in self.started if proc.name == "scripted LLM"), None)
        return {
            "server": server_group,
            "llm": Group(llm.processes, lambda proc: "llm") if llm else None,
            "generator": None,
        }

    def _drive(self, url: str, check_text: bool, groups: dict) -> None:
        """Run the generator processes; sample resources and print progress once a second."""
        args = self.args
        context = multiprocessing.get_context("spawn")
        reports, go, start_at = context.Queue(), context.Event(), context.Value("d", 0.0)
        run_id = f"lt{int(time.time()) % 100000}"
        clients = [(f"{run_id}-c{c}", tuple(range(c, args.npcs, args.clients))) for c in range(args.clients)]
        ideal_s = args.llm_ttft + (args.llm_tokens / args.llm_tps if args.llm_tps else 0)
        shards = []
        for index in range(args.generator_processes):
            config = ShardConfig(
                index=index,
                url=url,
                clients=tuple(clients[index :: args.generator_processes]),
                duration_s=args.duration,
                drain_s=max(10.0, 4 * ideal_s),
                rate=args.rate,
                interrupt_ratio=args.interrupt_ratio,
                tool_share=args.tool_share,
                notify_rate=args.notify_rate,
                llm_ttft_s=args.llm_ttft,
                llm_tokens=args.llm_tokens,
                check_text=check_text,
                seed=args.seed,
            )
            shards.append(
                context.Process(
                    target=run_shard,
                    args=(config, reports, go, start_at),
                    daemon=True,
                    name=f"loadtest-generator-{index}",
                )
            )
        for shard in shards:
            shard.start()
        pids = {shard.pid for shard in shards if shard.pid is not None}
        groups["generator"] = Group(lambda: _alive(pids), lambda proc: "generator")
        try:
            self._start(shards, reports, go, start_at, groups)
            self._watch(
                shards,
                reports,
                start_at.value,
                groups,
                deadline=start_at.value + args.duration + max(10.0, 4 * ideal_s) + 30,
            )
        finally:
            for shard in shards:
                shard.join(5)
                if shard.is_alive():
                    shard.terminate()
                    shard.join()

    def _start(self, shards: list, reports, go, start_at, groups: dict) -> None:
        """Wait until every generator is connected, then give them one common start time; start sampling."""
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(shards):
            try:
                item = reports.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise processes.ProcessError("the generator processes did not connect in time") from None
            if item[0] == "ready":
                ready.add(item[1])
            elif item[0] == "final":  # could not connect: it reports its error and ends
                self.finals[item[1]] = item[2]
                ready.add(item[1])
        start_at.value = time.time() + START_DELAY_S
        go.set()
        for group in groups.values():
            if group is not None:
                group.prime()

    def _watch(self, shards: list, reports, start: float, groups: dict, deadline: float) -> None:
        duration = self.args.duration
        next_sample, printed = start + 1, -1
        while len(self.finals) < len(shards) and time.time() < deadline:
            try:
                item = reports.get(timeout=max(0.01, min(next_sample - time.time(), 0.5)))
            except queue.Empty:
                item = None
                if not any(shard.is_alive() for shard in shards):
                    break
            if item is not None and item[0] == "tick":
                self.timeline.add(*item[2:])
            elif item is not None and item[0] == "final":
                self.finals[item[1]] = item[2]
            now = time.time()
            if now >= next_sample and now - start <= duration + 0.5:
                second = int(next_sample - start) - 1
                self.timeline.server[second] = groups["server"].sample()
                for name in ("llm", "generator"):
                    if groups[name] is not None:
                        groups[name].sample()
                next_sample += 1
            complete = [s for s, n in self.timeline.reports.items() if n == len(shards) and s > printed]
            if complete:
                printed = max(complete)
                self._progress(printed)

    def _progress(self, second: int) -> None:
        """One line to stderr about the second just completed."""
        frames, _, _, _, latencies = self.timeline.seconds[second]
        done = sum(entry[2] for entry in self.timeline.seconds.values())
        cut = sum(entry[3] for entry in self.timeline.seconds.values())
        p50 = percentiles(latencies)["p50"]
        cpu, rss = self.timeline.server.get(second, (None, None))
        server = f" | server CPU {cpu:.0f}% RSS {rss:.0f} MB" if cpu is not None else ""
        print(
            f"[{second + 1:4d} s] turns {done} done, {cut} interrupted | {frames:,} frames/s | chunk p50 "
            f"{'-' if p50 is None else format(p50, '.1f')} ms{server}",
            file=sys.stderr,
            flush=True,
        )


def _alive(pids: set[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found


def _control(llm_url: str, path: str, body: dict) -> None:
    request = urllib.request.Request(
        f"{llm_url}/_control/{path}",
        data=orjson.dumps(body),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _requests(llm_url: str) -> list[dict]:
    """The scripted LLM's request records (with the prompts: can be tens of MB)."""
    with urllib.request.urlopen(f"{llm_url}/_control/requests", timeout=120) as response:
        return orjson.loads(response.read())


def _nodes(url: str) -> list[dict]:
    """The server's nodes from /healthz (none for the baseline relay or an unreachable server)."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return orjson.loads(response.read()).get("nodes") or []
    except OSError:
        return []


def _cost(url: str) -> float | None:
    """The server's estimated LLM cost so far (npc_llm_cost_total, all models), from /metrics; None
    when it exports none (the baseline relay, no price for its model, a token required)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        costs = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "npc_llm_cost_total"
        ]
    except (OSError, ValueError):  # not reachable, refused, or not Prometheus text
        return None
    return sum(costs) if costs else None


def _node_rates(before: list[dict], after: list[dict], seconds: float) -> list[dict]:
    """Frames per second each node carried between two /healthz readings (nodes in the same order;
    their names only when the server was given its token)."""
    start = [node["frames"] for node in before]
    return [
        {
            "name": node.get("name") or f"node {i + 1}",
            "workers": node["workers"],
            "frames_per_s": round((node["frames"] - (start[i] if i < len(start) else 0)) / seconds, 1),
        }
        for i, node in enumerate(after)
    ]
