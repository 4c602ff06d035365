"""Box verbs: up, deploy, plan, status, ssh, destroy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from postgressor import lifecycle as stacks
from postgressor.box.converge import OpReport
from postgressor.checks import status as status_check
from postgressor.cli.backup_cmds import render_status as render_backup_status
from postgressor.cli.common import (
    billing_plan,
    confirm,
    console,
    emit_json,
    err_console,
    global_options,
    say,
    settings_for,
    stack_name,
    with_provider,
)
from postgressor.errors import PostgressorError
from postgressor.remote.ssh import known_hosts_path

STATUS_STYLE = {"changed": "yellow", "unchanged": "dim", "failed": "red", "skipped": "dim"}


class Reporter:
    """Rich progress for humans; silence (then one JSON object) for --json."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.count = 0
        self._status: Any = None

    def log(self, message: str) -> None:
        if not self.quiet:
            err_console.print(f"[cyan]→[/] {message}", highlight=False)

    def op(self, name: str, report: OpReport | None) -> None:
        if self.quiet:
            return
        if report is None:
            self.count += 1
            if not err_console.is_terminal:
                err_console.print(f"  {'started':>9} {name}", highlight=False)
                return
            if self._status is None:
                self._status = err_console.status("")
                self._status.start()
            self._status.update(f"[{self.count}] {name}")
            return
        style = STATUS_STYLE.get(report.status, "")
        detail = f": {report.error}" if report.error else ""
        err_console.print(f"  [{style}]{report.status:>9}[/] {name}{detail}", highlight=False)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _finish(ctx: typer.Context, result: stacks.UpResult, verb: str) -> None:
    deploy = result.deploy
    if global_options(ctx).json:
        emit_json({"ok": not deploy.failed, **result.as_dict()})
    else:
        console.print(
            f"[bold]{verb}[/] stack '{result.stack}' at {result.host.address}:{result.host.port}: "
            f"{deploy.changed} changed, {len(deploy.operations) - deploy.changed - len(deploy.failed)} unchanged, "
            f"{len(deploy.failed)} failed in {deploy.seconds:.0f} s ({deploy.remote_commands} remote commands)"
        )
    if deploy.failed:
        first = deploy.failed[0]
        raise PostgressorError(
            f"operation '{first.name}' failed: {first.error}; fix it and run 'postgressor deploy'"
        )


def up(
    ctx: typer.Context,
    provider: str | None = typer.Option(None, "--provider", "-p", help="local, ssh, hetzner, oracle or ovh."),
    region: str | None = typer.Option(None, "--region", "-r", help="A city or the provider's region code."),
    size: str | None = typer.Option(None, "--size", help="Server type (provider-specific)."),
    host: str | None = typer.Option(None, "--host", help="ssh provider: the server's address."),
    user: str | None = typer.Option(None, "--user", help="ssh provider: login user (root or NOPASSWD sudo)."),
    port: int | None = typer.Option(None, "--port", help="ssh provider: SSH port."),
    key: Path | None = typer.Option(None, "--key", help="ssh provider: private key file."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Create billed resources without asking "
                             "(required without a terminal)."),
) -> None:
    """Create (or find) the stack's server, harden it and install PostgreSQL. Safe to re-run.

    With no provider configured, --region picks the best-ranked cloud provider serving it whose
    credentials are present. Before a billed server is created the plan and its price are shown and
    confirmed (--yes skips the question).
    """
    ssh = {
        k: v for k, v in {"host": host, "user": user, "port": port, "key_path": key}.items() if v is not None
    }
    name = stack_name(ctx)
    settings = settings_for(ctx, provider=provider, region=region, size=size, ssh=ssh or None)
    settings = with_provider(settings, name, say)
    bill = billing_plan(settings, name)
    if bill is not None:
        for line in bill.lines():
            say(line)
        confirm(f"Create this billed {bill.title} server?", yes)
    reporter = Reporter(global_options(ctx).json)
    try:
        result = stacks.up(settings, name, reporter.log, reporter.op)
    finally:
        reporter.close()
    _finish(ctx, result, "up")


def deploy(ctx: typer.Context) -> None:
    """Re-run the deploys on the stack's existing server."""
    reporter = Reporter(global_options(ctx).json)
    try:
        result = stacks.deploy(settings_for(ctx), stack_name(ctx), reporter.log, reporter.op)
    finally:
        reporter.close()
    _finish(ctx, result, "deploy")


