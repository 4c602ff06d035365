"""Backups and restore as plain functions over SSH: each returns data; the CLI renders it.

Every pgBackRest command runs on the box as postgres and reads /etc/pgbackrest/pgbackrest.conf there, so no
secret ever travels in argv, output or the state file.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from postgressor.box.deploys.backup import CIPHER_SECRET, PGBACKREST, STANZA
from postgressor.box.layout import ELECTRIC_STORAGE, SYNC_UNITS, postgres_log, postgres_unit, psql, secret_path
from postgressor.errors import PostgressorError, UsageError
from postgressor.remote.ssh import CommandResult, run
from postgressor.state import HostRecord

BACKUP_TIMEOUT = 6 * 3600  # seconds a backup or restore may stay silent over SSH
BACKUP_TYPES = ("full", "diff", "incr")
ARCHIVER_SQL = (
    "SELECT json_build_object('archive_mode', current_setting('archive_mode'), "
    "'archived_count', archived_count, 'last_archived_wal', last_archived_wal, "
    "'last_archived_time', last_archived_time, 'failed_count', failed_count, 'last_failed_wal', last_failed_wal, "
    "'last_failed_time', last_failed_time, "
    "'seconds_since_archived', round(extract(epoch FROM now() - last_archived_time)), "
    "'ready_segments', (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')) "
    "FROM pg_stat_archiver"
)
SLOTS_SQL = "SELECT coalesce(json_agg(slot_name ORDER BY slot_name), '[]') FROM pg_replication_slots"
Log = Callable[[str], None]


def _run(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
    try:
        return run(host, command, timeout=timeout)
    except TimeoutError:
        raise PostgressorError(
            f"no answer from {host.address} within {int(timeout)} s; the command may still run on the box: "
            "check with 'postgressor backup list'"
        ) from None


def pgbackrest_error(output: str) -> str:
    """The first pgBackRest ERROR line, without its code prefix; else the last non-empty line."""
    for line in output.splitlines():
        found = re.search(r"ERROR: \[\d+\]: (.*)", line)
        if found:
            return found.group(1).strip().rstrip(":")
    if "pgbackrest: command not found" in output or "runuser: failed to execute pgbackrest" in output:
        return "pgBackRest is not installed on the box; run 'postgressor deploy'"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ---- pgbackrest info --output=json ------------------------------------------------------------------------


def _iso(epoch: Any) -> str | None:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat(timespec="seconds") if epoch else None


def parse_info(text: str, stanza: str = STANZA) -> dict[str, Any]:
    """The stanza's status, backups (oldest first) and WAL range from `pgbackrest info --output=json`."""
    line = next((ln for ln in text.split("\n") if ln.startswith("[{") or ln.strip() == "[]"), "")
    try:
        # strict=False: a wrong passphrase puts undecryptable bytes (control characters) into messages
        data = json.loads(line, strict=False) if line else None
    except ValueError:
        data = None
    if not isinstance(data, list):
        raise PostgressorError(f"pgBackRest info is unreadable: {_one_line(pgbackrest_error(text))}")
    entry = next((s for s in data if isinstance(s, dict) and s.get("name") == stanza), None)
    if entry is None:
        return {"status": {"code": -1, "message": f"no stanza '{stanza}' configured"}, "backups": [],
                "archive": None, "cipher": None}  # fmt: skip
    backups = []
    for item in entry.get("backup") or []:
        stamp, info = item.get("timestamp") or {}, item.get("info") or {}
        backups.append({
            "label": item.get("label"),
            "type": item.get("type"),
            "start": _iso(stamp.get("start")),
            "stop": _iso(stamp.get("stop")),
            "stop_epoch": stamp.get("stop"),
            "size": info.get("size"),
            "repo_size": (info.get("repository") or {}).get("size"),
            "wal_start": (item.get("archive") or {}).get("start"),
            "wal_stop": (item.get("archive") or {}).get("stop"),
            "error": bool(item.get("error")),
            "prior": item.get("prior"),
        })  # fmt: skip
    backups.sort(key=lambda b: b["stop_epoch"] or 0)
    archives = entry.get("archive") or []
    current = archives[-1] if archives else None
    status = entry.get("status") or {}
    message = str(status.get("message", "unknown"))
    repo_problems = [r["status"]["message"] for r in entry.get("repo") or [] if (r.get("status") or {}).get("code")]
    if status.get("code") and repo_problems:
        message = _one_line(str(repo_problems[0]))  # more precise than the stanza's "other"
    return {
        "status": {"code": status.get("code", 99), "message": message},
        "cipher": entry.get("cipher"),
        "backups": backups,
        "archive": {"min": current.get("min"), "max": current.get("max")} if current else None,
    }


def _one_line(message: str) -> str:
    """The first line of a pgBackRest message, printable characters only, at most 200 of them."""
    first = message.splitlines()[0] if message else ""
    clean = "".join(ch if ch.isprintable() else "?" for ch in first)
    return clean if len(clean) <= 200 else clean[:197] + "..."


