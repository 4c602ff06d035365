"""The box's gateway exactly as the box runs it: the bundle installed into a fresh virtualenv, the unit's
ExecStart and environment, the settings file the deploy writes, in front of the Electric stand-in.

Downloads the bundle's wheels for this machine's Python through pip (cached under postgressor's cache).
"""

from __future__ import annotations

import json
import platform
import re
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgressor.box.deploys.base import template
from postgressor.box.gateway_bundle import gateway_bundle
from postgressor.box.gateway_settings import gateway_settings, gateway_toml
from postgressor.config import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from electric_standin import ElectricStandin, ServerThread
from jwt_keys import ISSUER, OTHER_USER, SECRET, USER, hs256, user_claims

ELECTRIC_SECRET = "bundle-electric-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unit_exec_start() -> tuple[str, dict[str, str]]:
    """ExecStart and Environment= of the rendered gateway unit."""
    unit = Path(template("gateway.service.j2")).read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.MULTILINE)
    (environment,) = re.findall(r"^Environment=(.+)$", unit, re.MULTILINE)
    return exec_start, dict(pair.split("=", 1) for pair in environment.split())


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/postgressor/gateway as the deploy's "Gateway installed" step leaves it, under a temp dir."""
    home = tmp_path_factory.mktemp("opt") / "gateway"
    bundle = gateway_bundle(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=300)
    subprocess.run([str(home / "venv/bin/pip"), "install", "--quiet", "--no-index", "--find-links",
                    str(bundle.wheels), *bundle.requirements], check=True, timeout=600)  # fmt: skip
    with tarfile.open(bundle.source_tar) as tar:
        tar.extractall(home / "lib", filter="data")
    return home


def test_the_bundle_holds_only_the_gateway(box: Path) -> None:
    files = {p.relative_to(box / "lib").as_posix() for p in (box / "lib").rglob("*.py")}
    assert "postgressor/gateway/__main__.py" in files and "postgressor/jwt_verify.py" in files
    assert not {f for f in files if f.split("/")[1] in ("cli", "providers", "deploys", "advisor", "config.py")}
    probe = subprocess.run([str(box / "venv/bin/python"), "-c", "import pydantic"], capture_output=True)
    assert probe.returncode != 0  # the box venv has none of the CLI's dependencies


@pytest.fixture
def running(box: Path, tmp_path: Path) -> Iterator[tuple[str, ElectricStandin]]:
    servers = ServerThread()
    standin = ElectricStandin()
    standin.rows['"items"'] = [{"id": "a", "user_id": USER, "title": 'quote " and \U0001f600', "_version": 1},
                               {"id": "b", "user_id": OTHER_USER, "title": "theirs", "_version": 2}]  # fmt: skip
    standin._version = 2
    upstream = servers.serve(standin.app(), access_log=None)
    port = free_port()
    settings = load_settings(supabase={"issuer": ISSUER, "jwt_secret": SECRET},
                             sync={"tables": [{"name": "items", "where": "title <> '\"\"\"'"}]})  # fmt: skip
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(gateway_settings(settings, upstream=upstream, host="127.0.0.1", port=port,
                                                    secret=ELECTRIC_SECRET)))  # fmt: skip
    exec_start, environment = unit_exec_start()
    argv = exec_start.replace("/opt/postgressor/gateway", str(box)).replace("/etc/postgressor/gateway.toml",
                                                                             str(config)).split()  # fmt: skip
    environment["PYTHONPATH"] = environment["PYTHONPATH"].replace("/opt/postgressor/gateway", str(box))
    env = {**environment, "PATH": "/usr/bin:/bin", "ELECTRIC_SECRET": ELECTRIC_SECRET}
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"the bundled gateway did not come up: {proc.communicate()[0][-2000:]}")
                time.sleep(0.1)
        yield url, standin
    finally:
        proc.terminate()
        proc.wait(10)
        servers.close()


def test_the_bundled_gateway_serves_only_the_callers_rows(running: tuple[str, ElectricStandin]) -> None:
    url, _ = running
    request = urllib.request.Request(f"{url}/v1/shape/items?offset=-1",
                                     headers={"Authorization": f"Bearer {hs256(user_claims())}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    rows = [m["value"] for m in body if "value" in m]
    assert [r["id"] for r in rows] == ["a"]
    assert rows[0]["title"] == 'quote " and \U0001f600'
    anonymous = urllib.request.Request(f"{url}/v1/shape/items?offset=-1")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(anonymous, timeout=10)
    assert err.value.code == 401


def test_gateway_serve_still_runs_from_postgressor_toml(tmp_path: Path) -> None:
    """The CLI path (this machine, postgressor.toml + env) translates to the same gateway settings."""
    config = tmp_path / "postgressor.toml"
    config.write_text(f'[supabase]\nissuer = "{ISSUER}"\n\n[gateway]\ncors_origins = ["http://127.0.0.1:5173"]\n\n'
                      '[[sync.tables]]\nname = "items"\n')  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "postgressor", "gateway", "serve", "--config", str(config), "--port", str(port)]
    env = {"PATH": "/usr/bin:/bin", "POSTGRESSOR_SUPABASE__JWT_SECRET": SECRET}
    refused = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "ELECTRIC_SECRET" in refused.stderr and "Traceback" not in refused.stderr
    proc = subprocess.Popen(argv, env={**env, "ELECTRIC_SECRET": ELECTRIC_SECRET}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/shape/items", method="OPTIONS",
                                                 headers={"Origin": "http://127.0.0.1:5173",
                                                          "Access-Control-Request-Method": "GET"})  # fmt: skip
                with urllib.request.urlopen(request, timeout=2) as response:
                    assert response.status == 204
                    assert response.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:5173"
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"gateway serve did not come up: {proc.communicate()[0][-2000:]}")
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
