"""Who may open ``/ws``, ``/events`` and ``/metrics``: a shared token, and a browser Origin check.

Checked in a middleware, so a refused client gets a plain HTTP 401/403 with a JSON body before
any WebSocket upgrade: no socket, no actor work, nothing for a scanner to hold open.
``/healthz``, ``/`` and the static files stay open: liveness probes need no secret (``/healthz``
shows process ids and node names only with the token), and the page
holds no data (it needs the token itself, from its own ``?token=``, to connect to ``/events``).
The Origin check stops another web site from opening either socket from a visitor's browser
(taking a game's session over, reading its feed). "The server's own origin" is the address and
port the connection really reached (or the configured host name), never the ``Host`` header: with
DNS rebinding a hostile name resolves to this machine and its page sends that name as both.
The token is never logged; refusals log the path without its query string (it may hold the token).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from loguru import logger
from yarl import URL

from config.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROTECTED = ("/ws", "/events", "/metrics")


def auth_middleware(settings: Settings):
    """The middleware for ``settings``: token (when set) and Origin on the PROTECTED paths."""
    expected = settings.auth_token.encode()
    allowed = settings.origin_allow_list

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource  # the route, however its path was spelled
        path = resource.canonical if resource is not None else request.path
        if path not in PROTECTED:
            return await handler(request)
        if expected and not has_token(request, expected):
            return _refuse(
                request,
                401,
                "unauthorized",
                "a valid token is required: Authorization: Bearer <token> or ?token=<token>",
            )
        if not origin_allowed(request, settings.host, allowed):
            message = f"this Origin may not open {path} (setting allowed_origins)"
            return _refuse(request, 403, "forbidden_origin", message)
        return await handler(request)

    return middleware


def has_token(request: web.Request, expected: bytes) -> bool:
    """The request carries ``expected`` (Authorization: Bearer, or ?token=)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    candidates = [request.query.get("token", "")]
    if scheme.lower() == "bearer":
        candidates.append(value.strip())
    # compare_digest: the time taken tells nothing about how much of a guess was right.
    return any(hmac.compare_digest(c.encode(), expected) for c in candidates)


def origin_allowed(request: web.Request, host: str, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the server's own origin, or listed (``*``: any)."""
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    try:
        url = URL(origin)
        return url.scheme == "http" and _own(url.host or "", url.port, request, host)
    except (ValueError, TypeError):
        return False


def _own(origin_host: str, origin_port: int | None, request: web.Request, host: str) -> bool:
    """Whether a page at ``http://origin_host:origin_port`` was served by this very socket."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not sockname or origin_port != sockname[1]:
        return False
    address = ipaddress.ip_address(sockname[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    names = {str(address), host.lower()}
    if address.is_loopback:
        names |= {"localhost", "127.0.0.1", "::1"}
    return origin_host.lower() in names


def _refuse(request: web.Request, status: int, error: str, message: str) -> web.Response:
    logger.warning("refused {} {} from {}: {} ({})", request.method, request.path, request.remote, error, status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)
