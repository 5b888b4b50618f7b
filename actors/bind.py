"""Where this node's Thespian listens: on the one address it advertises, never on all interfaces.

Why a patch: Thespian's TCP transport unpickles whatever reaches its admin port or any actor's
port, so each of them runs code for whoever can connect. Thespian 4.0.1 advertises one address
(``THESPIAN_BASE_IPADDR``, else a guess from the route to the internet or the host name) but binds
every listener to all interfaces (``IPBase.IPActorAddress``: ``bindname = ('', port)`` for every
"external" address) and has no option to change that. ``confine_listeners`` makes the bind address
the advertised one. It must run before the ``ActorSystem`` starts: the admin and every actor
process fork from the process that started it (Thespian's default start method) and inherit it.

Which address to advertise: on a single node, loopback; on a worker node, the local end of the
route to the leader (the address on which the leader reaches it, whatever the host name resolves
to and whether there is a route to the internet or not); on a leader with worker nodes, the
address the operator names (``--advertise``), since the leader cannot know its nodes' networks.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

LOOPBACK = "127.0.0.1"
ADDRESS_VARIABLE = "THESPIAN_BASE_IPADDR"  # what Thespian advertises (read by thespian.system.transport.IPBase)


def check_address(spec: str) -> str:
    """The IPv4 address ``spec`` names (an address, or an interface such as ``wg0``) if this host can
    bind it; ValueError saying why not."""
    address = interface_address(spec) if spec in dict(socket.if_nameindex()).values() else spec
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(
            f"{address!r} is neither an IPv4 address nor an interface of this host (Thespian's TCP is IPv4 only)"
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{address} cannot be advertised: name the one address peers should reach")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            raise ValueError(f"{address} is not an address of this host ({exc.strerror})") from None
    return address


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (Linux: the SIOCGIFADDR ioctl)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
        except OSError as exc:
            raise ValueError(f"interface {name} has no IPv4 address ({exc.strerror})") from None
    return socket.inet_ntoa(answer[20:24])


def route_address(host: str, port: int) -> str:
    """The local address of the route to ``host``: the one on which ``host`` reaches this machine.
    No packet is sent (a UDP socket only picks its route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            return sock.getsockname()[0]
    except OSError as exc:
        raise ValueError(f"no route to the leader {host}:{port} ({exc.strerror or exc})") from None


def confine_listeners(address: str) -> None:
    """Have every Thespian listener started from now on, in this process and the processes it
    forks, bind to ``address`` (which it also advertises) instead of all interfaces."""
    os.environ[ADDRESS_VARIABLE] = address
    from thespian.system.transport import IPBase

    IPBase.thisSystem.add_local_addr(address)  # Thespian read the variable when it was imported
    init = IPBase.IPActorAddress.__init__
    if getattr(init, "confined", False):
        return

    def confined_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (os.environ[ADDRESS_VARIABLE], self.bindname[1])

    confined_init.confined = True  # type: ignore[attr-defined]
    IPBase.IPActorAddress.__init__ = confined_init
