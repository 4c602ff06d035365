"""Destroying a stack without losing its data: where the backups live, whether they survive the server, and a
final verified full backup to an off-box (S3) repository before the server goes.

Like managed databases (RDS takes a final snapshot on delete unless told to skip it): a stack whose only backups
live on the server is not destroyed unless the caller says ``skip_final_backup``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from postgressor.box.layout import PGBACKREST_CHECK, PGBACKREST_CONF, PGBACKREST_LOCAL_REPO
from postgressor.checks import restorable
from postgressor.checks.backups import pgbackrest_error, run_backup_command
from postgressor.config import Settings
from postgressor.day2.backups import BACKUP_TIMEOUT, backup_now
from postgressor.errors import PostgressorError
from postgressor.state import HostRecord, StackState

KEEPS_SERVER = frozenset({"ssh"})  # providers whose destroy leaves the server (and its data) running


@dataclass(frozen=True)
class Backups:
    """Where a stack's backups live: ``kind`` "none", "box" (the server's disk) or "s3"; ``where`` says it."""

    kind: str
    where: str

    @property
    def off_box(self) -> bool:
        return self.kind == "s3"


def backups_of(settings: Settings) -> Backups:
    cfg = settings.backup
    if not cfg.enabled:
        return Backups("none", "no backups (backup.enabled = false)")
    if cfg.s3:
        return Backups("s3", f"s3://{cfg.s3_bucket}{cfg.s3_path} on {cfg.s3_endpoint}")
    return Backups("box", f"{PGBACKREST_LOCAL_REPO} on the server")


def holds_data(state: StackState) -> bool:
    """A deploy installed PostgreSQL on a server that destroy deletes (not a server the user brought)."""
    return state.provider not in KEEPS_SERVER and state.pg_version is not None


def question(state: StackState, backups: Backups) -> str:
    """The confirmation question: what goes, where the backups live, and whether they survive."""
    if state.provider in KEEPS_SERVER:
        return (f"Forget stack '{state.stack}'? The server {state.host.address if state.host else ''} is yours and "
                "keeps running with its data; only postgressor's records of it are deleted.")  # fmt: skip
    if not holds_data(state):
        return f"Destroy stack '{state.stack}' and its server (no database was deployed on it)?"
    fate = {"s3": "they survive the server", "box": "they are deleted with the server",
            "none": "nothing survives the server"}[backups.kind]  # fmt: skip
    return f"Destroy stack '{state.stack}' and its server, with all data on it? Backups: {backups.where}; {fate}."


def gone(state: StackState, backups: Backups, title: str) -> str:
    """What ``up`` says when the recorded server is gone at the provider: the new one starts empty, and where the
    data could come from (the S3 repository survives: a new stack restores it with ``up --restore-from``)."""
    server = state.find("server")
    head = f"the recorded server {server.id if server else ''} no longer exists at {title}"
    if not holds_data(state):
        return f"{head} (no database was deployed on it); the new one starts empty"
    head += "; the new one starts EMPTY, without your database"
    if backups.kind == "s3":
        return (f"{head}. Your data survives only in the backups in {backups.where}; restore them onto a new stack "
                "with another backup.s3_path: 'postgressor up --stack NEW --restore-from <this path>' (up's backup "
                "step stops at that repository here, which holds the old database)")  # fmt: skip
    if backups.kind == "box":
        return f"{head}, and the backups kept on its disk ({PGBACKREST_LOCAL_REPO}) are gone with it"
    return f"{head}, and it had no backups (backup.enabled = false)"


def no_final_backup(state: StackState, skip_final_backup: bool) -> str:
    """Why destroy takes no final backup of ``state``'s stack (when its backups are off the box)."""
    if state.provider in KEEPS_SERVER:
        return "the server is yours and keeps running with its data"
    if not holds_data(state):
        return "no database was deployed on the server"
    return "--skip-final-backup" if skip_final_backup else ""


