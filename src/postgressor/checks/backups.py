"""Backup health, read over SSH: pgBackRest's repository (``info``), WAL archiving (pg_stat_archiver) and the
scheduled backup units. Used by ``status``, ``backup list|check`` and before a restore; it changes nothing.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from typing import Any

from postgressor.box.layout import (
    BACKUP_KINDS,
    BACKUP_UNIT,
    PGBACKREST_ASYNC_LOG,
    PGBACKREST_INFO,
    PGBACKREST_STANZA,
    WAL_DROPPED_MARK,
    backup_unit,
    psql,
)
from postgressor.errors import PostgressorError, UsageError
from postgressor.remote.ssh import CommandResult, run
from postgressor.state import HostRecord

ARCHIVER_SQL = (
    "SELECT json_build_object('archive_mode', current_setting('archive_mode'), "
    "'archived_count', archived_count, 'last_archived_wal', last_archived_wal, "
    "'last_archived_time', last_archived_time, 'failed_count', failed_count, 'last_failed_wal', last_failed_wal, "
    "'last_failed_time', last_failed_time, "
    "'seconds_since_archived', round(extract(epoch FROM now() - last_archived_time)), "
    "'ready_segments', (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')) "
    "FROM pg_stat_archiver"
)


def run_backup_command(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
    """``command`` on the box over SSH; a silent timeout becomes one line saying the command may still run."""
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


# ---- choosing what to restore ----------------------------------------------------------------------------


PG_TIME = "%Y-%m-%d %H:%M:%S.%f+00"  # a recovery target as postgressor gives it to pgBackRest (UTC)


def pg_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(PG_TIME)


def pg_moment(text: str) -> datetime:
    """The inverse of ``pg_time``."""
    return datetime.strptime(text, PG_TIME).replace(tzinfo=UTC)


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


# ---- pgbackrest info --output=json ------------------------------------------------------------------------


def _iso(epoch: Any) -> str | None:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat(timespec="seconds") if epoch else None


def info_stanza(text: str, stanza: str = PGBACKREST_STANZA) -> dict[str, Any] | None:
    """The stanza's entry in `pgbackrest info --output=json` (None when it lists no such stanza);
    PostgressorError when the output holds no JSON array."""
    line = next((ln for ln in text.split("\n") if ln.startswith("[{") or ln.strip() == "[]"), "")
    try:
        # strict=False: a wrong passphrase puts undecryptable bytes (control characters) into messages
        data = json.loads(line, strict=False) if line else None
    except ValueError:
        data = None
    if not isinstance(data, list):
        raise PostgressorError(f"pgBackRest info is unreadable: {one_line(pgbackrest_error(text))}")
    return next((s for s in data if isinstance(s, dict) and s.get("name") == stanza), None)


def parse_info(text: str, stanza: str = PGBACKREST_STANZA) -> dict[str, Any]:
    """The stanza's status, backups (oldest first) and WAL range from `pgbackrest info --output=json`."""
    entry = info_stanza(text, stanza)
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
        message = one_line(str(repo_problems[0]))  # more precise than the stanza's "other"
    dbs = entry.get("db") or []
    return {
        "status": {"code": status.get("code", 99), "message": message},
        "cipher": entry.get("cipher"),
        "pg_version": str(dbs[-1].get("version", "")) if dbs else "",  # of the newest database in the stanza
        "backups": backups,
        "archive": {"min": current.get("min"), "max": current.get("max")} if current else None,
    }


def one_line(message: str) -> str:
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
    result = run_backup_command(host, f"{PGBACKREST_INFO} 2>&1")
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


def dropped_at(line: str) -> str | None:
    """When pgBackRest last dropped queued WAL (ISO-8601 UTC), from its async log line
    ``2026-11-30 16:10:57.547 P00   WARN: dropped WAL file '...' because archive queue exceeded 16MB``; else None."""
    found = re.match(r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})", line.strip())
    return f"{found.group(1)}T{found.group(2)}+00:00" if found else None


def backed_up_after(last_backup: dict[str, Any] | None, moment: str) -> bool:
    """Whether ``last_backup`` (status's newest good backup) finished after ``moment`` (ISO 8601); ValueError when
    either is not a time."""
    stop = (last_backup or {}).get("stop")
    return isinstance(stop, str) and bool(stop) and datetime.fromisoformat(stop) > datetime.fromisoformat(moment)


def dropped_problem(dropped: str | None, last_backup: dict[str, Any] | None) -> str:
    """Why point-in-time recovery is broken since WAL was dropped from the archive queue, or '' when a backup
    finished after the drop (it restarts the chain)."""
    if dropped is None or backed_up_after(last_backup, dropped):
        return ""
    return (
        f"WAL was dropped from the archive queue at {dropped} (the repository was unreachable longer than "
        "backup.archive_queue_max_mb allows, so PostgreSQL kept running): point-in-time recovery cannot reach past "
        "that point; once 'postgressor backup check' passes, run 'postgressor backup now --type full'"
    )


def backup_status(host: HostRecord) -> dict[str, Any]:
    """Last good backup, WAL archiving (pg_stat_archiver) and the scheduled backups; ``error`` when broken."""
    script = (
        f'echo @@info; {PGBACKREST_INFO} 2>&1; rc=$?; echo; echo "@@info_rc=$rc"; '
        f"echo @@archiver; {psql(ARCHIVER_SQL)} 2>&1; "
        # rotated logs too (logrotate may have moved the line): the newest drop, as lines start with their time
        f"echo @@dropped; zgrep -h {shlex.quote(WAL_DROPPED_MARK)} {PGBACKREST_ASYNC_LOG}* 2>/dev/null "
        "| sort | tail -n 1; "
        f"echo @@units; for t in {' '.join(BACKUP_KINDS)}; do "
        f'echo "$t=$(systemctl is-failed {BACKUP_UNIT}@$t.service)"; done'
    )
    result = run_backup_command(host, script, timeout=120)
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
        problems.append(f"backup repository unreadable: {one_line(pgbackrest_error(info_text))}")
    try:
        report["archiver"] = json.loads(sections.get("archiver", "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        report["archiver"] = None
    problems.append(archive_problem(report["archiver"]))
    report["wal_dropped_at"] = dropped_at(sections.get("dropped", ""))
    problems.append(dropped_problem(report["wal_dropped_at"], report["last_backup"]))
    units = dict(line.split("=", 1) for line in sections.get("units", "").splitlines() if "=" in line)
    report["failed_units"] = [backup_unit(t) for t, state in units.items() if state.strip() == "failed"]
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
