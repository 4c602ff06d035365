"""The official TypeScript client (@electric-sql/client, npm) syncs a shape through the gateway.

Needs node and the packages from tests/js (``npm ci --prefix tests/js``). Missing tools FAIL this
test with the command to run: nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgressor.gateway.app import Gateway
from postgressor.gateway.params import TableRule
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import VerifierConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from electric_standin import ElectricStandin, ServerThread, or_table_standin
from jwt_keys import ISSUER, OTHER_USER, SECRET, USER, hs256, user_claims

JS_DIR = Path(__file__).resolve().parents[1] / "js"
INSTALL = "npm ci --prefix tests/js"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail(f"node is not installed: apt-get install nodejs npm, then {INSTALL}")
    if not (JS_DIR / "node_modules" / "@electric-sql" / "client").is_dir():
        pytest.fail(f"@electric-sql/client is not installed: run {INSTALL}")
    return path


@pytest.fixture
def gateway() -> Iterator[tuple[ServerThread, ElectricStandin, str]]:
    servers = ServerThread()
    standin = or_table_standin(USER, OTHER_USER)
    try:
        upstream = servers.serve(standin.app(), access_log=None)
        settings = GatewaySettings(upstream=upstream, secret="electric-secret-js",
                                   tables={"OR": TableRule("OR", "Owner", ("id", "Owner", "title"))},
                                   verifier=VerifierConfig(jwt_secret=SECRET, issuer=ISSUER))
        url = servers.serve(Gateway(settings).make_app(), handler_cancellation=True, access_log=None)
        yield servers, standin, url
    finally:
        servers.close()


def read_lines(proc: subprocess.Popen[str], out: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put(line.rstrip("\n"))
    out.put("EOF")


def expect(lines: queue.Queue[str], prefix: str, proc: subprocess.Popen[str]) -> list[dict]:
    while True:
        try:
            line = lines.get(timeout=40)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"no '{prefix}' line from the node client")
        if line == "EOF":
            assert proc.stderr is not None
            pytest.fail(f"node client ended before '{prefix}': {proc.stderr.read()[-2000:]}")
        if line.startswith(prefix + " "):
            return json.loads(line[len(prefix) + 1:])


@pytest.mark.parametrize("live_sse", ["0", "1"], ids=["long-poll", "sse"])
def test_official_client_syncs_only_the_callers_rows(gateway, live_sse: str) -> None:
    servers, standin, url = gateway
    env = {**os.environ, "GATEWAY_URL": url, "TOKEN": hs256(user_claims()), "TABLE": "OR",
           "EXPECT_ID": "live-1", "LIVE_SSE": live_sse}
    proc = subprocess.Popen([node(), str(JS_DIR / "sync.mjs")], cwd=JS_DIR, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(proc, lines), daemon=True).start()
    try:
        initial = expect(lines, "READY", proc)
        assert sorted(r["id"] for r in initial) == ["a", "c"]
        assert all(r["Owner"] == USER for r in initial)
        standin.insert('"OR"', {"id": "live-2", "Owner": OTHER_USER, "title": "not for you"}, servers.loop)
        standin.insert('"OR"', {"id": "live-1", "Owner": USER, "title": "new"}, servers.loop)
        final = expect(lines, "DONE", proc)
        assert sorted(r["id"] for r in final) == ["a", "c", "live-1"]
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # What the real client sent, as the gateway forwarded it: protocol params plus our pins.
    first, later = standin.received[0], standin.received[-1]
    assert first.param("offset") == "-1" and first.param("table") == '"OR"'
    assert later.param("live") == "true" and later.param("handle") == standin.handle
    if live_sse == "1":
        assert any(r.param("live_sse") == "true" for r in standin.received)
    assert all(r.param("params[1]") == USER for r in standin.received)
