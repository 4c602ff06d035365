"""The backup verbs as plain functions over SSH (backup now, check, passphrase, restore): each returns data; the
CLI renders it. Reading the repository and archiving health is in checks/backups.py.

Every pgBackRest command runs on the box as postgres and reads /etc/pgbackrest/pgbackrest.conf there, so no
secret ever travels in argv, output or the state file.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from postgressor.box.layout import (
    CIPHER_SECRET,
    ELECTRIC_STORAGE,
    ELECTRIC_UNIT,
    PGBACKREST_CHECK,
    SYNC_UNITS,
    backup_unit,
    electric_health_url,
    pgbackrest_backup,
    pgbackrest_restore,
    postgres_log,
    postgres_unit,
    psql,
    secret_digest_command,
    secret_path,
    start_recovered,
)
from postgressor.box.operations import http_ready_command, same_secret
from postgressor.checks.backups import (
    backup_status,
    choose_set,
    dropped_problem,
    info,
    info_problem,
    pg_time,
    pgbackrest_error,
    run_backup_command,
)
from postgressor.checks.recovery_end import RECOVERY_END_COMMAND, UNCHECKED, parse_recovery_end, short_of_archive
from postgressor.errors import PostgressorError, UsageError
from postgressor.state import HostRecord, StackState

BACKUP_TIMEOUT = 6 * 3600  # seconds a backup or restore may stay silent over SSH
BACKUP_TYPES = ("full", "diff", "incr")
SLOTS_SQL = "SELECT coalesce(json_agg(slot_name ORDER BY slot_name), '[]') FROM pg_replication_slots"
Log = Callable[[str], None]


# ---- backup now / check / passphrase ---------------------------------------------------------------------


# The scheduled backups running now: instances of the backup service (Type=oneshot: "activating" while the
# backup runs, "deactivating" while it stops), one per line.
RUNNING_BACKUPS = (f"systemctl list-units --no-legend --plain --state=activating,active,deactivating "
                   f"'{backup_unit()}'")  # fmt: skip
RUNNING_UNIT = re.compile(rf"{re.escape(backup_unit(''))}[a-z]+\.service")
LOCK_BUSY = 75  # pgbackrest_backup's exit when BACKUP_LOCK stayed taken


def backup_now(host: HostRecord, kind: str, log: Log = lambda message: None) -> dict[str, Any]:
    """Take a ``kind`` backup (full, diff or incr) now, once a scheduled one that is running has finished (said
    on ``log``); returns the newest backup as pgBackRest's info lists it and how many are kept."""
    if kind not in BACKUP_TYPES:
        raise UsageError(f"unknown backup type '{kind}'; choose one of {', '.join(BACKUP_TYPES)}")
    probe = run_backup_command(host, RUNNING_BACKUPS)
    running = [word for word in probe.stdout.split() if RUNNING_UNIT.fullmatch(word)][:3]
    if running:
        log(f"waiting for the scheduled backup ({', '.join(running)}) to finish: pgBackRest runs one at a time")
    result = run_backup_command(host, f"{pgbackrest_backup(kind, BACKUP_TIMEOUT)} 2>&1", timeout=BACKUP_TIMEOUT * 2)
    if result.exit_status == LOCK_BUSY:
        raise PostgressorError(f"another backup still held the backup lock after {BACKUP_TIMEOUT} s; see "
                               "'postgressor logs backup'")  # fmt: skip
    if not result.ok:
        raise PostgressorError(
            f"{kind} backup failed: {pgbackrest_error(result.stdout + result.stderr)}; run 'postgressor backup check'"
        )
    parsed = info(host)
    if not parsed["backups"]:
        raise PostgressorError("pgBackRest reported success but lists no backup; run 'postgressor backup check'")
    return {"backup": parsed["backups"][-1], "backups": len(parsed["backups"])}


def check(host: HostRecord) -> dict[str, Any]:
    """`pgbackrest check` (archives one WAL segment and waits for it) plus the repository's contents."""
    result = run_backup_command(host, PGBACKREST_CHECK, timeout=600)
    if not result.ok:
        raise PostgressorError(
            f"backup check failed: {pgbackrest_error(result.stdout + result.stderr)}; fix the repository "
            "(see /var/log/pgbackrest on the box) and run 'postgressor backup check' again"
        )
    status = backup_status(host)  # reads the repository too: its problems come first
    # WAL dropped during an outage is a gap in the history, not a fault of archiving now: the check passes, and
    # says it (status keeps failing on it until a new full backup starts a chain after the gap).
    gap = dropped_problem(status.get("wal_dropped_at"), status.get("last_backup"))
    if status.get("error") and status["error"] != gap:
        raise PostgressorError(f"backup check failed: {status['error']}")
    return {"ok": True, "backups": status["backups"], "last_backup": status["last_backup"],
            "archiver": status["archiver"], "archive": status["archive"],
            "notes": [gap] if gap else []}  # fmt: skip


