"""A browser app on another origin syncs through the gateway: headless Chromium, the official client.

Debian's ``chromium`` (/usr/bin/chromium) driven by ``playwright-core`` (tests/js). The page is served from
one loopback origin, the gateway listens on another, and only the first is in ``cors_origins``. Web
security is untouched: CORS is enforced by the browser itself. Missing tools FAIL with the command to run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp import web

from postgressor.gateway.app import Gateway
from postgressor.gateway.params import TableRule
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import VerifierConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from electric_standin import ElectricStandin, ServerThread, or_table_standin
from jwt_keys import ISSUER, OTHER_USER, SECRET, USER, hs256, user_claims

JS_DIR = Path(__file__).resolve().parents[1] / "js"
CLIENT = JS_DIR / "node_modules" / "@electric-sql" / "client" / "dist" / "index.browser.mjs"
CHROMIUM = "/usr/bin/chromium"


def tools() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: apt-get install nodejs npm, then npm ci --prefix tests/js")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup does)")
    if not (JS_DIR / "node_modules" / "playwright-core").is_dir() or not CLIENT.is_file():
        pytest.fail("playwright-core or @electric-sql/client is not installed: run npm ci --prefix tests/js")
    return node


def page_app() -> web.Application:
    """The browser app: one HTML page and the client's browser build, from its own origin."""
    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=(JS_DIR / "page.html").read_text(), content_type="text/html")

    async def client(_request: web.Request) -> web.Response:
        return web.Response(body=CLIENT.read_bytes(), content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/client.mjs", client)
    return app


@dataclass
class Browsers:
    standin: ElectricStandin
    gateway: str
    allowed: str  # page origin listed in cors_origins
    other: str  # page origin not listed


@pytest.fixture
def browsers() -> Iterator[Browsers]:
    servers = ServerThread()
    standin = or_table_standin(USER, OTHER_USER)
    try:
        upstream = servers.serve(standin.app(), access_log=None)
        allowed = servers.serve(page_app(), access_log=None)
        other = servers.serve(page_app(), access_log=None)
        settings = GatewaySettings(upstream=upstream, secret="electric-secret-browser",
                                   tables={"OR": TableRule("OR", "Owner", ("id", "Owner", "title"))},
                                   verifier=VerifierConfig(jwt_secret=SECRET, issuer=ISSUER),
                                   cors_origins=(allowed,))  # fmt: skip
        gateway = servers.serve(Gateway(settings).make_app(), handler_cancellation=True, access_log=None)
        yield Browsers(standin, gateway, allowed, other)
    finally:
        servers.close()


def open_page(origin: str, gateway: str, token: str, tmp_path: Path, wait_ms: int = 30000) -> dict:
    fragment = urlencode({"gateway": gateway, "table": "OR", "token": token})
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"  # a fresh user-data-dir per page
    env = {**os.environ, "PAGE_URL": f"{origin}/#{fragment}", "USER_DATA_DIR": str(profile),
           "CHROMIUM": CHROMIUM, "WAIT_MS": str(wait_ms)}  # fmt: skip
    proc = subprocess.run([tools(), str(JS_DIR / "browser.mjs")], cwd=JS_DIR, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"browser driver failed: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("user", "mine"), [(USER, ["a", "c"]), (OTHER_USER, ["b"])], ids=["A", "B"])
def test_a_page_on_an_allowed_origin_shows_only_its_users_rows(
    browsers: Browsers, user: str, mine: list[str], tmp_path: Path
) -> None:
    page = open_page(browsers.allowed, browsers.gateway, hs256(user_claims(sub=user)), tmp_path)
    result = page["result"]
    assert "error" not in result, page
    assert sorted(r["id"] for r in result["rows"]) == mine
    assert all(r["Owner"] == user for r in result["rows"])
    shown = sorted(line.split(":")[0] for line in page["text"].splitlines())
    assert shown == mine
    # Electric's own URL form went through, pinned to the caller.
    assert browsers.standin.received and all(r.param("params[1]") == user for r in browsers.standin.received)


def test_a_page_on_another_origin_gets_nothing(browsers: Browsers, tmp_path: Path) -> None:
    page = open_page(browsers.other, browsers.gateway, hs256(user_claims()), tmp_path)
    result = page["result"]
    assert "rows" not in result and page["text"] == "", page
    assert result["attempts"] and all(str(a).startswith("TypeError") for a in result["attempts"]), page
    assert any("CORS" in line for line in page["console"]), page["console"]
    assert browsers.standin.received == []  # the preflight failed: no shape request reached Electric
