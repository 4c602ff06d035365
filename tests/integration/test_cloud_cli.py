"""The cloud providers through the CLI: one-line errors and exit codes, Ctrl-C (130), then destroy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudfakes.hetzner import TOKEN, FakeHetzner
from postgressor.cli import app
from postgressor.providers import cloud, retry
from postgressor.state import load_state


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHetzner]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(retry, "sleep", lambda seconds: None)
    fake = FakeHetzner().start()
    (tmp_path / "postgressor.toml").write_text(f'[hetzner]\napi_endpoint = "{fake.url}/v1"\n')
    monkeypatch.setenv("HCLOUD_TOKEN", TOKEN)
    yield fake
    fake.stop()
    assert not fake.bugs


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout + result.stderr


def test_unknown_region_exits_2_with_one_line(api: FakeHetzner) -> None:
    code, out = run("up", "--provider", "hetzner", "--region", "mumbai")
    assert code == 2
    assert out.strip().count("\n") == 0 and "hetzner" in out and "Traceback" not in out
    assert api.log == []


def test_missing_token_exits_2(api: FakeHetzner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HCLOUD_TOKEN")
    code, out = run("up", "--provider", "hetzner", "--yes")
    assert code == 2 and "HCLOUD_TOKEN" in out and api.log == []


def test_plan_lists_what_up_would_create(api: FakeHetzner) -> None:
    code, out = run("plan", "--provider", "hetzner", "--region", "helsinki")
    assert code == 0
    assert "create the server (Hetzner hel1)" in out and "cx23" in out
    assert api.log == []


def test_ctrl_c_during_up_then_destroy_removes_everything(api: FakeHetzner, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:  # fmt: skip
    def interrupt(event: str) -> None:
        if event == "created server":
            raise KeyboardInterrupt

    monkeypatch.setattr(cloud, "on_created", interrupt)
    code, out = run("up", "--provider", "hetzner", "--yes")
    assert code == 130 and "interrupted" in out
    state = load_state(tmp_path / ".postgressor", "default")
    assert state is not None and state.find("server") is None and len(api.servers) == 1
    monkeypatch.setattr(cloud, "on_created", lambda event: None)
    code, out = run("destroy", "--yes")
    assert code == 0, out
    assert "deleted Hetzner server" in out
    assert api.servers == {} and api.firewalls == {} and api.ssh_keys == {}
    assert load_state(tmp_path / ".postgressor", "default") is None


def test_api_error_is_one_line_exit_1(api: FakeHetzner) -> None:
    api.fail("POST", "/v1/ssh_keys", 403, {"error": {"code": "forbidden", "message": "read-only token"}})
    code, out = run("up", "--provider", "hetzner", "--yes")
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Read & Write" in errors[0] and "Traceback" not in out
