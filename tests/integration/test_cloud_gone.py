"""A recorded server gone at the provider: `up` shows the bill, says the new server starts empty and where the data
could come from, and asks (--yes skips; no terminal without --yes: exit 2, nothing created, state unchanged).

Runs against the fakes in tests/cloudfakes; the server is deleted behind postgressor's back, as in the console.
The OCI fake answers a reused launch retry token with the old, terminated instance: the new one needs a new token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudfakes import ovh
from cloudfakes.clouds import NAMES, Cloud, config_for, started
from cloudfakes.harness import isolated_cli, saved
from postgressor import lifecycle
from postgressor.box.converge import DeployResult
from postgressor.cli import app

TITLE = {"hetzner": "Hetzner", "oracle": "Oracle Cloud", "ovh": "OVHcloud"}
SERVER_GET = {"hetzner": r"/v1/servers/\d+", "oracle": r"/20160918/instances/[^/]+",
              "ovh": rf"/1.0/cloud/project/{ovh.PROJECT}/instance/[^/]+"}  # fmt: skip
S3 = ('[backup]\ns3_endpoint = "fsn1.your-objectstorage.com"\ns3_region = "fsn1"\ns3_bucket = "my-backups"\n'
      's3_key = "AKIAEXAMPLEKEY1234"\ns3_key_secret = "s3cr3t-Value"\n'
      'cipher_pass = "u8+Yc/Qf0rT3kWz+9mN/aB4dE7gH1jL5pS8vX2yZ6cR0tU3wQ9eK1oI4nM7bV2x=="\n')  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolated_cli(monkeypatch, tmp_path)


@pytest.fixture
def deploys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The deploy stubbed at the lifecycle boundary; records the server id it ran on and PostgreSQL as installed."""
    seen: list[str] = []

    def deploy_host(settings: Any, state: Any, host: Any, listener: Any, **kwargs: Any) -> tuple[Any, DeployResult]:
        seen.append(state.find("server").id)
        state.pg_version = 17
        state.save()
        return SimpleNamespace(pg_version=17, source="pgdg", database="app", owner="app"), DeployResult()

    monkeypatch.setattr(lifecycle, "deploy_host", deploy_host)
    return seen


@pytest.fixture(params=NAMES)
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    with started(request.param, tmp_path) as c:
        config_for(c, tmp_path)
        yield c


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout + result.stderr


def delete_server(cloud: Cloud) -> None:
    """Delete the server at the provider (the console, a reclaim), leaving postgressor's state as it was."""
    if cloud.name == "hetzner":
        cloud.api.servers.clear()
    elif cloud.name == "oracle":
        (instance,) = cloud.api.of("Instance")
        instance["lifecycleState"] = "TERMINATED"
    else:
        cloud.api.instances.clear()


def server_id(cloud: Cloud) -> str:
    state = saved(cloud.settings)
    server = state.find("server") if state else None
    assert server is not None
    return server.id


def state_text(cloud: Cloud) -> str:
    return (cloud.settings.state_dir / "default.json").read_text()


def writes(cloud: Cloud, since: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in cloud.api.log[since:] if r.method != "GET"]


def test_gone_server_asks_saying_the_new_one_starts_empty(cloud: Cloud, deploys: list[str]) -> None:
    assert run("up", "--yes")[0] == 0
    old = server_id(cloud)
    delete_server(cloud)
    before, calls = state_text(cloud), len(cloud.api.log)
    code, out = run("up")
    assert code == 2, out
    assert "price:" in out and "size:" in out
    (warning,) = [line for line in out.splitlines() if line.startswith("warning:")]
    assert f"the recorded server {old} no longer exists at {TITLE[cloud.name]}" in warning
    assert "starts EMPTY" in warning and "backups kept on its disk (/var/lib/pgbackrest) are gone with it" in warning
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: confirmation needed: Create this billed ")
    assert last.endswith(" server, which starts empty? (no terminal to ask on; pass --yes to confirm)")
    assert writes(cloud, calls) == [] and state_text(cloud) == before and cloud.count("server") == 0
    assert len(deploys) == 1
    code, out = run("up", "--yes")
    assert code == 0, out
    assert "no longer exists" in out and cloud.count("server") == 1
    assert server_id(cloud) != old and deploys == [old, server_id(cloud)]


@pytest.mark.parametrize("power", ["running", "off"])
def test_existing_server_asks_nothing(tmp_path: Path, deploys: list[str], power: str) -> None:
    with started("hetzner", tmp_path) as hz:
        config_for(hz, tmp_path)
        assert run("up", "--yes")[0] == 0
        (server,) = hz.api.servers.values()
        server["status"] = power
        calls = len(hz.api.log)
        code, out = run("up")  # no --yes, no terminal: any question would exit 2
        assert code == 0, out
        assert "warning:" not in out and "price:" not in out and "no longer exists" not in out
        assert hz.api.calls("GET", SERVER_GET["hetzner"]) and len(deploys) == 2 and hz.count("server") == 1
        read = [r for r in hz.api.log[calls:] if r.method == "GET" and "/servers/" in r.path]
        assert read and read[0].path == f"/v1/servers/{server_id(hz)}"  # the one added read, before any other


def test_gone_with_an_s3_repository_names_the_bucket(tmp_path: Path, deploys: list[str]) -> None:
    with started("hetzner", tmp_path) as hz:
        config_for(hz, tmp_path)
        with (tmp_path / "postgressor.toml").open("a") as fh:
            fh.write(S3)
        assert run("up", "--yes")[0] == 0
        delete_server(hz)
        result = CliRunner().invoke(app, ["--json", "up"])
        assert result.exit_code == 2
        assert json.loads(result.stdout)["error"]["code"] == "usage"  # stdout stays one JSON document
        (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert "starts EMPTY" in warning
        assert "backups in s3://my-backups/pgbackrest on fsn1.your-objectstorage.com" in warning
        assert "'postgressor up --stack NEW --restore-from <this path>'" in warning
        assert hz.count("server") == 0


@pytest.mark.parametrize("times", [2, 20])
def test_transient_errors_are_never_taken_for_gone(cloud: Cloud, deploys: list[str], times: int) -> None:
    assert run("up", "--yes")[0] == 0
    status, body = cloud.server_error
    cloud.api.fail("GET", SERVER_GET[cloud.name], status, body, times=times)
    code, out = run("up")
    assert "warning:" not in out and "price:" not in out and cloud.count("server") == 1
    if times == 2:  # retried, then the server is there: no question
        assert code == 0, out
    else:  # still failing after the retries: one error line, nothing created
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "power state" in errors[0], out
        assert len(deploys) == 1
