"""Backup verbs: backup now|list|check|passphrase, and restore.

The work is in postgressor.day2.backups (verbs) and postgressor.checks.backups (reading the repository)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from postgressor import lifecycle as stacks
from postgressor.checks import backups as health
from postgressor.cli.common import confirm, console, emit_json, err_console, global_options, settings_for, stack_name
from postgressor.day2 import backups
from postgressor.errors import PostgressorError, UsageError
from postgressor.state import HostRecord, StackState, recorded_version

backup_app = typer.Typer(help="pgBackRest backups: take, list and check them.", no_args_is_help=True)


class BackupType(StrEnum):
    full = "full"
    diff = "diff"
    incr = "incr"


def _progress(ctx: typer.Context) -> backups.Log:
    """A progress line on stderr ("→ …", what the box said printed as text), none with --json."""
    quiet = global_options(ctx).json

    def log(message: str) -> None:
        if not quiet:
            err_console.print(f"[cyan]→[/] {escape(message)}", highlight=False)

    return log


def _connection(ctx: typer.Context) -> tuple[HostRecord, StackState]:
    settings = settings_for(ctx)
    if not settings.backup.enabled:
        raise UsageError("backups are disabled (backup.enabled = false in postgressor.toml); enable them and deploy")
    return stacks.connection(settings, stack_name(ctx), lambda message: None)


def _host(ctx: typer.Context) -> HostRecord:
    return _connection(ctx)[0]


def _size(value: Any) -> str:
    return f"{float(value) / 1024 / 1024:.1f} MB" if value is not None else "?"


@backup_app.command("now")
def now(
    ctx: typer.Context,
    kind: BackupType = typer.Option(BackupType.full, "--type", "-t", help="full, diff or incr."),
) -> None:
    """Take a backup now (after a scheduled backup that is running: pgBackRest runs one at a time)."""
    host = _host(ctx)
    log = _progress(ctx)
    log(f"{kind.value} backup running on {host.address}")
    result = backups.backup_now(host, kind.value, log)
    if global_options(ctx).json:
        emit_json({"ok": True, **result})
        return
    b = result["backup"]
    console.print(f"backup [bold]{b['label']}[/] ({b['type']}) finished {b['stop']}: {_size(b['size'])} "
                  f"of data, {_size(b['repo_size'])} in the repository; {result['backups']} backups kept")  # fmt: skip


@backup_app.command("list")
def list_(ctx: typer.Context) -> None:
    """The backups in the repository and the WAL archived after them."""
    parsed = health.info(_host(ctx))
    problem = health.info_problem(parsed)
    if global_options(ctx).json:
        emit_json({"ok": not problem, "error": problem or None, **parsed})
    else:
        table = Table("label", "type", "started", "finished", "size", "in repo", box=None)
        for b in parsed["backups"]:
            table.add_row(b["label"], b["type"], b["start"], b["stop"], _size(b["size"]), _size(b["repo_size"]))
        console.print(table)
        archive = parsed["archive"]
        if archive:
            console.print(f"WAL archived: {archive['min']} … {archive['max']} (cipher {parsed['cipher']})")
        if parsed["backups"]:
            console.print(f"restorable from {parsed['backups'][0]['stop']} to the newest archived WAL")
    if problem and global_options(ctx).json:
        raise typer.Exit(1)
    if problem:
        raise PostgressorError(problem)


@backup_app.command("check")
def check(ctx: typer.Context) -> None:
    """Check the repository end to end: archive a WAL segment, read the backups, check the timers."""
    result = backups.check(_host(ctx))
    if global_options(ctx).json:
        emit_json(result)
        return
    render_status(result)
    for note in result.get("notes", []):
        console.print(f"note: {note}", markup=False)


@backup_app.command("passphrase")
def passphrase(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required without a terminal)."),
    check: bool = typer.Option(False, "--check", help="Only say whether the passphrase you hold "
                               "(backup.cipher_pass) is the box's; prints neither."),
) -> None:
    """Print the repository's encryption passphrase and how to hold it yourself (an S3 repository needs that).

    --check compares the one you hold with the box's by digest: exit 0 when they match, 1 when not."""
    held = settings_for(ctx).backup.cipher_pass
    quiet = global_options(ctx).json
    if check:
        if held is None:
            raise UsageError("backup.cipher_pass is not set here; set POSTGRESSOR_BACKUP__CIPHER_PASS (or "
                             "backup.cipher_pass_file) to the passphrase you hold, then check again")  # fmt: skip
        found = backups.custody_on_box(_host(ctx), held.get_secret_value())
        if quiet:
            emit_json({"ok": found == backups.YOURS, "custody": found})
        else:
            console.print(backups.CUSTODY_STEPS[found], markup=False)
        if found != backups.YOURS:
            raise typer.Exit(1)
        return
    confirm("Print the backup encryption passphrase on this terminal?", yes)
    secret = backups.passphrase(_host(ctx))
    found = backups.custody(secret, held.get_secret_value() if held is not None else None)
    if quiet:
        emit_json({"passphrase": secret, "custody": found, "next": backups.CUSTODY_STEPS[found]})
        return
    console.print(secret, markup=False)  # stdout holds the passphrase alone; the guidance goes to stderr
    err_console.print(backups.CUSTODY_STEPS[found], markup=False)


def restore(
    ctx: typer.Context,
    to_time: str | None = typer.Option(None, "--to-time", help="Point in time, ISO 8601 (no zone = UTC)."),
    latest: bool = typer.Option(False, "--latest", help="Restore the newest state in the archive."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required without a terminal)."),
) -> None:
    """Replace the database with a backup plus archived WAL (stops Electric, the gateway and PostgreSQL).

    With --latest it exits 1 after the restore when recovery stopped at a gap in the archive, saying where."""
    if (to_time is None) == (not latest):
        raise UsageError("pass exactly one of --to-time TIME or --latest")
    target = backups.parse_target(to_time) if to_time is not None else None
    name = stack_name(ctx)
    when = backups.pg_time(target) if target else "the latest archived state"
    confirm(f"Restore stack '{name}' to {when}, losing everything written after it?", yes)
    host, state = _connection(ctx)
    version = recorded_version(state)
    quiet = global_options(ctx).json
    report = backups.restore(host, version, target, _progress(ctx), settings_for(ctx).electric.health_timeout, state)
    short = report.get("short_of_archive") or ""
    if quiet:
        emit_json({"ok": not short, **({"error": short} if short else {}), **report})
    else:
        console.print(f"restored stack '{name}' to {report['target']} from backup {report['backup_set']}; "
                      f"started {', '.join(report['started'])}")  # fmt: skip
        for note in report["notes"]:
            console.print(f"note: {note}", markup=False)
    if short:
        raise PostgressorError(short)


def render_status(report: dict[str, Any]) -> None:
    """The backup part of a status report (also used by `status` when asked to render backups)."""
    last = report.get("last_backup")
    if last:
        console.print(f"last backup {last['label']} ({last['type']}) finished {last['stop']}")
    else:
        console.print("no backup yet")
    archiver = report.get("archiver") or {}
    if archiver:
        console.print(
            f"WAL archiving: last {archiver.get('last_archived_wal') or '-'} at "
            f"{archiver.get('last_archived_time') or 'never'} ({archiver.get('seconds_since_archived')} s ago), "
            f"{archiver.get('ready_segments')} waiting, {archiver.get('failed_count')} failures"
        )
