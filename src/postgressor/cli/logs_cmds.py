"""``postgressor logs``: parse the options, render the journal entries postgressor.day2.logs reads."""

from __future__ import annotations

import os
import sys
from enum import StrEnum

import typer

from postgressor import lifecycle as stacks
from postgressor.cli.common import emit_json_line, global_options, say, settings_for, stack_name
from postgressor.day2 import logs as journal
from postgressor.state import require_state


class LogService(StrEnum):
    postgres = "postgres"
    electric = "electric"
    gateway = "gateway"
    caddy = "caddy"
    backup = "backup"
    all = "all"


def logs(
    ctx: typer.Context,
    service: LogService = typer.Argument(LogService.all, help="Whose log: postgres, electric, gateway, caddy, "
                                         "backup (the scheduled backup runs), or all the stack runs."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new entries until Ctrl-C "
                                "(which ends it with exit 0)."),
    since: str | None = typer.Option(None, "--since", help="Only entries newer than this: 1h, 30m, 2d, 1w, or an "
                                     "ISO 8601 time such as 2026-05-01T12:00:00Z (no zone = UTC)."),
    lines: int = typer.Option(journal.DEFAULT_LINES, "--lines", "-n", help="Show at most this many of the newest "
                              "entries (1 to 1000000)."),
) -> None:
    """The box's systemd journal for the stack's services, read over SSH with the pinned host key.

    Each entry is one line: its time (UTC), the service and the message; with --json one object per line:
    {"time", "service", "unit", "priority", "message"} (time ISO 8601 UTC to the microsecond, priority 0-7 as
    syslog counts it, 7 debug). PostgreSQL's journal holds its service's starts, stops and failures; the
    server's own log is /var/log/postgresql/ on the box (postgressor ssh -- tail -n 50 /var/log/postgresql/*.log).
    """
    name = stack_name(ctx)
    journal.check_lines(lines)
    since_arg = journal.since_argument(since) if since is not None else None
    settings = settings_for(ctx)
    units = journal.select(service.value, settings, require_state(settings.state_dir, name))
    as_json = global_options(ctx).json
    host, _ = stacks.connection(settings, name, lambda message: None)  # a stopped local VM is booted first
    printed = 0

    def show(record: journal.LogRecord) -> None:
        nonlocal printed
        printed += 1
        if as_json:
            emit_json_line(record.as_dict())
        else:
            sys.stdout.write(record.plain() + "\n")
            sys.stdout.flush()  # each entry as it arrives, in a pipe too

    try:
        journal.read_journal(host, units, lines, since_arg, follow, show)
    except KeyboardInterrupt:
        # Ctrl-C is how --follow ends; reading a finite journal was cut short.
        raise typer.Exit(0 if follow else 130) from None
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        _silence_stdout()
        raise typer.Exit(0) from None
    if not printed and not as_json:
        say(f"no journal entries for {', '.join(units)}" + (f" since {since}" if since else ""))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush into a closed pipe raises nothing."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
