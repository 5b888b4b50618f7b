"""Separate hosts for tests: a Linux network namespace joined to this one by a veth pair.

This namespace plays the leader's host (``near`` address), the namespace another host (``far``
address) set up as the hosts on which Thespian guessed wrong: no default route (it reaches
nothing but the near side, as a machine on a private network), a second interface with an
address of another network, and a host name that resolves to loopback (``ip netns exec`` mounts
/etc/netns/NAME/hosts over /etc/hosts). Cutting the link (``cut``) is ``ip link set down``;
``heal`` brings it back.
Creating them needs root (CI runs as root); ``NetworkHost.create`` skips the test with the reason
otherwise. Everything is removed by ``remove``, also after a failed test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from itertools import count
from pathlib import Path

import pytest

_serial = count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


class NetworkHost:
    """One other host: namespace ``name`` with address ``far``, linked to ``near`` on this side."""

    def __init__(self) -> None:
        serial = next(_serial)
        pid = os.getpid()
        self.name = f"npc{pid % 100000}h{serial}"
        self.near_link, self.far_link = f"vn{pid % 100000}h{serial}", f"vf{pid % 100000}h{serial}"
        subnet = f"10.{200 + pid % 50}.{(pid // 50 + serial) % 256}"  # unlikely to meet a parallel run
        self.near, self.far = f"{subnet}.1", f"{subnet}.2"
        self.etc = Path("/etc/netns") / self.name

    @classmethod
    def create(cls) -> NetworkHost:
        if sys.platform != "linux" or shutil.which("ip") is None:
            pytest.skip("separate hosts need Linux network namespaces and the ip command (iproute2)")
        host = cls()
        try:
            _ip("netns", "add", host.name)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a network namespace (needs root): {exc.stderr.strip()}")
        try:
            _ip("link", "add", host.near_link, "type", "veth", "peer", "name", host.far_link)
            _ip("link", "set", host.far_link, "netns", host.name)
            _ip("addr", "add", f"{host.near}/24", "dev", host.near_link)
            _ip("link", "set", host.near_link, "up")
            host.run_ip("addr", "add", f"{host.far}/24", "dev", host.far_link)
            host.run_ip("link", "set", host.far_link, "up")
            host.run_ip("link", "set", "lo", "up")
            host.run_ip("link", "add", "lan2", "type", "veth", "peer", "name", "lan2peer")
            host.run_ip("addr", "add", "192.168.250.2/24", "dev", "lan2")
            host.run_ip("link", "set", "lan2", "up")
            host.run_ip("link", "set", "lan2peer", "up")
            host.etc.mkdir(parents=True, exist_ok=True)
            (host.etc / "hosts").write_text(f"127.0.0.1 localhost {socket.gethostname()}\n")
        except BaseException:
            host.remove()
            raise
        return host

    def run_ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on that host."""
        return ["ip", "netns", "exec", self.name, *argv]

    def resolve_own_name(self) -> str:
        """What this machine's host name resolves to on that host."""
        probe = "import socket; print(socket.gethostbyname(socket.gethostname()))"
        done = subprocess.run(self.command([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    def connect(self, address: str, port: int) -> str:
        """From that host, open a TCP connection: ``accepted``, ``refused`` or another error."""
        probe = textwrap.dedent(f"""
            import socket
            try:
                socket.create_connection(({address!r}, {port}), timeout=5).close()
                print("accepted")
            except ConnectionRefusedError:
                print("refused")
            except OSError as exc:
                print(type(exc).__name__, exc)
        """)
        done = subprocess.run(self.command([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=30)
        return (done.stdout + done.stderr).strip()

    def cut(self) -> None:
        _ip("link", "set", self.near_link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.near_link, "up")

    def remove(self) -> None:
        _ip("link", "del", self.near_link, check=False)  # takes its peer along
        _ip("netns", "del", self.name, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
