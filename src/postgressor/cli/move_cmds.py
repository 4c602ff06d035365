"""`postgressor move start|status|cutover|abort`: live tables from a Supabase database to the box.

The work is in postgressor.migrations.move. The source URL comes from POSTGRESSOR_MOVE_FROM only (argv is
public); the target is the stack's box through its SSH tunnel (as its ``postgres`` role, through a one-time password:
see remote.database.stack_target), or POSTGRESSOR_DATABASE_URL. What ``start``
created is recorded in the stack's state (names and tables, never the URL).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import typer
from rich.markup import escape

from postgressor.cli.common import console, emit_json, err_console, global_options, settings_for, stack_name
from postgressor.config import Settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.masking import mask_url
from postgressor.migrations import move
from postgressor.remote import database as dbconnect
from postgressor.state import StackState, load_state, open_state

MOVE_FROM = "POSTGRESSOR_MOVE_FROM"
RECORD = "move"  # the state resource: id = subscription, details = publication, tables, source (user@host/db)

move_app = typer.Typer(help="Move live tables from a Supabase database to the box (logical replication).",
                       no_args_is_help=True)  # fmt: skip
DATABASE_URL = typer.Option(None, "--database-url", envvar="POSTGRESSOR_DATABASE_URL", show_envvar=True,
                            help="Target this database instead of the stack's box (prefer the env var).")  # fmt: skip


def source_url() -> str:
    """The source URL from the environment; UsageError when unset."""
    url = os.environ.get(MOVE_FROM, "").strip()
    if not url:
        raise UsageError(f"set {MOVE_FROM} to the Supabase database's direct connection URL (dashboard: Connect, "
                         "Direct connection; host db.PROJECT.supabase.co, port 5432, user postgres; not the "
                         "pooler)")  # fmt: skip
    dbconnect.parse_url(url)
    return url


def _target(settings: Settings, stack: str, database_url: str | None) -> contextlib.AbstractContextManager[
        dbconnect.Target]:  # fmt: skip
    return dbconnect.database_target(settings, stack, database_url, superuser=True)  # CREATE SUBSCRIPTION needs it


def _state(settings: Settings, stack: str) -> StackState:
    return load_state(settings.state_dir, stack) or open_state(settings.state_dir, stack, settings.provider)


def _recorded(state: StackState) -> tuple[list[move.Table], move.Names]:
    record = state.find(RECORD)
    if record is None:
        raise UsageError(f"no move recorded for stack '{state.stack}'; run 'postgressor move start' first")
    tables = [move.Table(t["schema"], t["name"]) for t in record.details["tables"]]
    return tables, move.Names(record.details["publication"], record.id)


def _say(ctx: typer.Context) -> Any:
    quiet = global_options(ctx).json
    return lambda message: None if quiet else err_console.print(f"[cyan]→[/] {escape(message)}", highlight=False)


def _forget_if_empty(state: StackState) -> None:
    """A state that only recorded the move (a ``--database-url`` target, no server) goes with it, so it never
    pins the stack to a provider."""
    if state.host is None and not state.resources:
        state.delete()


@contextlib.contextmanager
def _database_errors(what: str) -> Iterator[None]:
    """A database refusal (a privilege, a lock timeout) as one line naming the step, not an internal error."""
    try:
        yield
    except psycopg.Error as err:
        reason = mask_url(" ".join(str(err).split()))
        raise PostgressorError(f"{what} failed: {reason}; connect as the role that started the move (the box's "
                               "postgres through --stack, or a superuser URL)") from None  # fmt: skip


@move_app.command("start")
def start(
    ctx: typer.Context,
    tables: str = typer.Option(..., "--tables", "-t", help="Tables to move: NAME or SCHEMA.NAME, comma-separated."),
    database_url: str | None = DATABASE_URL,
) -> None:
    """Check the source can publish and the columns match, then publish there and subscribe on the box.

    The source is the URL in POSTGRESSOR_MOVE_FROM (never a flag: argv is public)."""
    settings, stack = settings_for(ctx), stack_name(ctx)
    url, wanted = source_url(), move.parse_tables(tables)
    state = _state(settings, stack)
    if state.find(RECORD) is not None:
        raise UsageError(f"a move is recorded for stack '{stack}'; 'postgressor move status', or 'move abort' first")
    with _target(settings, stack, database_url) as target, _database_errors("move start"):
        created = move.start(url, target.conn, wanted, log=_say(ctx))
    state.add(RECORD, created["subscription"], publication=created["publication"], source=created["source"],
              tables=[{"schema": t.schema, "name": t.name} for t in wanted])  # fmt: skip
    if global_options(ctx).json:
        emit_json({"ok": True, **created})
        return
    console.print(f"moving {', '.join(created['tables'])} from {created['source']} to {target.label}: the copy "
                  "runs, then changes stream; follow it with 'postgressor move status'", markup=False)  # fmt: skip


@move_app.command("status")
def status(ctx: typer.Context, database_url: str | None = DATABASE_URL) -> None:
    """Per table the copy state and rows on the box; the lag in bytes and seconds; errors."""
    settings, stack = settings_for(ctx), stack_name(ctx)
    tables, names = _recorded(_state(settings, stack))
    with _target(settings, stack, database_url) as target, _database_errors("move status"):
        report = move.status(source_url(), target.conn, tables, names)
    if global_options(ctx).json:
        emit_json({"ok": not report.errors, **report.as_dict()})
    else:
        for t in report.tables:
            console.print(f"{t.table}: {t.state}, {t.rows} rows on the box", markup=False)
        lag = "unknown (no slot)" if report.lag_bytes is None else f"{report.lag_bytes} bytes"
        console.print(f"lag: {lag}, {report.lag_seconds:.1f} s", markup=False)
        for error in report.errors:
            err_console.print(f"problem: {error}", markup=False)
    if report.errors:
        raise typer.Exit(1)


@move_app.command("cutover")
def cutover(
    ctx: typer.Context,
    wait: float = typer.Option(120, "--wait", help="Seconds to wait for the copy to finish and the lag to reach 0."),
    database_url: str | None = DATABASE_URL,
) -> None:
    """Block writes on the source tables, let the box catch up, copy sequences, verify, and switch."""
    settings, stack = settings_for(ctx), stack_name(ctx)
    state = _state(settings, stack)
    tables, names = _recorded(state)
    with _target(settings, stack, database_url) as target, _database_errors("move cutover"):
        result = move.cutover(source_url(), target.conn, tables, names, catch_up_seconds=wait, log=_say(ctx))
        label = target.label
    state.remove(RECORD)
    _forget_if_empty(state)
    if global_options(ctx).json:
        emit_json({"ok": True, **result.as_dict()})
        return
    for check in result.tables:
        console.print(f"{check.table}: {check.rows} rows, checksum {check.checksum} equal on both sides", markup=False)
    console.print(f"writes on the source tables were blocked for {result.write_pause_seconds * 1000:.0f} ms",
                  markup=False)  # fmt: skip
    console.print(f"the box ({label}) now owns {', '.join(c.table for c in result.tables)}; change the app:",
                  markup=False)  # fmt: skip
    console.print("  - write these tables to the box (its Electric/gateway or database URL), not to Supabase",
                  markup=False)  # fmt: skip
    console.print("  - drop or revoke writes on them in Supabase; they are no longer replicated", markup=False)
    console.print(f"  - ids continue on the box above the source's (sequences set: {len(result.sequences)})",
                  markup=False)  # fmt: skip


@move_app.command("abort")
def abort(ctx: typer.Context, database_url: str | None = DATABASE_URL) -> None:
    """Drop what 'move start' created on both sides (subscription, its slot, publication); safe to repeat."""
    settings, stack = settings_for(ctx), stack_name(ctx)
    state = _state(settings, stack)
    names = _recorded(state)[1] if state.find(RECORD) is not None else move.Names()
    with _target(settings, stack, database_url) as target, _database_errors("move abort"):
        dropped = move.abort(source_url(), target.conn, names)
    if state.find(RECORD) is not None:
        state.remove(RECORD)
    _forget_if_empty(state)
    if global_options(ctx).json:
        emit_json({"ok": True, "dropped": dropped})
        return
    console.print(f"dropped {', '.join(dropped)}" if dropped else "nothing to drop", markup=False)
