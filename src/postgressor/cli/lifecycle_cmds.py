"""Box verbs: up, deploy, plan, status, ssh, destroy."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from postgressor import lifecycle as stacks
from postgressor.advisor.bill import resize_lines
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
    """What a long run is doing, on stderr, with the seconds since the command started (image build and boot
    included): a live line on a terminal, plain lines in a pipe, one JSON object per line with --json
    (``{"step", "status", "elapsed"}`` plus ``detail``/``error``/``seconds`` when known).

    Inside a long step (apt, a health wait, a boot) it repeats the step and its elapsed time every
    ``heartbeat`` seconds in a pipe or JSON, and every second on a terminal.
    """

    HEARTBEAT = 15.0  # seconds between repeats of a long step in a pipe or JSON

    def __init__(self, json_lines: bool, heartbeat: float | None = None) -> None:
        self.json = json_lines
        self.heartbeat = self.HEARTBEAT if heartbeat is None else heartbeat
        self.started = time.monotonic()
        self.count = 0
        self.step = ""
        self.step_started = self.started
        self.detail_text = ""
        self._last_beat = self.started
        self._lock = threading.Lock()
        self._status: Any = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def elapsed(self) -> float:
        """Seconds since this run started."""
        return time.monotonic() - self.started

    def _live(self) -> bool:
        return not self.json and err_console.is_terminal

    def _event(self, step: str, status: str, **extra: Any) -> None:
        record = {"step": step, "status": status, "elapsed": round(self.elapsed(), 1)}
        record.update({k: v for k, v in extra.items() if v not in (None, "")})
        sys.stderr.write(json.dumps(record) + "\n")
        sys.stderr.flush()

    def _begin(self, step: str) -> None:
        self.step, self.step_started, self.detail_text = step, time.monotonic(), ""
        self._last_beat = self.step_started

    def log(self, message: str) -> None:
        with self._lock:
            self._begin(message)
            if self.json:
                self._event(message, "running")
                return
            err_console.print(f"[cyan]→[/] {escape(message)} [dim]({self.elapsed():.0f} s)[/]", highlight=False)
            self._show()

    def op(self, name: str, report: OpReport | None) -> None:
        with self._lock:
            if report is None:
                self.count += 1
                self._begin(name)
                if self.json:
                    self._event(name, "started")
                elif not err_console.is_terminal:
                    err_console.print(f"  {'started':>9} {escape(name)} ({self.elapsed():.0f} s)", highlight=False)
                else:
                    self._show()
                return
            seconds = round(time.monotonic() - self.step_started, 1) if name == self.step else None
            if self.json:
                self._event(name, report.status, seconds=seconds, error=report.error)
            else:
                style = STATUS_STYLE.get(report.status, "")
                took = f" [dim]({seconds:.0f} s)[/]" if seconds is not None and seconds >= 1 else ""
                detail = f": {escape(report.error)}" if report.error else ""
                err_console.print(f"  [{style}]{report.status:>9}[/] {escape(name)}{took}{detail}", highlight=False)
            if name == self.step:
                self.step = ""

    def detail(self, name: str, text: str) -> None:
        """What the running step is doing now (apt's progress line)."""
        with self._lock:
            if name != self.step:
                return
            self.detail_text = text
            if self.json:
                self._event(name, "running", detail=text)
            self._show()

    def _line(self) -> str:
        inside = f": {self.detail_text}" if self.detail_text else ""
        return f"{self.step}{inside} ({time.monotonic() - self.step_started:.0f} s, total {self.elapsed():.0f} s)"

    def _show(self) -> None:
        if not self._live() or not self.step:
            return
        if self._status is None:
            self._status = err_console.status("")
            self._status.start()
        self._status.update(escape(f"[{self.count}] " + self._line()))

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._tick_once()

    def _tick_once(self) -> None:
        with self._lock:
            if not self.step:
                return
            if self._live():
                self._show()
                return
            now = time.monotonic()
            if now - self._last_beat < self.heartbeat:
                return
            self._last_beat = now
            if self.json:
                self._event(self.step, "running", detail=self.detail_text, seconds=round(now - self.step_started, 1))
            else:
                err_console.print(f"  {'…':>9} {escape(self._line())}", highlight=False)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)
        with self._lock:
            if self._status is not None:
                self._status.stop()
                self._status = None


def _finish(ctx: typer.Context, result: stacks.UpResult, verb: str, reporter: Reporter) -> None:
    deploy = result.deploy
    total = reporter.elapsed()
    if global_options(ctx).json:
        short = {"error": result.restore_shortfall} if result.restore_shortfall else {}
        emit_json({"ok": not deploy.failed and not short, **short, **result.as_dict(), "seconds": round(total, 1)})
    else:
        where = f"[bold]{verb}[/] stack '{result.stack}' at {result.host.address}:{result.host.port}"
        if deploy.converged_since:
            console.print(
                f"{where}: 0 changed in {total:.0f} s (the box matches the deploy of {deploy.converged_since}: "
                f"{deploy.facts_compared} facts and file stamps compared in {deploy.remote_commands} remote commands)"
            )
        else:
            unchanged = len(deploy.operations) - deploy.changed - len(deploy.failed)
            console.print(
                f"{where}: {deploy.changed} changed, {unchanged} unchanged, {len(deploy.failed)} failed in "
                f"{total:.0f} s (deploys {deploy.seconds:.0f} s, {deploy.remote_commands} remote commands)"
            )
        done = result.restored_from
        if done.get("label"):
            when = done["target"] or "to the end of its archived WAL"
            console.print(f"restored from {done['path']}: backup {done['label']}, {when}", markup=False)
            if done.get("note"):
                console.print(f"note: {done['note']}", markup=False)
    if deploy.failed:
        first = deploy.failed[0]
        also = f"; also, {result.restore_shortfall}" if result.restore_shortfall else ""
        raise PostgressorError(
            f"operation '{first.name}' failed: {first.error}; fix it and run 'postgressor deploy'{also}"
        )
    if result.restore_shortfall:
        raise PostgressorError(result.restore_shortfall)


