"""A worker's lease on its gateway: it stays only while it can reach the gateway that placed it.

Why: a worker on a node the leader declared lost (a partition, a restarted leader) keeps running
in Thespian with the agents it had, and may still stream from the LLM for turns the leader
already ended. The leader tells such workers to exit when their node comes back (actors/pool.py),
but a node that stays cut off, or whose leader restarted, never hears it. So each worker checks
that its gateway's port still accepts a TCP connection, once per check-in period, without
blocking (a connect is started, and its outcome read at the next check); silent for longer than
the leader takes to declare a node lost, it stops itself.
"""

from __future__ import annotations

import errno
import socket
import time

# The leader declares a node lost after about 3 check-in periods and, when the link heals first,
# retires the lost generation itself once the node checks in again (up to a period later).
LOST_PERIODS = 6


class GatewayLease:
    def __init__(self, address: tuple[str, int], check_s: float, clock=time.monotonic) -> None:
        self.address = address
        self.check_s = check_s
        self.lost_after_s = LOST_PERIODS * check_s
        self.clock = clock
        self.renewed_at = clock()
        self._probe: socket.socket | None = None

    def check(self) -> bool:
        """Read the last probe's outcome, start the next; False once the gateway was unreachable too long."""
        if self._probe is not None:
            if self._probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _connected(self._probe):
                self.renewed_at = self.clock()
            self._probe.close()
        self._probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._probe.setblocking(False)
        code = self._probe.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self._probe.close()
            self._probe = None
        return self.clock() - self.renewed_at < self.lost_after_s

    def unreachable_s(self) -> float:
        return self.clock() - self.renewed_at

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
