"""Proof that one backup set restores to a consistent database, read over SSH from the box's pgBackRest 2.45
repository; it changes nothing.

What is proven, in three SSH round trips:

1. ``info --set=L``: the set is listed, is a full backup, has pgBackRest's error flag clear, and has a WAL range
   (archive start and stop). The archive id (``15-1``) of its database is taken from the same output;
2. ``repo-ls`` of the archive directories that range spans: each segment from start to stop is there exactly
   once. Recovery from the set replays these segments to reach consistency (the backup ran with archive-check,
   which waited until its stop segment was archived);
3. ``verify``: it read the set's files back intact (its line ``backup: L, status: valid``), and nothing it found
   wrong names the set, its archive id or one of its segments.

``verify`` alone proves none of this in 2.45. The lab on the real binaries and the source
(src/command/verify/verify.c at tag release/2.45) show why:

- ``--set`` is internal for verify and ignored, so verify checks the whole repository;
- verify never checks that a backup's WAL is present. verify.c:1697 says "Need to do the final reconciliation -
  checking backup required WAL against, valid WAL", so a missing segment passes;
- verify exits 0 even with ``status: error``;
- most reasons appear only at log level INFO.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from postgressor.box.layout import PGBACKREST_STANZA, PGBACKREST_VERIFY, pgbackrest_listings, pgbackrest_set_info
from postgressor.checks.backups import info_stanza, one_line, pgbackrest_error, run_backup_command
from postgressor.errors import PostgressorError
from postgressor.state import HostRecord

ARCHIVE = f"archive/{PGBACKREST_STANZA}"  # the stanza's WAL in the repository: <archive id>/<first 16>/<segment>
SEGMENT = re.compile(r"[0-9A-F]{24}")
ARCHIVE_ID = re.compile(r"\d+-\d+")
# Segments per "log" number (the middle 8 hex digits): 4 GiB / 16 MB. pgBackRest 2.45 gives the segment size
# nowhere (not in info, backup.manifest or archive.info), so 16 MB is assumed. That is PostgreSQL's default and
# what the box's initdb uses. Another size makes the check refuse, never pass wrongly. A range that crosses a log
# boundary then has names this sequence does not expect (…3F is followed by the next log's …00 with 64 MB, which
# leaves …40 to …FF "missing"). A low part beyond …FF with smaller segments is refused as a name.
SEGMENTS_PER_LOG = 0x100
MAX_SEGMENTS = 100_000  # a backup's own WAL range beyond this (1.6 TB written while it ran) is refused as absurd
# A WAL segment in the archive: <segment>-<sha1 of its content>[.<compression>] (pgBackRest 2.45 archive-push).
# Encryption keeps the name. <segment>.<offset>.backup and .partial files are no segments.
WAL_FILE = re.compile(r"([0-9A-F]{24})-[0-9a-f]{40}(?:\.(?:gz|zst|lz4|bz2))?")

# pgbackrest verify --output=text --verbose prints its report at the start of the line (src/command/verify/verify.c
# at release/2.45, verifyProcess, line 1712: "stanza: %s\nstatus: %s"; verifyRender, line 1430:
# "\n  backup: %s, status: %s, total files checked: %u, total valid files: %u"). With --log-level-console=info the
# same report is logged again, but there every line after the first is indented by 36 spaces, so these patterns
# match only the printed copy.
STATUS_LINE = re.compile(r"status: (ok|error)")
BACKUP_LINE = re.compile(r"  backup: (\S+), status: ([^,]+), total files checked: (\d+), total valid files: (\d+)")
REPORT_LINE = re.compile(r"  (\S.*)")  # another problem verify reports as text ("No usable backup.info file")
# A log line on stdout ("2026-12-01 02:51:53.029 P01   INFO: …"), or on stderr without time and process (WARN
# and ERROR, pgBackRest's default log-level-stderr=warn; the command joins stderr to stdout)
LOG_LINE = re.compile(r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} )?(?:P\d+ +)?(INFO|WARN|ERROR): (.*)")
NOT_REASONS = ("verify command begin", "verify command end", "stanza: ")  # framing and the logged report
# What verify's reasons name (verify.c at release/2.45):
# - archive ids missing from the history (line 1232);
# - duplicate WAL (line 577);
# - WAL files, as <archive id>/<first 16>/<segment>-… (lines 1162, 1166, 1657);
# - backup sets, by label alone or as <label>/… for one of their files (lines 440, 466, 1056, 1166, 1657).
NOT_IN_HISTORY = re.compile(r"archiveIds '([^']*)' are not in the archive.info history list")
DUPLICATE = re.compile(r"duplicate WAL '([0-9A-F]{24})' for '([^']*)'")
WAL_PATH = re.compile(r"(\d+-\d+)/[0-9A-F]{16}/([0-9A-F]{24})")
LABEL = re.compile(r"(?<![\w-])(\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?)(?![\w-])")


@dataclass(frozen=True)
class BackupSet:
    """A backup set as ``info`` lists it: its WAL range and the archive id that range is archived under."""

    label: str
    archive_id: str
    wal_start: str
    wal_stop: str


def parse_set_info(text: str, label: str) -> BackupSet:
    """Backup set ``label`` from ``pgbackrest --output=json --set=L info``; PostgressorError (the reason) unless it is
    a full backup without errors and with a WAL range, whose database has one archive id."""
    entry = info_stanza(text)
    if entry is None:
        raise PostgressorError(f"pgBackRest info lists no stanza '{PGBACKREST_STANZA}'")
    status = entry.get("status") or {}
    if status.get("code") != 0:  # 6 "requested backup not found" for a label it does not hold
        raise PostgressorError(
            f"pgBackRest info: {one_line(str(status.get('message', 'no status')))} (status {status.get('code')})"
        )
    item = next((b for b in entry.get("backup") or [] if isinstance(b, dict) and b.get("label") == label), None)
    if item is None:
        raise PostgressorError("pgBackRest info does not list it")
    if item.get("type") != "full":
        raise PostgressorError(f"pgBackRest info lists it as a {item.get('type')} backup, not a full one")
    if item.get("error", False) is not False:  # 2.45: page checksum errors were found in the copied files
        raise PostgressorError(f"pgBackRest info marks it as in error (error: {json.dumps(item.get('error'))})")
    wal = item.get("archive") or {}
    start, stop = wal.get("start"), wal.get("stop")
    if not isinstance(start, str) or not isinstance(stop, str):
        raise PostgressorError("pgBackRest info gives no WAL range for it (archive start and stop)")
    database = (item.get("database") or {}).get("id")
    archives = [a for a in entry.get("archive") or [] if isinstance(a, dict)]
    ids = [a.get("id") for a in archives if database is not None and (a.get("database") or {}).get("id") == database]
    if len(ids) != 1 or not isinstance(ids[0], str) or not ARCHIVE_ID.fullmatch(ids[0]):
        raise PostgressorError(f"pgBackRest info names no single archive id for its database (id {database})")
    return BackupSet(label, ids[0], start, stop)


def wal_segments(start: str, stop: str) -> list[str]:
    """Every WAL segment name from ``start`` to ``stop``, both included, on their timeline (16 MB segments: the
    low 8 hex digits wrap after 000000FF into the middle 8)."""
    for name in (start, stop):
        if not SEGMENT.fullmatch(name) or int(name[16:], 16) >= SEGMENTS_PER_LOG:
            raise PostgressorError(f"'{name}' is not the name of a 16 MB WAL segment")
    if start[:8] != stop[:8]:
        raise PostgressorError(f"its WAL range {start} to {stop} spans two timelines")
    first, last = (int(name[8:16], 16) * SEGMENTS_PER_LOG + int(name[16:], 16) for name in (start, stop))
    if last < first:
        raise PostgressorError(f"its WAL range ends ({stop}) before it starts ({start})")
    if last - first >= MAX_SEGMENTS:
        raise PostgressorError(f"its WAL range {start} to {stop} spans {last - first + 1} segments, more than a "
                               f"backup of a box writes ({MAX_SEGMENTS}, 1.6 TB)")  # fmt: skip
    return [f"{start[:8]}{n // SEGMENTS_PER_LOG:08X}{n % SEGMENTS_PER_LOG:08X}" for n in range(first, last + 1)]


def archive_directories(backup: BackupSet, segments: list[str]) -> list[str]:
    """The repository directories holding ``segments``: one per distinct first 16 characters."""
    return sorted({f"{ARCHIVE}/{backup.archive_id}/{segment[:16]}" for segment in segments})


def wal_problem(listings: str, backup: BackupSet, segments: list[str]) -> str:
    """Why the listings (``layout.pgbackrest_listings`` output) do not hold each of ``segments`` exactly once,
    or ''."""
    try:
        listed = json.loads(listings)
    except ValueError:
        listed = None
    if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
        return f"the repository's WAL listing is unreadable: {one_line(pgbackrest_error(listings))}"
    count: Counter[str] = Counter()
    for entries in listed.values():
        for name, entry in entries.items():
            found = WAL_FILE.fullmatch(name)
            if found and isinstance(entry, dict) and entry.get("type") == "file":
                count[found.group(1)] += 1
    where = f"{ARCHIVE}/{backup.archive_id}"
    span = f"the range {backup.wal_start} to {backup.wal_stop} it needs"
    missing = [s for s in segments if count[s] == 0]
    if missing:
        more = f" ({len(missing) - 1} more of its {len(segments)} are missing too)" if len(missing) > 1 else ""
        return f"WAL segment {missing[0]} is not in {where}: a gap in {span}{more}"
    twice = [s for s in segments if count[s] > 1]
    if twice:
        return (f"WAL segment {twice[0]} is in {where} {count[twice[0]]} times, in {span}; pgBackRest's "
                "archive-get refuses a duplicated segment")  # fmt: skip
    return ""


def concerns(reason: str, backup: BackupSet, segments: set[str]) -> bool | None:
    """True when verify's ``reason`` names the set, its archive id as missing from the history, or one of its WAL
    segments in that archive id; False when it names only other backups, archive ids or segments; None when it
    names none of these, so it may concern anything."""
    named = False
    for found in NOT_IN_HISTORY.finditer(reason):
        if backup.archive_id in found.group(1).split(", "):
            return True
        named = True
    wal = [(m.group(2), m.group(1)) for m in DUPLICATE.finditer(reason)]
    wal += [(m.group(1), m.group(2)) for m in WAL_PATH.finditer(reason)]
    for archive_id, segment in wal:
        if archive_id == backup.archive_id and segment in segments:
            return True
        named = True
    for found in LABEL.finditer(reason):
        if found.group(1) == backup.label:
            return True
        named = True
    return False if named else None


def verify_verdict(output: str, backup: BackupSet, segments: list[str]) -> list[str]:
    """What ``pgbackrest verify`` (``layout.PGBACKREST_VERIFY``) found wrong elsewhere in the repository (tolerated:
    see below); PostgressorError (the reason) unless it read the set back intact and found nothing wrong with
    the set or its WAL."""
    status, line, reasons = "", None, []
    for text in output.splitlines():
        if logged := LOG_LINE.fullmatch(text):
            if not logged.group(2).startswith(NOT_REASONS):
                reasons.append(logged.group(2).strip())
        elif printed := STATUS_LINE.fullmatch(text):
            status = printed.group(1)
        elif listed := BACKUP_LINE.fullmatch(text):
            if listed.group(1) == backup.label:
                line = listed
            elif listed.group(2) != "valid":
                reasons.append(f"backup '{listed.group(1)}' has status {listed.group(2)}")
        elif (other := REPORT_LINE.fullmatch(text)) and not other.group(1).startswith(("archiveId: ", "backup: ")):
            reasons.append(other.group(1))
    if not status:
        raise PostgressorError(f"pgbackrest verify printed no status: {one_line(pgbackrest_error(output))}")
    judged = [(reason, concerns(reason, backup, set(segments))) for reason in reasons]
    ours = next((reason for reason, about in judged if about), "")
    if line is None or line.group(2) != "valid" or line.group(3) != line.group(4) or line.group(3) == "0":
        said = (f"lists it with status {line.group(2)}, {line.group(4)} of {line.group(3)} files valid" if line
                else "does not list it")  # fmt: skip
        why = ours or next((reason for reason, about in judged if about is None), "")
        raise PostgressorError(f"pgbackrest verify {said}" + (f": {one_line(why)}" if why else ""))
    if ours:
        raise PostgressorError(f"pgbackrest verify reports: {one_line(ours)}")
    if status == "ok":
        return []
    # status: error, and no reason names the set or its WAL. Destroy still goes ahead when every reason names
    # only other backups, other archive ids, or segments outside the set's range. Restoring this set needs its
    # files, its archive id and the segments from its start to its stop. Verify has just read all of them back
    # intact, and a stray archive id, a broken older backup or a bad segment outside the range leaves that
    # restore whole. Refusing here would leave only --skip-final-backup, which destroys the server with no final
    # backup at all: less data kept, not more. Those reasons are returned so that destroy names them.
    # A reason that names no backup, archive id or segment might concern this set, so it refuses: destroy cannot
    # be undone. So does an error without any reason.
    unknown = next((reason for reason, about in judged if about is None), "")
    if unknown or not reasons:
        why = one_line(unknown) if unknown else "it names no reason, even at log level info"
        raise PostgressorError(f"pgbackrest verify reports status: error: {why}")
    return [one_line(reason) for reason, _ in judged]


def prove(host: HostRecord, label: str, timeout: float) -> dict[str, Any]:
    """Prove that backup set ``label`` restores to consistency from the box's repository (see the module's
    docstring). Returns its archive id, WAL range, segment count, and the ``repository_problems`` verify reported
    elsewhere. PostgressorError carries the reason when it does not restore. ``timeout`` bounds verify, which
    reads the whole repository."""
    result = run_backup_command(host, pgbackrest_set_info(label))
    if not result.ok:
        raise PostgressorError(f"pgBackRest info failed: {pgbackrest_error(result.stdout + result.stderr)}")
    backup = parse_set_info(result.stdout, label)
    segments = wal_segments(backup.wal_start, backup.wal_stop)
    directories = archive_directories(backup, segments)
    result = run_backup_command(host, pgbackrest_listings(directories), timeout=120 + 10 * len(directories))
    if not result.ok:
        raise PostgressorError(f"pgBackRest repo-ls failed: {pgbackrest_error(result.stdout + result.stderr)}")
    problem = wal_problem(result.stdout, backup, segments)
    if problem:
        raise PostgressorError(problem)
    result = run_backup_command(host, PGBACKREST_VERIFY, timeout=timeout)
    if not result.ok:  # 2.45 exits 0 when it finds errors: this is verify failing to run at all
        raise PostgressorError(f"pgbackrest verify could not run: {pgbackrest_error(result.stdout + result.stderr)}")
    elsewhere = verify_verdict(result.stdout, backup, segments)
    return {"archive_id": backup.archive_id, "wal_start": backup.wal_start, "wal_stop": backup.wal_stop,
            "wal_segments": len(segments), "repository_problems": elsewhere}  # fmt: skip
