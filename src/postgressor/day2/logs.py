"""``postgressor logs``: the box's systemd journal for the stack's services, as data.

The journalctl command is built here as a list of words (joined with ``shlex``, so no value reaches the box's
shell unquoted) and each entry it prints with ``-o json`` becomes a ``LogRecord``; the CLI only renders them.
Unit names come from ``box.layout``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from postgressor.box.layout import (
    CADDY_UNIT,
    ELECTRIC_UNIT,
    GATEWAY_UNIT,
    SCHEDULED_BACKUP_TIMERS,
    backup_unit,
    postgres_unit,
)
from postgressor.config import Settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.remote.ssh import stream
from postgressor.state import HostRecord, StackState, recorded_version

SERVICES = ("postgres", "electric", "gateway", "caddy", "backup")  # what the user names; "all" is every one run
SYNC_SERVICES = ("electric", "gateway", "caddy")
DEFAULT_LINES = 200
MAX_LINES = 1_000_000
# Where journalctl -u finds a unit's entries: its own processes, systemd's messages about it, its core dumps.
UNIT_FIELDS = ("UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT", "_SYSTEMD_UNIT")
JOURNAL_FIELDS = ("MESSAGE", "PRIORITY", *UNIT_FIELDS)  # __REALTIME_TIMESTAMP is always printed
RELATIVE = re.compile(r"(\d{1,9})(s|m|h|d|w)")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_HELP = "use a relative time like 1h, 30m or 2d, or an ISO 8601 time like 2026-05-01T12:00:00Z"

Units = Mapping[str, tuple[str, ...]]  # service name -> its systemd unit names (globs allowed)


def service_units(service: str, pg_version: int | None) -> tuple[str, ...]:
    """The systemd units of one service, with their suffix; ``pg_version`` is needed for ``postgres`` only.

    ``backup`` is every scheduled backup run (each instance of ``layout.BACKUP_UNIT``, a glob) and the timers that
    start them. Raises ValueError for an unknown service.
    """
    if service == "postgres":
        if pg_version is None:
            raise ValueError("the postgres unit needs the PostgreSQL version")
        return (f"{postgres_unit(pg_version)}.service",)
    if service == "backup":
        return (f"{backup_unit()}.service", *SCHEDULED_BACKUP_TIMERS.values())
    named = {"electric": ELECTRIC_UNIT, "gateway": GATEWAY_UNIT, "caddy": CADDY_UNIT}
    if service not in named:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return (f"{named[service]}.service",)


def select(service: str, settings: Settings, state: StackState) -> dict[str, tuple[str, ...]]:
    """The units to read for ``service`` (one of SERVICES or ``"all"``), by service name.

    ``all`` is what the stack's configuration runs: PostgreSQL, the backups when enabled, Electric, the gateway
    and Caddy when sync is on (a unit that never ran on the box just has no entries). Naming a service the
    stack does not run raises UsageError saying how to enable it; so does a stack with no PostgreSQL version
    recorded when ``postgres`` is among them.
    """
    sync = settings.sync_enabled()
    runs = {"postgres": True, "backup": settings.backup.enabled, **dict.fromkeys(SYNC_SERVICES, sync)}
    if service != "all" and not runs.get(service, False):
        if service not in runs:
            raise UsageError(f"unknown service '{service}'; use one of {', '.join(SERVICES)} or all")
        if service == "backup":
            raise UsageError(f"stack '{state.stack}' takes no backups (backup.enabled = false in postgressor.toml); "
                             f"set it to true and run 'postgressor deploy --stack {state.stack}'")  # fmt: skip
        raise UsageError(f"stack '{state.stack}' does not run {service}: sync is off (no [[sync.tables]] in "
                         "postgressor.toml); add a table to sync and run "
                         f"'postgressor deploy --stack {state.stack}'")  # fmt: skip
    wanted = [name for name in SERVICES if runs[name]] if service == "all" else [service]
    version = recorded_version(state) if "postgres" in wanted else None
    return {name: service_units(name, version) for name in wanted}


def since_argument(value: str) -> str:
    """journalctl's ``--since`` for ``value``: a relative time (``90s``, ``30m``, ``1h``, ``2d``, ``1w``) becomes
    ``-<seconds>s`` (counted back on the box's clock); an ISO 8601 time (no zone = UTC) becomes ``@<epoch seconds>``.
    Raises UsageError naming the value and an example."""
    text = value.strip()
    relative = RELATIVE.fullmatch(text)
    if relative:
        seconds = int(relative.group(1)) * SECONDS[relative.group(2)]
        if seconds == 0:
            raise UsageError(f"--since '{value}' reaches back no time at all; {SINCE_HELP}")
        return f"-{seconds}s"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r} is not a time; {SINCE_HELP}") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return f"@{int(moment.timestamp())}"


def check_lines(lines: int) -> int:
    """``lines`` if it is 1..MAX_LINES, else UsageError."""
    if not 1 <= lines <= MAX_LINES:
        raise UsageError(f"--lines {lines} is out of range; give a whole number from 1 to {MAX_LINES} (e.g. -n 200)")
    return lines


def journal_argv(units: Units, lines: int, since: str | None = None, follow: bool = False) -> list[str]:
    """The journalctl command as words: the last ``lines`` entries of ``units`` (newer than ``since``, a
    ``since_argument`` result), one JSON object per line, then new ones as they come when ``follow``."""
    argv = ["journalctl", "--no-pager", "--quiet", "--all", "--output=json",
            f"--output-fields={','.join(JOURNAL_FIELDS)}", f"--lines={check_lines(lines)}"]  # fmt: skip
    if since is not None:
        argv.append(f"--since={since}")
    if follow:
        argv.append("--follow")
    argv += [f"--unit={unit}" for names in units.values() for unit in names]
    return argv


def remote_command(argv: list[str], follow: bool) -> str:
    """``argv`` as one shell command line, every word quoted.

    A followed journal never ends by itself, so it runs beside a watcher of the session's stdin: when the
    session ends (Ctrl-C here closes it), the watcher stops journalctl and nothing is left running on the box.
    The command's exit status is journalctl's.
    """
    command = shlex.join(argv)
    if not follow:
        return command
    return (
        f"exec 3<&0; {command} & j=$!; "  # a background job's stdin is /dev/null: the watcher reads fd 3
        "(cat <&3 >/dev/null 2>&1; kill $j 2>/dev/null) >/dev/null 2>&1 & w=$!; exec 3<&-; "
        "wait $j; rc=$?; { kill $w; wait $w; } 2>/dev/null; exit $rc"  # no "Terminated" notice on stderr
    )


@dataclass(frozen=True)
class LogRecord:
    """One journal entry: ``time`` (UTC, None if the entry has none), the ``service`` it belongs to (as the
    user names it), its systemd ``unit``, the syslog ``priority`` (0 emerg .. 7 debug, None if unset) and the
    ``message`` text."""

    time: datetime | None
    service: str
    unit: str
    priority: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        """``{"time": "2026-05-01T12:00:00.123456Z" | None, "service", "unit", "priority", "message"}``."""
        when = self.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if self.time else None
        return {"time": when, "service": self.service, "unit": self.unit, "priority": self.priority,
                "message": self.message}  # fmt: skip

    def plain(self) -> str:
        """``<time to the second, UTC> <service> <message>``; control characters shown escaped, lines after
        the first of a multi-line message indented."""
        when = self.time.strftime("%Y-%m-%dT%H:%M:%SZ") if self.time else "-"
        text = "\n  ".join(_printable(line) for line in self.message.split("\n"))
        return f"{when} {self.service} {text}"


def _printable(text: str) -> str:
    """Control characters (an escape sequence in a log line must not drive the terminal) as ``\\xNN``."""
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in text)


def field_text(value: Any) -> str:
    """A journal field as journalctl's JSON gives it, as text: a string; an array of byte values (a value
    that is not UTF-8 or holds control bytes) decoded with replacement characters; an array of such values
    (a field set more than once) joined by newlines; null (too large to show) as ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            return bytes(value).decode("utf-8", errors="replace")
        return "\n".join(field_text(v) for v in value)
    return str(value)


