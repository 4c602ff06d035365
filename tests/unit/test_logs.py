"""``postgressor logs`` (issue 19 item 1): the journalctl command as data, journal JSON as records, and the CLI
against a recorded SSH layer that answers with canned ``journalctl -o json`` lines."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor import lifecycle
from postgressor.box.layout import CADDY_UNIT, ELECTRIC_UNIT, GATEWAY_UNIT, postgres_unit
from postgressor.cli import app
from postgressor.config import load_settings
from postgressor.day2 import logs
from postgressor.errors import PostgressorError, UsageError
from postgressor.remote.ssh import CommandResult
from postgressor.state import HostRecord, open_state

ROOT = Path(__file__).resolve().parents[2]
NOON = 1777636800  # 2026-05-01T12:00:00Z
HOST = HostRecord("203.0.113.7", 22, "root", "k", "ssh-ed25519 AAAA")


def entry(message: Any, unit: str = "postgressor-gateway.service", priority: str = "6", micros: int = 123456,
          **extra: Any) -> str:  # fmt: skip
    """A line as ``journalctl -o json --output-fields=...`` prints it (the always-printed fields included)."""
    fields = {"__CURSOR": "s=6a1f;i=42;b=9c3e;m=1f;t=5f0;x=7d", "__REALTIME_TIMESTAMP": str(NOON * 10**6 + micros),
              "__MONOTONIC_TIMESTAMP": "31234567", "_BOOT_ID": "9c3e", "PRIORITY": priority,
              "_SYSTEMD_UNIT": unit, "MESSAGE": message, **extra}  # fmt: skip
    return json.dumps(fields)


# The stack of the VM tests: PostgreSQL 15, backups, sync.
PG = f"{postgres_unit(15)}.service"
STARTED = entry("Started PostgreSQL Cluster 15-main.", unit="init.scope", UNIT=PG)
GATEWAY = entry("gateway listening on 127.0.0.1:3001")
BACKUP_RUN = entry("P00   WARN: option 'repo1-retention-full' is not set", unit="pgbackrest-backup@full.service",
                   priority="4")  # fmt: skip
TIMER = entry("Started pgbackrest-full.timer - Scheduled pgBackRest full backup (postgressor).", unit="init.scope",
              UNIT="pgbackrest-full.timer")  # fmt: skip
ALL_UNITS = {"postgres": (PG,), "electric": (f"{ELECTRIC_UNIT}.service",), "gateway": (f"{GATEWAY_UNIT}.service",),
             "caddy": (f"{CADDY_UNIT}.service",),
             "backup": ("pgbackrest-backup@*.service", "pgbackrest-full.timer", "pgbackrest-diff.timer")}  # fmt: skip


# ---- which units


def test_each_service_maps_to_its_units_from_the_layout() -> None:
    assert logs.service_units("postgres", 15) == ("postgresql@15-main.service",)
    assert logs.service_units("electric", None) == ("electric.service",)
    assert logs.service_units("gateway", None) == ("postgressor-gateway.service",)
    assert logs.service_units("caddy", None) == ("caddy.service",)
    assert logs.service_units("backup", None) == ("pgbackrest-backup@*.service", "pgbackrest-full.timer",
                                                  "pgbackrest-diff.timer")  # fmt: skip
    with pytest.raises(ValueError, match="needs the PostgreSQL version"):
        logs.service_units("postgres", None)


def test_the_backup_timers_start_the_unit_the_logs_read() -> None:
    # One name for the backup service: the timer template and the logs glob both come from layout.
    from postgressor.box.deploys import backup

    text = (ROOT / "src/postgressor/box/templates/pgbackrest-backup.timer.j2").read_text()
    assert "Unit={{ unit }}.service" in text and "pgbackrest-backup" not in text
    assert backup.SERVICE == "pgbackrest-backup@.service"
    assert set(backup.TIMERS.values()) == {"pgbackrest-full.timer", "pgbackrest-diff.timer"}


def state_for(tmp_path: Path, pg_version: int | None = 15) -> Any:
    state = open_state(tmp_path / ".postgressor", "demo", "hetzner")
    state.pg_version = pg_version
    state.set_host(HOST)
    return state


def settings_with(tmp_path: Path, toml: str) -> Any:
    (tmp_path / "postgressor.toml").write_text(toml)
    return load_settings(tmp_path / "postgressor.toml")


SYNC = '[[sync.tables]]\nname = "items"\n'


def test_all_is_what_the_stack_runs(tmp_path: Path) -> None:
    state = state_for(tmp_path)
    assert list(logs.select("all", settings_with(tmp_path, SYNC), state).items()) == list(ALL_UNITS.items())
    assert list(logs.select("all", settings_with(tmp_path, ""), state)) == ["postgres", "backup"]
    assert list(logs.select("all", settings_with(tmp_path, "[backup]\nenabled = false\n"), state)) == ["postgres"]
    assert logs.select("gateway", settings_with(tmp_path, SYNC), state_for(tmp_path, None)) == {
        "gateway": ("postgressor-gateway.service",)}  # no PostgreSQL version needed for the gateway


@pytest.mark.parametrize(("service", "toml", "says"), [
    ("electric", "", "does not run electric: sync is off (no [[sync.tables]]"),
    ("gateway", "", "run 'postgressor deploy --stack demo'"),
    ("caddy", "[electric]\nenabled = false\n" + SYNC, "does not run caddy"),
    ("backup", "[backup]\nenabled = false\n", "takes no backups (backup.enabled = false"),
    ("nginx", "", "unknown service 'nginx'"),
])  # fmt: skip
def test_a_service_the_stack_does_not_run_is_a_usage_error(tmp_path: Path, service: str, toml: str,
                                                           says: str) -> None:  # fmt: skip
    with pytest.raises(UsageError, match=__import__("re").escape(says)):
        logs.select(service, settings_with(tmp_path, toml), state_for(tmp_path))


def test_postgres_without_a_recorded_version_says_to_deploy(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no PostgreSQL version recorded"):
        logs.select("all", settings_with(tmp_path, ""), state_for(tmp_path, None))


# ---- --since and --lines


@pytest.mark.parametrize(("value", "expected"), [
    ("1h", "-3600s"), ("30m", "-1800s"), ("2d", "-172800s"), ("90s", "-90s"), ("1w", "-604800s"), (" 5m ", "-300s"),
    ("2026-05-01T12:00:00Z", f"@{NOON}"), ("2026-05-01T14:00:00+02:00", f"@{NOON}"),
    ("2026-05-01 12:00:00", f"@{NOON}"), ("2026-05-01T12:00:00.999", f"@{NOON}"),
])  # fmt: skip
def test_since_values(value: str, expected: str) -> None:
    assert logs.since_argument(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "1 hour", "-1h", "1H", "1h30m", "", "1h; reboot", "$(reboot)",
                                   "2026-13-01", "1e3s", "0h"])
def test_bad_since_is_one_line_with_an_example(value: str) -> None:
    with pytest.raises(UsageError) as raised:
        logs.since_argument(value)
    message = str(raised.value)
    assert "\n" not in message and "--since" in message and "2026-05-01T12:00:00Z" in message and "1h" in message


@pytest.mark.parametrize("lines", [0, -5, logs.MAX_LINES + 1])
def test_lines_must_be_positive_and_bounded(lines: int) -> None:
    with pytest.raises(UsageError, match=r"--lines .* from 1 to 1000000 \(e\.g\. -n 200\)"):
        logs.check_lines(lines)


# ---- the command


def test_the_journalctl_command_as_data() -> None:
    argv = logs.journal_argv({"postgres": (PG,)}, 20)
    assert argv == ["journalctl", "--no-pager", "--quiet", "--all", "--output=json",
                    "--output-fields=MESSAGE,PRIORITY,UNIT,OBJECT_SYSTEMD_UNIT,COREDUMP_UNIT,_SYSTEMD_UNIT",
                    "--lines=20", f"--unit={PG}"]  # fmt: skip
    followed = logs.journal_argv(ALL_UNITS, 200, "-3600s", follow=True)
    assert followed[6:9] == ["--lines=200", "--since=-3600s", "--follow"]
    assert [w.removeprefix("--unit=") for w in followed if w.startswith("--unit=")] == [
        u for units in ALL_UNITS.values() for u in units]


@pytest.mark.parametrize("follow", [False, True])
def test_every_word_reaches_the_shell_quoted(follow: bool) -> None:
    hostile = {"x": ("a'; touch /tmp/owned; echo '", "$(reboot)", "`id`", "b\nc", "*")}
    argv = logs.journal_argv(hostile, 5, "@1", follow=follow)
    command = logs.remote_command(argv, follow)
    assert shlex.join(argv) in command
    first = command.split("exec 3<&0; ", 1)[-1].split(" & j=$!", 1)[0]
    assert shlex.split(first) == argv  # the shell sees exactly these words, nothing runs


def test_a_followed_journal_ends_with_the_session() -> None:
    command = logs.remote_command(["journalctl", "--follow"], follow=True)
    assert command.startswith("exec 3<&0; journalctl --follow & j=$!; ")
    assert "cat <&3" in command and "kill $j" in command and command.endswith("exit $rc")
    assert logs.remote_command(["journalctl"], follow=False) == "journalctl"


# ---- journal JSON as records


def test_an_entry_becomes_a_record() -> None:
    record = logs.parse_entry(GATEWAY, ALL_UNITS)
    noon = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert record == logs.LogRecord(noon, "gateway", "postgressor-gateway.service", 6,
                                    "gateway listening on 127.0.0.1:3001")  # fmt: skip
    assert record.as_dict() == {"time": "2026-05-01T12:00:00.123456Z", "service": "gateway",
                                "unit": "postgressor-gateway.service", "priority": 6,
                                "message": "gateway listening on 127.0.0.1:3001"}  # fmt: skip
    assert record.plain() == "2026-05-01T12:00:00Z gateway gateway listening on 127.0.0.1:3001"


def test_the_realtime_timestamp_keeps_every_microsecond() -> None:
    # 2**53 microseconds would round as a float; the conversion stays in integers.
    record = logs.parse_entry(entry("x", micros=999999), ALL_UNITS)
    assert record is not None and record.as_dict()["time"] == "2026-05-01T12:00:00.999999Z"
    record = logs.parse_entry(entry("x", micros=1), ALL_UNITS)
    assert record is not None and record.as_dict()["time"] == "2026-05-01T12:00:00.000001Z"


def test_systemds_own_messages_belong_to_the_unit_they_are_about() -> None:
    record = logs.parse_entry(STARTED, ALL_UNITS)
    assert record is not None and (record.service, record.unit) == ("postgres", PG)
    timer = logs.parse_entry(TIMER, ALL_UNITS)
    assert timer is not None and (timer.service, timer.unit) == ("backup", "pgbackrest-full.timer")
    run = logs.parse_entry(BACKUP_RUN, ALL_UNITS)
    assert run is not None and (run.service, run.priority) == ("backup", 4)
    other = logs.parse_entry(entry("x", unit="docker.service"), ALL_UNITS)
    assert other is not None and other.service == "docker"


@pytest.mark.parametrize(("message", "text"), [
    ([104, 105, 255, 33], "hi\ufffd!"),  # not UTF-8: an array of byte values
    ([27, 91, 51, 49, 109, 114, 101, 100], "\x1b[31mred"),  # control bytes are also sent as an array
    (["first", [115, 101, 99, 111, 110, 100]], "first\nsecond"),  # a field set twice: an array of values
    (None, ""),  # a value too large to print
    ("caf\u00e9 \U0001f418", "caf\u00e9 \U0001f418"),
])  # fmt: skip
def test_message_values_journalctl_emits(message: Any, text: str) -> None:
    record = logs.parse_entry(entry(message), ALL_UNITS)
    assert record is not None and record.message == text
    json.dumps(record.as_dict())  # always serialisable


def test_plain_lines_cannot_drive_the_terminal() -> None:
    record = logs.parse_entry(entry([27, 91, 50, 74, 111, 107]), ALL_UNITS)
    assert record is not None and record.plain().endswith(" gateway \\x1b[2Jok")
    multi = logs.parse_entry(entry("Traceback:\n  File x\tline 1"), ALL_UNITS)
    assert multi is not None and multi.plain().endswith("gateway Traceback:\n    File x\tline 1")


def test_missing_or_odd_fields_do_not_fail() -> None:
    record = logs.parse_entry(json.dumps({"MESSAGE": "bare"}), ALL_UNITS)
    assert record == logs.LogRecord(None, "", "", None, "bare")
    assert record.plain() == "-  bare" and record.as_dict()["time"] is None
    odd = logs.parse_entry(entry("x", priority="debug"), ALL_UNITS)
    assert odd is not None and odd.priority is None
    assert logs.parse_entry("", ALL_UNITS) is None


@pytest.mark.parametrize("line", ["-- No entries --", "[1, 2]", '{"MESSAGE": "cut'])
def test_a_line_that_is_not_an_entry_is_an_error(line: str) -> None:
    with pytest.raises(PostgressorError, match="not a journal entry"):
        logs.parse_entry(line, ALL_UNITS)


# ---- the CLI, with the SSH layer recorded


class FakeProvider:
    def ensure_running(self) -> HostRecord:
        return HOST


class Box:
    """Stands in for ``remote.ssh.stream``: records each command and answers with canned stdout lines; then an
    exit status and stderr, or (``interrupt``) a Ctrl-C while it is still streaming."""

    def __init__(self, lines: list[str], status: int = 0, stderr: str = "", interrupt: bool = False) -> None:
        self.lines, self.status, self.stderr, self.interrupt = lines, status, stderr, interrupt
        self.commands: list[str] = []

    def __call__(self, host: HostRecord, command: str, on_line: Callable[[str], None],
                 poll: float = 1.0) -> CommandResult:  # fmt: skip
        assert host == HOST
        self.commands.append(command)
        for line in self.lines:
            on_line(line)
        if self.interrupt:
            raise KeyboardInterrupt
        return CommandResult(self.status, "", self.stderr)

    def argv(self) -> list[str]:
        (command,) = self.commands
        return shlex.split(command.split("exec 3<&0; ", 1)[-1].split(" & j=$!", 1)[0])


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("CI", "POSTGRESSOR_STACK", "POSTGRESSOR_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "postgressor.toml").write_text(SYNC)
    state_for(tmp_path)
    monkeypatch.setattr(lifecycle, "get_provider", lambda settings, state, log: FakeProvider())
    return tmp_path


def wire(monkeypatch: pytest.MonkeyPatch, box: Box) -> Box:
    monkeypatch.setattr(logs, "stream", box)
    return box


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["--stack", "demo", *args])


def test_logs_postgres_prints_plain_lines(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = wire(monkeypatch, Box([STARTED, entry("LOG:  database system is ready", unit=PG)]))
    result = cli("logs", "postgres", "-n", "20")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["2026-05-01T12:00:00Z postgres Started PostgreSQL Cluster 15-main.",
                                          "2026-05-01T12:00:00Z postgres LOG:  database system is ready"]  # fmt: skip
    argv = box.argv()
    assert argv[0] == "journalctl" and "--lines=20" in argv and argv[-1] == f"--unit={PG}"
    assert "--follow" not in argv and not box.commands[0].startswith("exec")


def test_json_logs_all_since_an_hour_gives_one_object_per_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = wire(monkeypatch, Box([STARTED, GATEWAY, BACKUP_RUN, entry([104, 255])]))
    result = cli("--json", "logs", "all", "--since", "1h")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["service"] for r in records] == ["postgres", "gateway", "backup", "gateway"]  # as the box sent them
    assert all(set(r) == {"time", "service", "unit", "priority", "message"} for r in records)
    assert records[0] == {"time": "2026-05-01T12:00:00.123456Z", "service": "postgres", "unit": PG, "priority": 6,
                          "message": "Started PostgreSQL Cluster 15-main."}  # fmt: skip
    assert records[3]["message"] == "h\ufffd"
    argv = box.argv()
    assert "--since=-3600s" in argv and "--lines=200" in argv
    assert [w for w in argv if w.startswith("--unit=")] == [
        f"--unit={u}" for units in ALL_UNITS.values() for u in units]


def test_json_after_the_verb_and_no_entries(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wire(monkeypatch, Box([]))
    result = cli("logs", "caddy", "--json")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    result = cli("logs", "caddy", "--since", "2026-05-01T12:00:00Z")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.strip() == "no journal entries for caddy since 2026-05-01T12:00:00Z"


def test_follow_streams_and_ctrl_c_ends_it_with_exit_0(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = wire(monkeypatch, Box([GATEWAY], interrupt=True))
    result = cli("logs", "gateway", "-f")
    assert result.exit_code == 0, result.output
    assert result.stdout == "2026-05-01T12:00:00Z gateway gateway listening on 127.0.0.1:3001\n"
    assert result.stderr == "" and "Traceback" not in result.output
    assert "--follow" in box.argv() and box.commands[0].startswith("exec 3<&0; ")


def test_ctrl_c_on_a_finite_read_exits_130_quietly(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wire(monkeypatch, Box([GATEWAY], interrupt=True))
    result = cli("logs", "gateway")
    assert result.exit_code == 130 and result.stderr == ""


@pytest.mark.parametrize(("args", "says"), [
    (["logs", "--since", "yesterday"], "error: --since 'yesterday' is not a time; use a relative time like 1h"),
    (["logs", "--since", "1h;reboot"], "is not a time"),
    (["logs", "-n", "0"], "error: --lines 0 is out of range; give a whole number from 1 to 1000000 (e.g. -n 200)"),
    (["logs", "-n", "many"], "Invalid value for '--lines' / '-n'"),
    (["logs", "nginx"], "'nginx' is not one of"),
])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_never_reaches_the_box(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                args: list[str], says: str) -> None:  # fmt: skip
    box = wire(monkeypatch, Box([]))
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert box.commands == [] and "Traceback" not in result.output


def test_a_service_the_stack_does_not_run_exits_2(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "postgressor.toml").write_text("[backup]\nenabled = false\n")
    box = wire(monkeypatch, Box([]))
    for service, says in (("electric", "does not run electric: sync is off"), ("backup", "takes no backups")):
        result = cli("logs", service)
        assert result.exit_code == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert box.commands == []


def test_no_stack_is_exit_2(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["--stack", "other", "logs"])
    assert result.exit_code == 2 and "stack 'other' has no server yet" in result.stderr


def test_journalctl_failing_on_the_box_is_one_line_exit_1(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wire(monkeypatch, Box([], status=1, stderr="journalctl: unrecognized option '--output-fields'\nhint\x1b[0m\n"))
    result = cli("--json", "logs", "postgres")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: journalctl failed on the box: hint\\x1b[0m; 'postgressor status' shows "
                                     "whether the box is healthy")  # fmt: skip
    assert json.loads(result.stdout)["error"]["code"] == "failed"


def test_a_connection_lost_midway_says_so(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wire(monkeypatch, Box([GATEWAY], status=-1))
    result = cli("logs", "gateway", "-f")
    assert result.exit_code == 1 and result.stdout.count("\n") == 1
    assert result.stderr.strip() == ("error: the SSH connection to 203.0.113.7:22 was lost while reading the journal; "
                                     "run the command again")  # fmt: skip


def test_a_failure_after_entries_keeps_stdout_json_lines(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wire(monkeypatch, Box([GATEWAY, "garbage"]))
    result = cli("--json", "logs", "gateway")
    assert result.exit_code == 1 and "not a journal entry" in result.stderr
    assert [json.loads(line)["service"] for line in result.stdout.splitlines()] == ["gateway"]


# ---- a real Ctrl-C (SIGINT) while following


FOLLOWER = textwrap.dedent("""
    import sys, time
    from postgressor import lifecycle
    from postgressor.day2 import logs
    from postgressor.state import HostRecord

    LINE = sys.argv[1]  # the journal entry the box sends


    class Provider:
        def ensure_running(self):
            return HostRecord("203.0.113.7", 22, "root", "k", "ssh-ed25519 AAAA")

    def stream(host, command, on_line, poll=1.0):
        on_line(LINE)
        while True:  # a quiet journal: wait for the next entry
            time.sleep(0.05)

    lifecycle.get_provider = lambda settings, state, log: Provider()
    logs.stream = stream
    from postgressor.cli import main
    sys.argv = ["postgressor", "--stack", "demo", "logs", "gateway", "-f"]
    main()
""")


def test_sigint_ends_follow_cleanly(project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", FOLLOWER, GATEWAY], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed as it arrived, not at exit
        assert first == "2026-05-01T12:00:00Z gateway gateway listening on 127.0.0.1:3001\n"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err == ""