def plan(
    ctx: typer.Context,
    provider: str | None = typer.Option(None, "--provider", "-p"),
    region: str | None = typer.Option(None, "--region", "-r"),
    host: str | None = typer.Option(None, "--host"),
) -> None:
    """Show what 'up' or 'deploy' would change, changing nothing."""
    settings = settings_for(ctx, provider=provider, region=region, ssh={"host": host} if host else None)
    settings = with_provider(settings, stack_name(ctx), say)
    result = stacks.plan(settings, stack_name(ctx), lambda message: None)
    if global_options(ctx).json:
        emit_json(result.__dict__)
        return
    for step in result.provider_steps:
        console.print(f"[yellow]+[/] {step}")
    changing = [op for op in result.operations if op["status"] == "would change"]
    for op in result.operations:
        if op["status"] == "would change":
            console.print(f"[yellow]~[/] {op['name']}", markup=True)
        elif op["status"] == "conditional" and changing:
            console.print(f"[dim]? {op['name']} (if an earlier change needs it)[/]")
    if result.note:
        console.print(result.note)
    elif not result.provider_steps and not changing:
        console.print(f"nothing to change ({len(result.operations)} operations checked)")


def status(ctx: typer.Context) -> None:
    """Reachability, PostgreSQL version and settings, and replication slots with their retained WAL."""
    report = status_check.status(settings_for(ctx), stack_name(ctx))
    if global_options(ctx).json:
        emit_json(report)
    else:
        _render_status(report)
    if not report["reachable"] or report.get("error"):
        raise typer.Exit(1)


def _render_status(report: dict[str, Any]) -> None:
    console.print(f"stack [bold]{report['stack']}[/] ({report['provider']}) at {report['host']}, "
                  f"power {escape(report.get('power', 'unknown'))}")
    if not report["reachable"]:
        console.print(f"[red]unreachable[/]: {escape(report['error'])}")
        return
    pg = report.get("postgres") or {}
    console.print(f"postgresql {pg.get('version', '?')}: service {report['service']}")
    if report.get("error"):
        console.print(f"[red]error[/]: {report['error']}")
    table = Table("setting", "value", box=None)
    for name, value in (pg.get("settings") or {}).items():
        table.add_row(name, str(value))
    console.print(table)
    if report.get("backup"):
        render_backup_status(report["backup"])
    sync = report.get("sync")
    if sync:
        units = ", ".join(f"{unit} {state}" for unit, state in sync["units"].items())
        console.print(f"sync: {units}; Electric /v1/health {sync['electric_health'] or 'no answer'}")
    slots = pg.get("slots") or []
    if slots:
        slot_table = Table("slot", "plugin", "active", "wal", "retained", box=None)
        for slot in slots:
            retained = slot.get("retained_bytes") or 0
            slot_table.add_row(slot["name"], str(slot["plugin"]), str(slot["active"]), str(slot["wal_status"]),
                               f"{float(retained) / 1024 / 1024:.1f} MB")  # fmt: skip
        console.print(slot_table)
    else:
        console.print("no replication slots")


def ssh(
    ctx: typer.Context,
    command: list[str] = typer.Argument(None, help="Run this command instead of opening a shell."),
) -> None:
    """Open a shell on the box, or run one command there."""
    host, state = stacks.connection(settings_for(ctx), stack_name(ctx), lambda message: None)
    argv = [
        "ssh", "-i", str(Path(host.key_path).expanduser()), "-p", str(host.port),
        "-o", f"UserKnownHostsFile={known_hosts_path(state)}", "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", f"{host.user}@{host.address}",
    ]  # fmt: skip
    if command:
        argv += ["--", *command]
    try:
        code = subprocess.call(argv)
    except FileNotFoundError:
        raise PostgressorError("the 'ssh' client is not installed; install openssh-client") from None
    raise typer.Exit(code)


def destroy(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required without a terminal)."),
    skip_final_backup: bool = typer.Option(False, "--skip-final-backup", help="Destroy a database whose only "
                                           "backups live on the server, or skip the final S3 backup."),
) -> None:
    """Delete the stack's server and everything recorded for it.

    Refused when the stack holds a database whose only backups live on the server (unless
    --skip-final-backup); with an S3 repository a final full backup is taken and verified first.
    """
    name = stack_name(ctx)
    settings = settings_for(ctx)
    if skip_final_backup:
        question = f"Destroy stack '{name}' and its server, with all data on it, without a final backup?"
    else:
        question = stacks.destroy_question(settings, name)  # refuses first when the data would be lost
    confirm(question, yes)
    log = (lambda message: None) if global_options(ctx).json else say
    removed = stacks.destroy(settings, name, log, skip_final_backup=skip_final_backup)
    if global_options(ctx).json:
        emit_json({"ok": True, "stack": name, "removed": removed})
        return
    for line in removed:
        console.print(f"[green]+[/] {escape(line)}" if line.startswith("kept: ") else f"[red]-[/] {escape(line)}")
    console.print(f"stack '{name}' destroyed")


def register(app: typer.Typer) -> None:
    """Add the box verbs to ``app``."""
    for func in (up, deploy, plan, status, ssh, destroy):
        app.command(func.__name__)(func)
