"""Free loopback ports for the processes we start (tests, load tests, the embedded model).

Why below the ephemeral range: a port the kernel picked for ``bind(0)`` and we released is free
for anyone's next ``bind(0)`` too, and a Thespian actor of the server being started once took such
a port before the server bound it. Ports outside the range are only ever taken by name.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Final


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_EPHEMERAL: Final = _ephemeral_range()
_next_port = 20000 + (os.getpid() * 7) % 8000


def free_port() -> int:
    """A loopback port that is free now and that the kernel never hands out by itself; each call in
    a process gives another one."""
    global _next_port
    for _ in range(20000):
        port, _next_port = _next_port, _next_port + 1
        if _next_port >= 30000 or _next_port in _EPHEMERAL:
            _next_port = 10000
        if port in _EPHEMERAL:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free loopback port outside the ephemeral range")