def refusal(state: StackState, backups: Backups, skip_final_backup: bool) -> str:
    """Why destroy must not go ahead (``""`` when it may): the database's only backups would go with the server."""
    if skip_final_backup or not holds_data(state) or backups.off_box:
        return ""
    where = "it has no backups" if backups.kind == "none" else f"its only backups live on the server ({backups.where})"
    return (f"stack '{state.stack}' holds a database and {where}; destroying the server loses them. Configure an "
            "S3 repository ([backup] s3_*), run 'postgressor deploy', then destroy (a final backup is taken "
            "there first), or pass --skip-final-backup to destroy the data for good")  # fmt: skip


def repository_on_box(host: HostRecord) -> dict[str, str]:
    """The repository the box's pgbackrest.conf names (type, path, and for S3 bucket and endpoint; no keys)."""
    command = f"grep -E '^repo1-(type|path|s3-bucket|s3-endpoint)=' {shlex.quote(PGBACKREST_CONF)}"
    result = run_backup_command(host, command)
    if not result.ok:
        raise PostgressorError(f"cannot read {PGBACKREST_CONF} on {host.address}; run 'postgressor deploy' first; "
                               "nothing was destroyed")  # fmt: skip
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {key.removeprefix("repo1-"): value.strip() for key, value in values.items()}


def final_backup(host: HostRecord, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """A full backup to the box's S3 repository, then proof that it restores to consistency (checks.restorable:
    the set is a full one without errors, each WAL segment from its start to its stop is in the repository exactly
    once, and ``pgbackrest verify`` read the set and those segments back intact). Returns the set, where it is and
    what was checked.

    Raises PostgressorError, one line ending "nothing was destroyed", when the box's repository is not S3, the
    backup fails, or the proof does."""
    repo = repository_on_box(host)
    if repo.get("type") != "s3":
        raise PostgressorError(
            f"the box's backup repository is {repo.get('path') or PGBACKREST_LOCAL_REPO} on its own disk, not "
            "the S3 one in the config; run 'postgressor deploy' so backups go to S3, then destroy; nothing was "
            "destroyed"
        )
    try:
        label = backup_now(host, "full", log)["backup"]["label"]
    except PostgressorError as exc:
        raise PostgressorError(f"the final full backup failed: {exc}; nothing was destroyed") from None
    try:
        proof = restorable.prove(host, label, timeout=BACKUP_TIMEOUT)
    except PostgressorError as exc:
        raise PostgressorError(
            f"the final backup {label} did not verify: {exc}; fix the repository, or pass --skip-final-backup to "
            "destroy without a final backup; nothing was destroyed"
        ) from None
    # What was written after the backup is in WAL: push the current segment so S3 holds it up to this moment.
    pushed = run_backup_command(host, PGBACKREST_CHECK, timeout=600)
    if not pushed.ok:
        raise PostgressorError(
            f"the final backup {label} is verified, but the WAL written since could not be archived: "
            f"{pgbackrest_error(pushed.stdout)}; fix archiving (postgressor backup check), or pass --skip-final-backup "
            "to destroy without it; nothing was destroyed"
        )
    return {"label": label, "bucket": repo.get("s3-bucket", ""), "path": repo.get("path", ""),
            "endpoint": repo.get("s3-endpoint", ""), **proof}  # fmt: skip


def remaining(final: dict[str, Any] | None, backups: Backups, why_none: str = "--skip-final-backup") -> str:
    """The line saying what is left after the server is gone ("" when nothing is), and for a final backup exactly
    what was verified of it; ``why_none`` says why no final backup was taken."""
    if final:
        count = final["wal_segments"]
        label, path = final["label"], final["path"]
        line = (f"kept: backups in s3://{final['bucket']}{path} on {final['endpoint']}, the newest {label}; "
                f"verified: backup {label} and the {count} WAL segment{'s' if count != 1 else ''} it needs to "
                f"reach consistency ({final['wal_start']} to {final['wal_stop']}) are in the repository, each once, "
                "and pgbackrest verify read them back intact; readable with the passphrase you hold "
                "(backup.cipher_pass); a new stack with another backup.s3_path restores them: "
                f"'postgressor up --stack NEW --restore-from {path}'")  # fmt: skip
        problems = final.get("repository_problems") or []
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            line += f"; pgbackrest verify also reported, outside this backup and its WAL: {problems[0]}{more}"
        return line
    if backups.off_box:
        return f"kept: backups in {backups.where} (no final backup was taken: {why_none})"
    return ""