def info_problem(info: dict[str, Any]) -> str:
    """Why this stanza cannot be restored from, or ''."""
    status = info["status"]
    if status["code"] not in (0,):
        return f"backup repository: {status['message']} (pgBackRest status {status['code']})"
    if not info["backups"]:
        return "no backup in the repository yet; run 'postgressor backup now'"
    if info["backups"][-1]["error"]:
        return f"the last backup {info['backups'][-1]['label']} has page checksum errors; run 'postgressor backup now'"
    return ""


def info(host: HostRecord) -> dict[str, Any]:
    result = _run(host, f"{PGBACKREST} --output=json info 2>&1")
    if not result.ok:
        raise PostgressorError(f"pgBackRest info failed: {pgbackrest_error(result.stdout + result.stderr)}")
    return parse_info(result.stdout)


# ---- status ----------------------------------------------------------------------------------------------


def archive_problem(archiver: dict[str, Any] | None) -> str:
    """Why WAL archiving is not working, or ''."""
    if not archiver:
        return "cannot read pg_stat_archiver (is PostgreSQL running?)"
    if archiver.get("archive_mode") != "on":
        return "WAL archiving is off (archive_mode); run 'postgressor deploy'"
    failed, archived = archiver.get("last_failed_time"), archiver.get("last_archived_time")
    if failed and (not archived or datetime.fromisoformat(failed) >= datetime.fromisoformat(archived)):
        return (
            f"WAL archiving is failing ({archiver.get('failed_count')} failures, last on "
            f"{archiver.get('last_failed_wal')} at {failed}); run 'postgressor backup check' for the cause"
        )
    return ""


