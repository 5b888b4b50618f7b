"""Token and Origin checks end to end: a real server started with GAME_AGENT_TOKEN, real sockets.

A refused client must get its 401/403 before any WebSocket upgrade, and the token must never
reach the server's log, not even from a refused request's query string.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.timeout(60)

TOKEN = "tok-SECRET-" + secrets.token_hex(8)
WRONG = "tok-WRONG-" + secrets.token_hex(8)
ALLOWED_ORIGIN = "http://localhost:3000"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("secure")
    proc = ServerProcess(
        tmp,
        llm.url,
        GAME_AGENT_TOKEN=TOKEN,
        GAME_AGENT_DATA_DIR=str(tmp / "data"),
        GAME_AGENT_ALLOWED_ORIGINS=f" {ALLOWED_ORIGIN} , ",
    )
    yield proc
    proc.stop()
    log = proc.server_log()
    assert TOKEN not in log and WRONG not in log, "a token reached the server log"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http", "ws", 1) + path


async def refused(http: aiohttp.ClientSession, url: str, **kwargs) -> int:
    """The status of a refused WebSocket handshake (fails if the upgrade happened)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        ws = await http.ws_connect(url, **kwargs)
        await ws.close()
    return refusal.value.status


async def ping(ws: aiohttp.ClientWebSocketResponse) -> dict:
    await ws.send_json({"type": "ping", "id": "p1"})
    return await ws.receive_json(timeout=10)


@pytest.mark.parametrize("path", ["/ws", "/events"])
@pytest.mark.parametrize(
    "how",
    [
        {},
        {"query": f"?token={WRONG}"},
        {"headers": {"Authorization": f"Bearer {WRONG}"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"query": "?token="},
    ],
    ids=["none", "wrong-query", "wrong-bearer", "not-bearer", "empty"],
)
async def test_without_the_right_token_the_upgrade_never_happens(server, http, path, how):
    url = ws_url(server, path + how.get("query", ""))
    assert await refused(http, url, headers=how.get("headers")) == 401


async def test_the_refusal_is_json_with_a_bearer_challenge(server, http):
    async with http.get(server.url + "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        body = await response.json()
    assert body["error"] == "unauthorized" and body["message"]


async def test_a_bearer_header_opens_ws(server, http):
    async with http.ws_connect(ws_url(server, "/ws"), headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert await ping(ws) == {"type": "pong", "id": "p1"}


async def test_a_query_token_opens_ws_and_events(server, http):
    async with http.ws_connect(ws_url(server, f"/ws?session=q&token={TOKEN}")) as ws:
        assert await ping(ws) == {"type": "pong", "id": "p1"}
    async with http.ws_connect(ws_url(server, f"/events?session=q&token={TOKEN}")) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "id"


async def test_health_and_the_page_need_no_token(server, http):
    async with http.get(server.url + "/healthz") as response:
        assert response.status == 200 and (await response.json())["status"] == "ok"
    for path in ("/", "/app.js"):
        async with http.get(server.url + path) as response:
            assert response.status == 200, path


async def opens(http: aiohttp.ClientSession, url: str, path: str, headers: dict) -> None:
    """The socket opened: /ws answers a ping, /events sends the client its id."""
    async with http.ws_connect(url, headers=headers) as ws:
        if path == "/ws":
            assert await ping(ws) == {"type": "pong", "id": "p1"}
        else:
            assert (await ws.receive_json(timeout=10))["type"] == "id"


@pytest.mark.parametrize("path", ["/ws", "/events"])
@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("http://evil.example", False),
        ("null", False),
        ("http://127.0.0.1:1", False),  # our host, another port
        ("https://own", False),  # our host and port, but we serve no TLS
        (ALLOWED_ORIGIN, True),
        (None, True),  # not a browser (Godot native)
        ("own", True),
        ("http://localhost:PORT", True),  # the same loopback socket, by name
    ],
)
async def test_a_browser_origin_must_be_our_own_or_listed(server, http, path, origin, allowed):
    url = ws_url(server, f"{path}?session=origin&token={TOKEN}")
    if origin is not None:
        origin = origin.replace("https://own", server.url.replace("http", "https", 1)).replace("PORT", str(server.port))
    headers = {} if origin is None else {"Origin": server.url if origin == "own" else origin}
    if allowed:
        await opens(http, url, path, headers)
        return
    assert await refused(http, url, headers=headers) == 403
    async with http.get(url.replace("ws", "http", 1), headers=headers) as response:
        assert response.status == 403
        body = await response.json()
        assert body["error"] == "forbidden_origin" and "allowed_origins" in body["message"]


@pytest.mark.parametrize("path", ["/ws", "/events"])
async def test_dns_rebinding_is_refused(server, http, path):
    """A hostile name resolved to this machine: its page sends that name as Host and as Origin."""
    rebound = f"evil.example:{server.port}"
    headers = {"Host": rebound, "Origin": f"http://{rebound}"}
    assert await refused(http, ws_url(server, f"{path}?token={TOKEN}"), headers=headers) == 403


async def test_another_site_cannot_take_a_game_session_over(server, http):
    game = await http.ws_connect(ws_url(server, f"/ws?session=taken&token={TOKEN}"))
    try:
        evil = {"Origin": "http://evil.example"}
        assert await refused(http, ws_url(server, f"/ws?session=taken&token={TOKEN}"), headers=evil) == 403
        assert await ping(game) == {"type": "pong", "id": "p1"}  # still the session's connection
    finally:
        await game.close()


async def test_refusals_are_logged_without_the_query_string(server, http):
    assert await refused(http, ws_url(server, f"/events?session=logged&token={WRONG}")) == 401
    for _ in range(100):
        log = server.server_log()
        if "refused GET /events" in log:
            break
        await asyncio.sleep(0.1)
    assert "refused GET /events" in log
    assert WRONG not in log and TOKEN not in log and "session=logged" not in log


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")
async def test_the_page_passes_its_token_on_to_events(server):
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{server.url}/?session=web&token={TOKEN}")
            await page.wait_for_function(
                "document.getElementById('connection').textContent.startsWith('connected as')", timeout=10_000
            )
            await page.goto(f"{server.url}/?session=web")
            await page.wait_for_function(
                "document.getElementById('connection').textContent.startsWith('disconnected')", timeout=10_000
            )
        finally:
            await browser.close()