def up(
    ctx: typer.Context,
    provider: str | None = typer.Option(None, "--provider", "-p", help="local, ssh, hetzner, oracle or ovh."),
    region: str | None = typer.Option(None, "--region", "-r", help="A city or the provider's region code."),
    size: str | None = typer.Option(None, "--size", help="Server type (provider-specific)."),
    host: str | None = typer.Option(None, "--host", help="ssh provider: the server's address."),
    user: str | None = typer.Option(None, "--user", help="ssh provider: login user (root or NOPASSWD sudo)."),
    port: int | None = typer.Option(None, "--port", help="ssh provider: SSH port."),
    key: Path | None = typer.Option(None, "--key", help="ssh provider: private key file."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Create billed resources or resize the server without "
                             "asking (required without a terminal)."),
    restore_from: str | None = typer.Option(None, "--restore-from", metavar="PATH", help="A new stack only: "
                                            "restore the old stack's backups from this s3_path of the same bucket "
                                            "first (this stack's own backup.s3_path must differ)."),
    target_time: str | None = typer.Option(None, "--target-time", help="With --restore-from: the point in "
                                           "time, ISO 8601 (no zone = UTC); default the end of the archived WAL."),
) -> None:
    """Create (or find) the stack's server, harden it and install PostgreSQL. Safe to re-run.

    With no provider configured, --region picks the best-ranked cloud provider serving it whose
    credentials are present. Before a billed server is created the plan and its price are shown and
    confirmed (--yes skips the question). A --size (or 'size') other than the existing cloud server's
    resizes it the same way (old → new size and price, confirmed), then the deploy re-tunes PostgreSQL.
    --restore-from brings a new stack up on the backups of a lost (or cloned) one; see "When the box is lost".
    """
    ssh = {
        k: v for k, v in {"host": host, "user": user, "port": port, "key_path": key}.items() if v is not None
    }
    name = stack_name(ctx)
    settings = settings_for(ctx, secrets=True, provider=provider, region=region, size=size, ssh=ssh or None)
    settings = with_provider(settings, name, say)
    restore = stacks.restore_source(settings, name, restore_from, target_time)
    if restore:
        say(f"restoring the backups in {restore['path']} ({restore['target'] or 'to the end of the archived WAL'}) "
            f"after PostgreSQL is installed; this stack archives to its own {settings.backup.s3_path}")
    postgres = stacks.postgres_note(settings, name)  # an impossible postgres.source is refused before the question
    bill = billing_plan(settings, name, say)
    for line in [*(bill.lines() if bill else []), *([postgres] if postgres else [])]:
        say(line)
    if bill is not None:
        confirm(bill.question(), yes)
    change = stacks.size_change(settings, name, say)
    if change is not None:
        for line in resize_lines(change.provider, change.region, change.server, (change.old, change.old_priced),
                                 (change.new, change.new_priced), change.notes):  # fmt: skip
            say(line)
        confirm(f"Resize the server from {change.describe()}?", yes)
    reporter = Reporter(global_options(ctx).json)
    try:
        result = stacks.up(settings, name, reporter.log, reporter.op, reporter.detail, resize=change,
                           restore=restore)  # fmt: skip
    finally:
        reporter.close()
    _finish(ctx, result, "up", reporter)


def deploy(
    ctx: typer.Context,
    drop: list[str] = typer.Option(
        [],
        "--drop",
        metavar="KEY",
        help="Remove this secret or key source from the box on purpose (e.g. supabase.jwt_secret); repeatable.",
    ),
) -> None:
    """Re-run the deploys on the stack's existing server."""
    settings = settings_for(ctx, secrets=True)
    reporter = Reporter(global_options(ctx).json)
    try:
        result = stacks.deploy(settings, stack_name(ctx), reporter.log, reporter.op, frozenset(drop), reporter.detail)
    finally:
        reporter.close()
    _finish(ctx, result, "deploy", reporter)


def plan(
    ctx: typer.Context,
    provider: str | None = typer.Option(None, "--provider", "-p"),
    region: str | None = typer.Option(None, "--region", "-r"),
    host: str | None = typer.Option(None, "--host"),
) -> None:
    """Show what 'up' or 'deploy' would change, changing nothing."""
    settings = settings_for(ctx, secrets=True, provider=provider, region=region,
                            ssh={"host": host} if host else None)  # fmt: skip
    settings = with_provider(settings, stack_name(ctx), say)
    result = stacks.plan(settings, stack_name(ctx), lambda message: None)
    if global_options(ctx).json:
        emit_json(result.__dict__)
        return
    for step in result.provider_steps:
        console.print(f"[yellow]+[/] {step}")
    if result.postgres_note:
        console.print(result.postgres_note, markup=False)
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
        console.print(f"[red]error[/]: {escape(report['error'])}")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    for note in report.get("notes", []):
        console.print(f"note: {escape(note)}")
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