def backup_status(host: HostRecord) -> dict[str, Any]:
    """Last good backup, WAL archiving (pg_stat_archiver) and the scheduled backups; ``error`` when broken."""
    script = (
        f'echo @@info; {PGBACKREST} --output=json info 2>&1; rc=$?; echo; echo "@@info_rc=$rc"; '
        f"echo @@archiver; {psql(ARCHIVER_SQL)} 2>&1; "
        'echo @@units; for t in full diff; do echo "$t=$(systemctl is-failed pgbackrest-backup@$t.service)"; done'
    )
    result = _run(host, script, timeout=120)
    sections = _sections(result.stdout)
    report: dict[str, Any] = {"last_backup": None, "backups": 0, "archive": None, "archiver": None,
                              "failed_units": []}  # fmt: skip
    problems = []
    info_text = sections.get("info", "")
    try:
        parsed = parse_info(info_text)
        report["repository"] = parsed["status"]
        report["backups"] = len(parsed["backups"])
        report["archive"] = parsed["archive"]
        good = [b for b in parsed["backups"] if not b["error"]]
        if good:
            last = {k: v for k, v in good[-1].items() if k != "stop_epoch"}
            report["last_backup"] = last
        problems.append(info_problem(parsed))
    except PostgressorError:
        problems.append(f"backup repository unreadable: {_one_line(pgbackrest_error(info_text))}")
    try:
        report["archiver"] = json.loads(sections.get("archiver", "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        report["archiver"] = None
    problems.append(archive_problem(report["archiver"]))
    units = dict(line.split("=", 1) for line in sections.get("units", "").splitlines() if "=" in line)
    report["failed_units"] = [f"pgbackrest-backup@{t}" for t, state in units.items() if state.strip() == "failed"]
    if report["failed_units"]:
        problems.append(f"scheduled backup {', '.join(report['failed_units'])} failed; see 'journalctl -u "
                        f"{report['failed_units'][0]}' on the box")  # fmt: skip
    problems = [p for p in problems if p]
    if problems:
        report["error"] = problems[0]
    return report


def _sections(stdout: str) -> dict[str, str]:
    """Split ``@@name`` marked output into sections (``@@name=value`` lines become their own entries)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in stdout.splitlines():
        if line.startswith("@@"):
            name, sep, value = line[2:].partition("=")
            if sep:
                sections[name] = [value]
            else:
                current = name
                sections[current] = []
        elif current:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


# ---- backup now / check / passphrase ---------------------------------------------------------------------


def backup_now(host: HostRecord, kind: str) -> dict[str, Any]:
    if kind not in BACKUP_TYPES:
        raise UsageError(f"unknown backup type '{kind}'; choose one of {', '.join(BACKUP_TYPES)}")
    result = _run(host, f"{PGBACKREST} --type={kind} backup 2>&1", timeout=BACKUP_TIMEOUT)
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
    result = _run(host, f"{PGBACKREST} check 2>&1", timeout=600)
    if not result.ok:
        raise PostgressorError(
            f"backup check failed: {pgbackrest_error(result.stdout + result.stderr)}; fix the repository "
            "(see /var/log/pgbackrest on the box) and run 'postgressor backup check' again"
        )
    status = backup_status(host)  # reads the repository too: its problems come first
    if status.get("error"):
        raise PostgressorError(f"backup check failed: {status['error']}")
    return {"ok": True, "backups": status["backups"], "last_backup": status["last_backup"],
            "archiver": status["archiver"], "archive": status["archive"]}  # fmt: skip


def passphrase(host: HostRecord) -> str:
    result = _run(host, f"cat {secret_path(CIPHER_SECRET)}")
    if not result.ok or not result.stdout.strip():
        raise PostgressorError("the box has no backup passphrase yet; run 'postgressor deploy'")
    return result.stdout.strip()


# ---- restore ---------------------------------------------------------------------------------------------


def parse_target(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--to-time '{text}' is not a time; use ISO 8601 like 2026-05-01T12:30:00Z or '2026-05-01 12:30:00+02:00'"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def pg_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def choose_set(backups: list[dict[str, Any]], target: datetime | None) -> dict[str, Any]:
    """The newest good backup finished before ``target`` (the newest good one for the latest state)."""
    good = [b for b in backups if not b["error"]]
    if not good:
        raise PostgressorError("no backup to restore from; run 'postgressor backup now' first")
    if target is None:
        return good[-1]
    before = [b for b in good if b["stop_epoch"] and b["stop_epoch"] < target.timestamp()]
    if not before:
        raise UsageError(
            f"no backup finished before {pg_time(target)}; the earliest restorable time is {good[0]['stop']}"
        )
    return before[-1]


def restore_command(target: datetime | None, label: str) -> str:
    command = f"{PGBACKREST} --delta --set={shlex.quote(label)}"
    if target is not None:
        command += f" --type=time --target={shlex.quote(pg_time(target))} --target-action=promote"
    return f"{command} restore 2>&1"


def _slots(host: HostRecord) -> list[str] | None:
    result = _run(host, psql(SLOTS_SQL))
    try:
        return list(json.loads(result.stdout.strip())) if result.ok else None
    except ValueError:
        return None


def restore(host: HostRecord, version: int, target: datetime | None, log: Log) -> dict[str, Any]:
    """Stop Electric, the gateway and PostgreSQL ``version`` (the one recorded in the state); restore (to ``target``
    or the latest state); start them."""
    parsed = info(host)
    problem = info_problem(parsed)
    if problem and not parsed["backups"]:
        raise PostgressorError(f"cannot restore: {problem}")
    chosen = choose_set(parsed["backups"], target)
    unit = postgres_unit(version)
    probe = _run(
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
        result = _run(host, f"{PGBACKREST} check 2>&1", timeout=600)
        if not result.ok:
            raise PostgressorError(
                f"cannot archive the current WAL before restoring: {pgbackrest_error(result.stdout)}; fix it "
                f"(postgressor backup check), or stop {unit} on the box to restore only what is archived"
            )
        report["slots_before"] = _slots(host)
    running = [u for u in SYNC_UNITS if facts.get(f"unit_{u}") == "active"]
    for name in [*running, unit]:
        log(f"stopping {name}")
        stop = _run(host, f"systemctl stop {name}", timeout=300)
        if not stop.ok:
            raise PostgressorError(f"cannot stop {name}: {stop.stderr.strip()}; nothing was restored")
        report["stopped"].append(name)
    log(f"restoring backup {chosen['label']} ({report['target']}) with pgBackRest --delta")
    result = _run(host, restore_command(target, chosen["label"]), timeout=BACKUP_TIMEOUT)
    if not result.ok:
        raise PostgressorError(
            f"restore failed: {pgbackrest_error(result.stdout)}; PostgreSQL and {', '.join(running) or 'sync'} "
            "are stopped: fix the cause and run 'postgressor restore' again"
        )
    log(f"starting {unit} and replaying WAL")
    wait = (
        f"systemctl start {unit} || exit 1; for i in $(seq 3600); do "
        f'[ "$({psql("SELECT pg_is_in_recovery()")} 2>/dev/null)" = f ] && exit 0; '
        f"systemctl is-active -q {unit} || exit 1; sleep 1; done; exit 1"
    )
    started = _run(host, wait, timeout=BACKUP_TIMEOUT)
    if not started.ok:
        tail = _run(host, f"grep -E 'FATAL|PANIC' {postgres_log(version)} | tail -n 1")
        cause = tail.stdout.strip() or started.stderr.strip() or "see /var/log/postgresql on the box"
        raise PostgressorError(
            f"PostgreSQL did not finish recovery after the restore: {cause}; fix the cause and run "
            "'postgressor restore' again (Electric and the gateway stay stopped)"
        )
    report["started"].append(unit)
    report["slots_after"] = _slots(host)
    if "electric" in running:
        # Shapes hold data up to an LSN of the lost timeline: rebuild them all from the restored database.
        cleared = _run(host, f"find {ELECTRIC_STORAGE} -mindepth 1 -delete")
        report["electric_storage_cleared"] = cleared.ok
    for name in running:
        log(f"starting {name}")
        if not _run(host, f"systemctl start {name}", timeout=300).ok:
            raise PostgressorError(f"the database is restored but {name} did not start; see 'journalctl -u {name}'")
        report["started"].append(name)
    report["notes"] = restore_notes(report, "electric" in running)
    return report


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