def _time(entry: Mapping[str, Any]) -> datetime | None:
    raw = field_text(entry.get("__REALTIME_TIMESTAMP")).strip()
    if not raw.isdigit():
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(raw))  # exact: no float seconds


def _priority(entry: Mapping[str, Any]) -> int | None:
    raw = field_text(entry.get("PRIORITY")).strip()
    return int(raw) if raw.isdigit() and int(raw) <= 7 else None


def _service_of(unit: str, units: Units) -> str:
    for name, patterns in units.items():
        if any(fnmatch.fnmatchcase(unit, pattern) for pattern in patterns):
            return name
    return unit.removesuffix(".service")


def parse_entry(line: str, units: Units) -> LogRecord | None:
    """One line of ``journalctl -o json`` as a LogRecord (None for a blank line); the service is the one in
    ``units`` whose unit matches. Raises PostgressorError for a line that is not a JSON object."""
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        raise PostgressorError(f"journalctl on the box printed something that is not a journal entry: "
                               f"{_printable(line[:200])!r}")  # fmt: skip
    unit = next((text for text in (field_text(entry.get(f)) for f in UNIT_FIELDS) if text), "")
    return LogRecord(_time(entry), _service_of(unit, units), unit, _priority(entry),
                     field_text(entry.get("MESSAGE")))  # fmt: skip


def read_journal(host: HostRecord, units: Units, lines: int, since: str | None, follow: bool,
                 on_record: Callable[[LogRecord], None]) -> None:  # fmt: skip
    """Read the box's journal for ``units`` over SSH (the pinned host key), calling ``on_record`` for each
    entry as it arrives; with ``follow`` until interrupted (KeyboardInterrupt propagates, the session closed).

    ``since`` is a ``since_argument`` result. Raises PostgressorError when journalctl fails on the box
    (naming its last error line), and as ``remote.ssh.connect`` when the box cannot be reached.
    """
    argv = journal_argv(units, lines, since, follow)

    def on_line(line: str) -> None:
        record = parse_entry(line, units)
        if record is not None:
            on_record(record)

    result = stream(host, remote_command(argv, follow), on_line)
    if result.exit_status == -1:  # paramiko's value when the session closed without an exit status
        raise PostgressorError(f"the SSH connection to {host.address}:{host.port} was lost while reading the journal; "
                               "run the command again")  # fmt: skip
    if not result.ok:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.exit_status}"])[-1]
        raise PostgressorError(f"journalctl failed on the box: {_printable(last)}; "
                               "'postgressor status' shows whether the box is healthy")  # fmt: skip
