"""Nothing of the server listens beyond the interfaces the operator chose (issue 12, finding 1).

Thespian unpickles whatever reaches its admin port or an actor's port: each is a door that runs
code. On a single node every one of them must be on loopback, and another host must be refused.
"""

from __future__ import annotations

import ipaddress

import psutil
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.timeout(120)


def listening(server: ServerProcess) -> list[tuple[str, str, int]]:
    """``(process, address, port)`` of every TCP socket listening in any of the server's processes."""
    found = []
    for process in server.processes():
        for conn in process.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.append((" ".join(process.cmdline()[:3]) + f" pid {process.pid}", conn.laddr.ip, conn.laddr.port))
    return found


def test_every_listener_of_every_server_process_is_on_loopback(server):
    sockets = listening(server)
    ports = {port for _, _, port in sockets}
    assert server.admin_port in ports and server.port in ports, sockets
    assert len(sockets) >= 5, sockets  # HTTP, admin, and the gateway, pool and workers' actor ports
    exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_anfar_host_is_refused_at_the_admin_port_and_every_actor_port(server, far_host):
    # Before: all accepted from the other host (Thespian bound them to 0.0.0.0).
    ports = sorted({port for _, _, port in listening(server)})
    answers = {port: far_host.connect(far_host.near, port) for port in ports}
    assert all(answer == "refused" for answer in answers.values()), answers