MISSING_ON_BOX = "the box has no backup passphrase yet; run 'postgressor deploy'"
# Who can read the repository: the passphrase the user holds (backup.cipher_pass) compared with the box's.
YOURS, DIFFERS, BOX_ONLY = "yours", "differs", "box only"
CUSTODY_STEPS = {
    YOURS: "the passphrase you hold (backup.cipher_pass) is the box's: the repository stays readable without the box",
    DIFFERS: ("the passphrase you hold (backup.cipher_pass) is NOT the box's: replace it with the box's own; every "
              "deploy refuses until they match"),
    BOX_ONLY: ("only the box holds this passphrase, so losing the box loses every backup: store it in your password "
               "manager or CI secrets as POSTGRESSOR_BACKUP__CIPHER_PASS (or in a 0600 file named by "
               "backup.cipher_pass_file); the next 'postgressor deploy' checks that it is the box's, by digest, and "
               "never changes it; 'postgressor backup passphrase --check' confirms it at any time"),
}  # fmt: skip


def passphrase(host: HostRecord) -> str:
    """The box's repository passphrase (it travels over SSH only); PostgressorError when it has none."""
    result = run_backup_command(host, f"cat {secret_path(CIPHER_SECRET)}")
    if not result.ok or not result.stdout.strip():
        raise PostgressorError(MISSING_ON_BOX)
    return result.stdout.strip()


def custody(box_passphrase: str, held: str | None) -> str:
    """YOURS, DIFFERS or BOX_ONLY: whether ``held`` (the user's backup.cipher_pass) is ``box_passphrase``."""
    if held is None:
        return BOX_ONLY
    return YOURS if hmac.compare_digest(held.encode(), box_passphrase.encode()) else DIFFERS


def custody_on_box(host: HostRecord, held: str) -> str:
    """YOURS or DIFFERS for ``held``, compared by SHA-256 digest: the box's passphrase does not leave it."""
    result = run_backup_command(host, secret_digest_command(CIPHER_SECRET))
    on_box = result.stdout.strip() if result.ok else ""
    if not on_box:
        raise PostgressorError(MISSING_ON_BOX)
    return YOURS if same_secret(held, on_box) else DIFFERS


# ---- restore ---------------------------------------------------------------------------------------------


