"""Did a restore to "the end of the archive" reach it? Where recovery ended, compared with the newest WAL segment
the repository held when the restore began.

PostgreSQL replays archived WAL until ``restore_command`` cannot fetch the next segment, then promotes, and calls
that the end of the archive. A segment missing in the middle (dropped from pgBackRest's archive queue during an
outage, or lost in the repository) ends recovery there, silently: everything written after it is not restored,
yet PostgreSQL, pgBackRest and the restore all report success. A restore to a point in time cannot stop short
unnoticed: PostgreSQL 13+ refuses to promote before its target ("recovery ended before configured recovery
target was reached"), so only restores to the latest state are checked.

Where recovery ended is read from the new timeline's history file, which PostgreSQL writes at promotion: its last
line is ``<parent timeline>\\t<switch point LSN>\\t<reason>`` (src/backend/access/transam/timeline.c,
writeTimeLineHistory, PostgreSQL 15). Recovery ends in the segment holding the switch point, or exactly at its
start; the archive reaching a segment at or past the first one recovery could not read is a shortfall.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from postgressor.box.layout import postgres_log, psql

# One JSON line: the newest timeline history file in pg_wal (text) and the WAL segment size (bytes, PostgreSQL 11+).
RECOVERY_END_SQL = (
    "SELECT json_build_object("
    "'history', (SELECT pg_read_file('pg_wal/' || name) FROM pg_ls_waldir() "
    "WHERE name ~ '^[0-9A-F]{8}\\.history$' ORDER BY name DESC LIMIT 1), "
    "'segment_size', (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'))"
)
# PostgreSQL logs this at the end of recovery (xlogrecovery.c, PerformWalRecovery, PostgreSQL 15)
LAST_COMMIT = "last completed transaction was at log time"
SEGMENT = re.compile(r"[0-9A-F]{24}")


def recovery_end_command(version: int | str) -> str:
    """Shell printing where the last recovery of PostgreSQL ``version`` ended: ``RECOVERY_END_SQL``'s JSON line,
    then the log's last "last completed transaction" line (none when recovery replayed no commit)."""
    return f"{psql(RECOVERY_END_SQL)} && {{ grep -h '{LAST_COMMIT}' {postgres_log(version)} | tail -n 1; true; }}"


@dataclass(frozen=True)
class RecoveryEnd:
    """Where recovery ended: ``timeline`` it replayed last, ``lsn`` (bytes) where the next timeline starts,
    ``segment_size`` in bytes, ``last_commit`` as PostgreSQL logged it ('' when unknown)."""

    timeline: int
    lsn: int
    segment_size: int
    last_commit: str = ""

    @property
    def lsn_text(self) -> str:
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"

    @property
    def first_unread(self) -> int:
        """The number of the first segment recovery did not replay (the one after the switch point's, or the one
        the switch point starts exactly)."""
        return -(-self.lsn // self.segment_size)


def parse_recovery_end(output: str) -> RecoveryEnd | None:
    """``recovery_end_command``'s output as a RecoveryEnd; None when there is no history file (the cluster never
    promoted) or the output is not understood."""
    lines = output.strip().splitlines()
    try:
        found = json.loads(lines[0]) if lines else {}
        history = [line.split("\t") for line in (found.get("history") or "").splitlines()]
        entries = [fields for fields in history if len(fields) >= 2 and fields[0].strip().isdigit()]
        if not entries:
            return None
        high, low = entries[-1][1].strip().split("/")
        size = int(found["segment_size"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if size <= 0:
        return None
    commit = next((line.split(LAST_COMMIT, 1)[1].strip() for line in lines[1:] if LAST_COMMIT in line), "")
    return RecoveryEnd(int(entries[-1][0]), (int(high, 16) << 32) + int(low, 16), size, commit)


def segment_number(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, segment number) of WAL segment ``name`` (24 hex digits: timeline, then the number as a "log"
    of 4 GiB and the segment within it)."""
    per_log = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def short_of_archive(end: RecoveryEnd, archive_max: str | None) -> str:
    """'' when recovery replayed the archive to its end (``archive_max``: the newest segment the repository held,
    from pgBackRest's info; None or unknown is taken as reached); else one line: where recovery stopped, the first
    segment it could not read, and what that means."""
    if not archive_max or not SEGMENT.fullmatch(archive_max):
        return ""
    timeline, newest = segment_number(archive_max, end.segment_size)
    if timeline < end.timeline or (timeline == end.timeline and newest < end.first_unread):
        return ""
    missing = segment_name(end.timeline, end.first_unread, end.segment_size)
    when = f" (its last commit: {end.last_commit})" if end.last_commit else ""
    reach = (f"timeline {timeline}, which recovery never reached" if timeline > end.timeline
             else f"{archive_max}")  # fmt: skip
    return (
        f"the restore stopped short of the archive: recovery ended at {end.lsn_text} on timeline {end.timeline}"
        f"{when}, but the repository holds WAL up to {reach}; segment {missing} is missing or unreadable (dropped "
        "from the archive queue during an outage, or lost from the repository), so what was written after that "
        "point is not in the restored database. PostgreSQL runs on what was restored; no restore can replay past "
        "the gap, so take a new full backup now (postgressor backup now --type full)"
    )
