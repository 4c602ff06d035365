"""Progress while `up`/`deploy` work: JSON lines on stderr with --json, plain lines in a pipe, elapsed time
for the whole run (image build and boot included), and the step inside a long operation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor import lifecycle as stacks
from postgressor.box.converge import DeployResult, OpReport
from postgressor.box.spec import Distro, box_spec
from postgressor.cli import app
from postgressor.cli import lifecycle_cmds as box
from postgressor.config import load_settings
from postgressor.opwatch import apt_detail
from postgressor.state import HostRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(box.time, "monotonic", fake)
    monkeypatch.setattr(box.Reporter, "HEARTBEAT", float("inf"))  # the fake clock jumps; no stray repeats
    return fake


def fake_up(clock: Clock) -> Any:
    def up(settings: Any, stack: str, log: Any, listener: Any, detail: Any = None,
           resize: Any = None, restore: Any = None) -> stacks.UpResult:
        log("building the base image")
        clock.now += 60
        log("booting the VM (TCG, 2 CPU, 2048 MB)")
        clock.now += 54
        listener("Install packages", None)
        detail("Install packages", "45% Installing postgresql-15 (amd64)")
        clock.now += 200
        report = OpReport("Install packages", "changed", 1)
        listener("Install packages", report)
        deploy = DeployResult(operations=[report], remote_commands=7, seconds=311.0)
        spec = box_spec(load_settings(provider="local"), Distro("debian", 12, "bookworm"))
        return stacks.UpResult(stack, HostRecord("127.0.0.1", 2222, "root", "k"), deploy, spec)

    return up


def test_json_up_streams_progress_on_stderr_and_one_object_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(box.stacks, "up", fake_up(clock))
    result = CliRunner().invoke(app, ["--json", "up"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert final["ok"] is True and final["seconds"] == 314.0  # image build and boot included
    assert final["deploy"]["seconds"] == 311.0
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"step", "status", "elapsed"} <= set(event) for event in events)
    assert [(e["step"], e["status"]) for e in events] == [
        ("building the base image", "running"),
        ("booting the VM (TCG, 2 CPU, 2048 MB)", "running"),
        ("Install packages", "started"),
        ("Install packages", "running"),
        ("Install packages", "changed"),
    ]
    assert events[1]["elapsed"] == 60.0 and events[-1]["elapsed"] == 314.0
    assert events[3]["detail"] == "45% Installing postgresql-15 (amd64)"
    assert events[-1]["seconds"] == 200.0


def test_plain_up_in_a_pipe_says_each_step_with_its_time_and_the_whole_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(box.stacks, "up", fake_up(clock))
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 0, result.output
    assert "→ booting the VM (TCG, 2 CPU, 2048 MB) (60 s)" in result.stderr
    assert "changed Install packages (200 s)" in result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.endswith("1 changed, 0 unchanged, 0 failed in 314 s (deploys 311 s, 7 remote commands)"), summary


def test_a_long_step_repeats_itself_with_its_elapsed_time(capsys: pytest.CaptureFixture[str], clock: Clock) -> None:
    reporter = box.Reporter(json_lines=True, heartbeat=30)
    try:
        reporter.op("Gateway healthy", None)
        clock.now += 31
        reporter._tick_once()
        clock.now += 10
        reporter._tick_once()  # within the heartbeat: nothing new
    finally:
        reporter.close()
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["status"], e["elapsed"]) for e in events] == [("started", 0.0), ("running", 31.0)]
    assert events[1]["seconds"] == 31.0


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ("pmstatus:postgresql-15:45.4545:Installing postgresql-15 (amd64)\n", "45% Installing postgresql-15 (amd64)"),
        ("dlstatus:3:12.5:Retrieving file 3 of 40", "12% Retrieving file 3 of 40"),
        ("pmerror:foo.deb:50:something", ""),
        ("", ""),
    ],
)
def test_apt_status_lines_become_the_steps_detail(line: str, detail: str) -> None:
    assert apt_detail(line) == detail
