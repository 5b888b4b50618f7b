"""CPU and memory of the processes under test, sampled once a second with psutil.

Why per process and per group: the server is several processes (run.py, the Thespian admin, the
gateway, the workers), and where the CPU goes among them says more than the total. The scripted
LLM and the load generator are sampled too, because on a shared machine a saturated generator or
LLM, not the server, may be what limits a run.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil

from loadtest.metrics import summary

MB = 1 << 20
LABEL_TRIES = 10  # samples during which an unlabelled server process is looked at again


class Group:
    """Processes found by ``find`` at each sample (a server may still be forking at the start)."""

    def __init__(self, find: Callable[[], list[psutil.Process]], label: Callable[[psutil.Process], str | None]) -> None:
        self._find = find
        self._label = label
        self._procs: dict[int, psutil.Process] = {}
        self._roles: dict[int, str] = {}
        self._tries: dict[int, int] = {}
        self._series: dict[int, tuple[list[float], list[float]]] = {}
        self.cpu: list[float] = []  # the group's sum, % of one core, one per sample
        self.rss: list[float] = []  # MB

    def prime(self) -> None:
        """Start measuring: cpu_percent measures from its previous call."""
        for proc in self._find():
            self._first_sight(proc)

    def sample(self) -> tuple[float, float]:
        """One sample of the group's CPU (% of one core) and RSS (MB); new processes count from the next."""
        cpu = rss = 0.0
        for proc in self._find():
            known = self._procs.get(proc.pid)
            try:
                if known is None:
                    self._first_sight(proc)
                    continue
                with known.oneshot():
                    proc_cpu, proc_rss = known.cpu_percent(None), known.memory_info().rss / MB
                self._labelled(known)
            except psutil.Error:
                continue
            cpu_series, rss_series = self._series.setdefault(known.pid, ([], []))
            cpu_series.append(proc_cpu)
            rss_series.append(proc_rss)
            cpu += proc_cpu
            rss += proc_rss
        self.cpu.append(cpu)
        self.rss.append(rss)
        return cpu, rss

    def _first_sight(self, proc: psutil.Process) -> None:
        self._procs[proc.pid] = proc
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass

    def _labelled(self, proc: psutil.Process) -> None:
        tries = self._tries.get(proc.pid, 0)
        if proc.pid in self._roles and (self._roles[proc.pid] != "actor" or tries >= LABEL_TRIES):
            return
        self._tries[proc.pid] = tries + 1
        self._roles[proc.pid] = self._label(proc) or "actor"

    def report(self) -> dict:
        """Mean and max of the sum, and of each process (pid, role)."""
        return {
            "cpu_percent": _mean_max(self.cpu),
            "rss_mb": _mean_max(self.rss),
            "processes": [
                {
                    "pid": pid,
                    "role": self._roles.get(pid, "actor"),
                    "cpu_percent": _mean_max(cpu),
                    "rss_mb": _mean_max(rss),
                }
                for pid, (cpu, rss) in sorted(self._series.items())
            ],
        }


def _mean_max(values: list[float]) -> dict:
    stats = summary(values)
    return {
        "mean": None if stats["mean"] is None else round(stats["mean"], 1),
        "max": None if stats["max"] is None else round(stats["max"], 1),
    }


def server_labeller(main: tuple[int, str] | None, port: int, admin_port: int | None, llm_port: int | None):
    """A role for each server process: ``main`` names the started one (pid, role); the others by
    who listens on which port and who talks to the LLM."""

    def label(proc: psutil.Process) -> str | None:
        if main is not None and proc.pid == main[0]:
            return main[1]
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            return None
        listening = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
        remote = {c.raddr.port for c in conns if c.raddr}
        if port in listening:
            return "gateway"
        if admin_port is not None and admin_port in listening:
            return "admin"
        if llm_port is not None and llm_port in remote:
            return "worker"
        return None

    return label
