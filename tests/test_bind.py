"""The one address a node's Thespian listens on (actors/bind.py): named as an address or an
interface, found from the route to the leader, refused with a reason when it cannot work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from actors.bind import check_address, route_address
from config.ports import free_port
from tests.conftest import ROOT


def test_an_address_or_an_interface_of_this_host_is_taken():
    assert check_address("127.0.0.1") == "127.0.0.1"
    assert check_address("lo") == "127.0.0.1"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("0.0.0.0", "cannot be advertised"),
        ("224.0.0.1", "cannot be advertised"),
        ("203.0.113.9", "not an address of this host"),
        ("no-such-interface", "neither an IPv4 address nor an interface"),
    ],
)
def test_anything_else_is_refused_with_the_reason(spec, why):
    with pytest.raises(ValueError, match=why):
        check_address(spec)


def test_the_route_to_a_leader_on_this_host_is_loopback():
    assert route_address("127.0.0.1", 1900) == "127.0.0.1"


def test_on_another_host_the_route_to_the_leader_is_its_link_address(far_host):
    probe = f"from actors.bind import route_address; print(route_address({far_host.near!r}, 1900))"
    done = subprocess.run(far_host.command([sys.executable, "-c", probe]), cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == far_host.far, done.stderr


def test_a_node_with_no_route_to_its_leader_says_so_and_exits(far_host):
    argv = [sys.executable, "run.py", "worker", "--leader", "203.0.113.1:1900", "--admin-port", str(free_port())]
    done = subprocess.run(far_host.command(argv), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no route to the leader 203.0.113.1:1900" in done.stderr and "--advertise" in done.stderr
