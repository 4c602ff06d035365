"""`postgressor migrate` and `postgressor schema export`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from postgressor import dbconnect
from postgressor.cli.common import confirm, console, emit_json, err_console, global_options, settings_for, stack_name
from postgressor.config import MigrationsConfig, Settings
from postgressor.migrations import runner
from postgressor.migrations.policies import TablePolicies
from postgressor.schema_export import export_schema

schema_app = typer.Typer(help="Work with database schemas.", no_args_is_help=True)


@contextlib.contextmanager
def _target(settings: Settings, stack: str, database_url: str | None) -> Iterator[dbconnect.Target]:
    if database_url:
        with dbconnect.url_target(database_url) as target:
            yield target
    else:
        with dbconnect.stack_target(settings, stack) as target:
            yield target


def migrate(
    ctx: typer.Context,
    database_url: str | None = typer.Option(
        None, "--database-url", envvar="POSTGRESSOR_DATABASE_URL", show_envvar=True,
        help="Migrate this database instead of the stack's box (prefer the env var: argv is public).",
    ),
    directory: Path | None = typer.Option(None, "--dir", help="Migrations directory (default: [migrations])."),
    stack: str | None = typer.Option(None, "--stack", "-s", help="Stack whose box to migrate."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would run; change nothing."),
) -> None:
    """Apply built-in and project migrations, then row level security for [[sync.tables]]."""
    settings = settings_for(ctx)
    folder = directory or settings.migrations.directory
    required = directory is not None or folder != MigrationsConfig().directory
    migrations = runner.all_migrations(folder, required)
    as_json = global_options(ctx).json
    with _target(settings, stack_name(ctx, stack), database_url) as target:
        plan = runner.plan(target.conn, migrations, settings.sync.tables)
        if dry_run or not plan.has_work:
            _show_plan(plan, target.label, dry_run, as_json)
            return
        confirm(f"Apply {len(plan.pending)} migration(s) and row level security to {target.label}?", yes)
        result = runner.run(target.conn, migrations, settings.sync.tables)
    if as_json:
        emit_json({"ok": True, "target": target.label, **result.as_dict()})
        return
    for applied in result.applied:
        console.print(f"applied {applied.name} ({applied.seconds:.2f} s)", markup=False)
    _show_tables(result.tables, done=True)
    count = len(result.applied)
    console.print(f"[green]{target.label} is up to date[/]: applied {count} migration{'s' if count != 1 else ''} now, "
                  f"{result.already} were applied before")


def _show_plan(plan: runner.Plan, label: str, dry_run: bool, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, "target": label, "dry_run": dry_run, **plan.as_dict()})
        return
    if not plan.has_work:
        console.print(f"[green]{label} is up to date[/] ({len(plan.applied)} migrations applied, "
                      "policies unchanged)")
    else:
        console.print(f"would apply to {label}:", markup=False)
        for m in plan.pending:
            console.print(f"  migration {m.name}", markup=False)
        _show_tables(plan.tables, done=False)
    for name in plan.vanished:
        console.print(f"note: {name} was applied but its file is gone (left as is)", markup=False)


def _show_tables(tables: list[TablePolicies], done: bool) -> None:
    for t in tables:
        if t.missing:
            console.print(f"  {t.table}: row level security once a migration creates it", markup=False)
            continue
        steps = [s for s, wanted in (("enable RLS", t.enable_rls), ("force RLS", t.force_rls)) if wanted]
        steps += [f"{c.action} {c.policy}" + (f" ({c.reason})" if c.reason else "")
                  for c in t.changes if c.action != "unchanged"]  # fmt: skip
        if steps:
            verb = "" if done else "would "
            console.print(f"  {t.table}: {verb}{', '.join(steps)}", markup=False)


@schema_app.command("export")
def export(
    ctx: typer.Context,
    source: str = typer.Option(
        ..., "--from", envvar="POSTGRESSOR_EXPORT_FROM", show_envvar=True,
        help="URL of the dev database to dump (prefer the env var: argv is public).",
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here (default: stdout)."),
    pg_dump: str | None = typer.Option(None, "--pg-dump", help="pg_dump to use (default: newest that fits)."),
) -> None:
    """Dump a dev database's schema so it applies to vanilla PostgreSQL (e.g. migrations/0001_initial.sql)."""
    result = export_schema(source, pg_dump)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.sql)
    else:
        sys.stdout.write(result.sql)
        sys.stdout.flush()
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(result.removed.items())) or "nothing"
    if global_options(ctx).json and output is not None:
        emit_json({"ok": True, "output": str(output), "schemas": result.schemas, "removed": result.removed,
                   "extensions": result.extensions})
        return
    report = console if output is not None else err_console
    report.print(f"exported schemas {', '.join(result.schemas)}" + (f" to {output}" if output else "")
                 + f"; removed: {summary}", markup=False)  # fmt: skip
    if result.extensions:
        report.print(f"note: the source uses extensions {', '.join(result.extensions)}; add them to "
                     "[postgres] extensions", markup=False)
