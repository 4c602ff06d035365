"""`postgressor migrate` and `postgressor schema export`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from postgressor.cli.common import confirm, console, emit_json, err_console, global_options, settings_for, stack_name
from postgressor.config import MigrationsConfig, Settings
from postgressor.errors import PostgressorError
from postgressor.migrations import runner, verify
from postgressor.migrations.policies import TablePolicies
from postgressor.migrations.schema_export import Export, export_schema, unpackaged
from postgressor.remote import database as dbconnect

schema_app = typer.Typer(help="Work with database schemas.", no_args_is_help=True)


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
    with dbconnect.database_target(settings, stack_name(ctx, stack), database_url) as target:
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
    verify_it: bool | None = typer.Option(
        None, "--verify/--no-verify",
        help="Apply the export, then the project's migrations, to a throwaway local cluster first "
             "(default: when a local PostgreSQL server is installed).",
    ),
) -> None:
    """Dump a dev database's schema so it applies to vanilla PostgreSQL (e.g. migrations/0001_initial.sql)."""
    settings = settings_for(ctx)
    as_json = global_options(ctx).json
    report = console if output is not None else err_console
    result = export_schema(source, pg_dump)
    checked = _verify_export(settings, result, output, verify_it, report, as_json)
    if checked is not None and not checked.ok:
        rejected = _rejected_path(output)
        if rejected is not None:
            rejected.parent.mkdir(parents=True, exist_ok=True)
            rejected.write_text(result.sql)
        where = f"the export is in {rejected} (line numbers refer to it)" if rejected else "nothing was written"
        raise PostgressorError(
            f"the export does not apply to vanilla PostgreSQL ({len(checked.failures)} failing statement(s) "
            f"above); {where}; fix the dev schema or edit the export, then verify again"
        )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.sql)
    else:
        sys.stdout.write(result.sql)
        sys.stdout.flush()
    if as_json and output is not None:
        emit_json({"ok": True, "output": str(output), "schemas": result.schemas, "removed": result.removed,
                   "rewritten": result.rewritten, "extensions": result.extensions,
                   "verified": None if checked is None else checked.server})  # fmt: skip
        return
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(result.removed.items())) or "nothing"
    changed = ", ".join(f"{n} {reason}" for reason, n in sorted(result.rewritten.items()))
    report.print(f"exported schemas {', '.join(result.schemas)}" + (f" to {output}" if output else "")
                 + f"; removed: {summary}" + (f"; rewritten: {changed}" if changed else ""),
                 markup=False)  # fmt: skip
    if result.extensions:
        report.print(f"note: the schema needs the extensions {', '.join(result.extensions)}; list them in "
                     "[postgres] extensions so the box installs them", markup=False)  # fmt: skip
    missing = unpackaged(result.extensions)
    if missing:
        report.print(f"note: postgressor cannot install {', '.join(missing)} on a box (no package): replace "
                     "what uses them before you migrate", markup=False)  # fmt: skip


def _rejected_path(output: Path | None) -> Path | None:
    return None if output is None else output.with_name(output.name + ".rejected")


def _verify_export(settings: Settings, result: Export, output: Path | None, wanted: bool | None,
                   report: Console, as_json: bool) -> verify.Verdict | None:  # fmt: skip
    """Run --verify (or the default check); None when it did not run."""
    if wanted is False:
        return None
    bins = verify.available()
    if bins is None:
        if wanted:
            raise PostgressorError(
                "--verify needs a local PostgreSQL server (initdb and pg_ctl, found via pg_config --bindir); "
                "install one (Debian/Ubuntu: apt install postgresql) or pass --no-verify"
            )
        report.print("note: the export was NOT verified: no local PostgreSQL server (initdb/pg_ctl) found; "
                     "install one to check it applies before you ship it", markup=False)  # fmt: skip
        return None
    folder = settings.migrations.directory
    required = folder != MigrationsConfig().directory
    own = output.resolve() if output is not None else None  # an earlier export in place is replaced, not applied
    migrations = [m for m in runner.project_migrations(folder, required) if Path(m.origin).resolve() != own]
    checked = verify.verify(result.sql, migrations, settings.sync.tables, result.extensions, bins)
    if checked.major < result.server_major:
        err_console.print(f"note: verified on PostgreSQL {checked.major}, older than the dev database's "
                          f"{result.server_major}: a failure may be the older server's; the box's version counts",
                          markup=False)  # fmt: skip
    for failure in checked.failures:
        where = f"line {failure.line}" if failure.line else "after the export"
        err_console.print(f"verify: {where}: {failure.statement}: {failure.reason}", markup=False, soft_wrap=True)
    if checked.ok and not as_json:
        report.print(f"verified: the export and {len(migrations)} project migration(s) apply to a fresh "
                     f"database on {checked.server} as a non-superuser owner ({checked.statements} statements)",
                     markup=False)  # fmt: skip
    return checked