def parse_target(text: str, flag: str = "--to-time") -> datetime:
    """An ISO 8601 time (given as ``flag``); without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # years 1 and 9999 with an offset overflow here
    except (ValueError, OverflowError):
        raise UsageError(
            f"{flag} '{text}' is not a time; use ISO 8601 like 2026-05-01T12:30:00Z or '2026-05-01 12:30:00+02:00'"
        ) from None
    return moment


def restore_command(target: datetime | None, label: str) -> str:
    return f"{pgbackrest_restore(label, pg_time(target) if target else '')} 2>&1"


def _slots(host: HostRecord) -> list[str] | None:
    result = run_backup_command(host, psql(SLOTS_SQL))
    try:
        return list(json.loads(result.stdout.strip())) if result.ok else None
    except ValueError:
        return None


def restore(host: HostRecord, version: int, target: datetime | None, log: Log, health_timeout: int = 300,
            state: StackState | None = None) -> dict[str, Any]:  # fmt: skip
    """Stop Electric, the gateway and PostgreSQL ``version`` (the one recorded in the state); restore (to ``target``
    or the latest state); start them, and wait up to ``health_timeout`` seconds until Electric answers its health
    check (it rebuilds its slot and shapes first). A restore to the latest state that stopped short of the archive
    says so in ``short_of_archive`` (and in any later error), and is recorded in ``state`` as soon as it is known."""
    parsed = info(host)
    problem = info_problem(parsed)
    if problem and not parsed["backups"]:
        raise PostgressorError(f"cannot restore: {problem}")
    chosen = choose_set(parsed["backups"], target)
    unit = postgres_unit(version)
    probe = run_backup_command(
        host,
        f'echo "now=$(date +%s)"; echo "pg=$(systemctl is-active {unit})"; '
        f'for u in {" ".join(SYNC_UNITS)}; do echo "unit_$u=$(systemctl is-active $u)"; done',
    )
    facts = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
    if target is not None and target.timestamp() > float(facts.get("now", "0")):
        raise UsageError(f"--to-time {pg_time(target)} is in the future on the box; use --latest for the newest state")
    report: dict[str, Any] = {"target": pg_time(target) if target else "latest", "backup_set": chosen["label"],
                              "stopped": [], "started": [], "notes": []}  # fmt: skip
    report["slots_before"] = None
    if facts.get("pg") == "active":
        # Archive the WAL still in pg_wal first, so the restore can reach the newest commits.
        log("archiving the current WAL segment (pgbackrest check)")
        result = run_backup_command(host, PGBACKREST_CHECK, timeout=600)
        if not result.ok:
            raise PostgressorError(
                f"cannot archive the current WAL before restoring: {pgbackrest_error(result.stdout)}; fix it "
                f"(postgressor backup check), or stop {unit} on the box to restore only what is archived"
            )
        report["slots_before"] = _slots(host)
        parsed = info(host)  # the newest archived segment now includes the one check just pushed
    running = [u for u in SYNC_UNITS if facts.get(f"unit_{u}") == "active"]
    for name in [*running, unit]:
        log(f"stopping {name}")
        stop = run_backup_command(host, f"systemctl stop {name}", timeout=300)
        if not stop.ok:
            raise PostgressorError(f"cannot stop {name}: {stop.stderr.strip()}; nothing was restored")
        report["stopped"].append(name)
    log(f"restoring backup {chosen['label']} ({report['target']}) with pgBackRest --delta")
    result = run_backup_command(host, restore_command(target, chosen["label"]), timeout=BACKUP_TIMEOUT)
    if not result.ok:
        raise PostgressorError(
            f"restore failed: {pgbackrest_error(result.stdout)}; PostgreSQL and {', '.join(running) or 'sync'} "
            "are stopped: fix the cause and run 'postgressor restore' again"
        )
    log(f"starting {unit} and replaying WAL")
    started = run_backup_command(host, start_recovered(version), timeout=BACKUP_TIMEOUT)
    if not started.ok:
        tail = run_backup_command(host, f"grep -E 'FATAL|PANIC' {postgres_log(version)} | tail -n 1")
        cause = tail.stdout.strip() or started.stderr.strip() or "see /var/log/postgresql on the box"
        raise PostgressorError(
            f"PostgreSQL did not finish recovery after the restore: {cause}; fix the cause and run "
            "'postgressor restore' again (Electric and the gateway stay stopped)"
        )
    report["started"].append(unit)
    end = None if target else parse_recovery_end(run_backup_command(host, RECOVERY_END_COMMAND).stdout)
    checked = target is not None or end is not None
    # pgBackRest's info as read before the restore: its newest segment is what recovery had to reach
    short = short_of_archive(end, (parsed.get("archive") or {}).get("max")) if end is not None else ""
    report["short_of_archive"] = short
    if state is not None and end is not None and short:
        record_short_restore(state, short, end.read_at)
    report["slots_after"] = _slots(host)

    def failed(message: str) -> PostgressorError:  # the shortfall must not be lost behind a later failure
        return PostgressorError(f"{message}; also, {short}" if short else message)
    if ELECTRIC_UNIT in running:
        # Shapes hold data up to an LSN of the lost timeline: rebuild them all from the restored database.
        cleared = run_backup_command(host, f"find {ELECTRIC_STORAGE} -mindepth 1 -delete")
        report["electric_storage_cleared"] = cleared.ok
    for name in running:
        log(f"starting {name}")
        if not run_backup_command(host, f"systemctl start {name}", timeout=300).ok:
            raise failed(f"the database is restored but {name} did not start; see 'journalctl -u {name}'")
        report["started"].append(name)
    if ELECTRIC_UNIT in running:
        log(f"waiting for Electric to answer {electric_health_url()} (up to {health_timeout} s)")
        ready = run_backup_command(host, http_ready_command(electric_health_url(), health_timeout, ELECTRIC_UNIT),
                                   timeout=health_timeout + 60)  # fmt: skip
        if not ready.ok:
            raise failed(f"the database is restored but Electric is not healthy: "
                         f"{(ready.stderr.strip().splitlines() or ['no answer'])[-1]}")  # fmt: skip
    report["notes"] = restore_notes(report, ELECTRIC_UNIT in running) + ([] if checked else [UNCHECKED])
    return report


def record_short_restore(state: StackState, short: str, at: str) -> None:
    """Remember in ``state`` that the restore finished at ``at`` (the box's clock, ISO 8601; '' for this
    machine's) stopped short of the archive, ``short`` saying how: status warns until a backup finished after it.
    Only a backup clears it, not a later restore (one to the latest state follows the new timeline and does not
    cross the gap either)."""
    state.short_restore = {"at": at or datetime.now(UTC).isoformat(timespec="seconds"), "line": short}
    state.save()


def restore_notes(report: dict[str, Any], electric: bool) -> list[str]:
    notes = []
    before, after = report.get("slots_before"), report.get("slots_after") or []
    lost = sorted(set(before or []) - set(after))
    if lost:
        notes.append(f"replication slots are not part of a backup: {', '.join(lost)} no longer exist(s)")
    elif before is None and not after:
        notes.append("replication slots are not part of a backup: the restored database has none")
    if electric:
        notes.append("Electric's shape cache was cleared: Electric creates its replication slot again and rebuilds "
                     "every shape; clients get 409 must-refetch and resync")  # fmt: skip
    notes.append("PostgreSQL now runs on a new timeline; take a fresh full backup: postgressor backup now --type full")
    return notes
