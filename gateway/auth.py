"""Who may open ``/ws`` and ``/events``: a shared token, and for ``/events`` a browser Origin check.

Checked in a middleware, so a refused client gets a plain HTTP 401/403 with a JSON body before
any WebSocket upgrade: no socket, no actor work, nothing for a scanner to hold open.
``/healthz``, ``/`` and the static files stay open: liveness probes need no secret (``/healthz``
shows process ids and node names only with the token), and the page
holds no data (it needs the token itself, from its own ``?token=``, to connect to ``/events``).
The Origin check stops another web site from opening ``/events`` from a visitor's browser.
The token is never logged; refusals log the path without its query string (it may hold the token).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from loguru import logger
from yarl import URL

from config.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROTECTED = ("/ws", "/events")


def auth_middleware(settings: Settings):
    """The middleware for ``settings``: token on /ws and /events (when set), Origin on /events."""
    expected = settings.token.encode()
    allowed = settings.allowed_origins

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
        if path == "/events" and not origin_allowed(request, allowed):
            return _refuse(
                request, 403, "forbidden_origin", "this Origin may not open /events (setting events_allowed_origins)"
            )
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


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the server's own host:port, or listed (``*``: any)."""
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    try:
        url = URL(origin)
        own = URL.build(scheme=url.scheme, authority=request.host)
        return bool(url.host) and (url.host.lower(), url.port) == ((own.host or "").lower(), own.port)
    except (ValueError, TypeError):
        return False


def _refuse(request: web.Request, status: int, error: str, message: str) -> web.Response:
    logger.warning("refused {} {} from {}: {} ({})", request.method, request.path, request.remote, error, status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)
