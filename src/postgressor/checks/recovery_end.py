"""Did a restore to "the end of the archive" reach it? Where recovery ended, compared with the newest WAL segment
the repository held when the restore began.

PostgreSQL replays archived WAL until ``restore_command`` cannot fetch the next segment, then promotes, and calls
that the end of the archive. A segment missing in the middle (dropped from pgBackRest's archive queue during an
outage, lost from the repository, or not fetched because of a read error) ends recovery there, silently:
everything written after it is not restored, yet PostgreSQL, pgBackRest and the restore all report success. A
restore to a point in time cannot stop short unnoticed: PostgreSQL 13+ refuses to promote before its target
("recovery ended before configured recovery target was reached"), so only restores to the latest state are
checked.

Where recovery ended is read from the new timeline's history file, which PostgreSQL writes at promotion
(xlog.c StartupXLOG and timeline.c writeTimeLineHistory, PostgreSQL 15): the lines of the timeline recovery
followed (each ``<timeline>\\t<LSN where the next one begins>\\t<reason>``), then ``<that timeline>\\t<end of
recovery>``. Recovery may end on an ancestor of the timeline it followed, before that one began: the end lies on
the first timeline of the path whose switch point is past it. The last replayed commit is
``pg_last_xact_replay_timestamp()``, which keeps its value once recovery has ended.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from postgressor.box.layout import psql
from postgressor.checks.backups import backed_up_after

# One JSON line: the newest timeline history file in pg_wal (text), the WAL segment size (bytes, PostgreSQL 11+)
# and the time of the last commit recovery replayed (null when it replayed none).
RECOVERY_END_SQL = (
    "SELECT json_build_object("
    "'history', (SELECT pg_read_file('pg_wal/' || name) FROM pg_ls_waldir() "
    "WHERE name ~ '^[0-9A-F]{8}\\.history$' ORDER BY name DESC LIMIT 1), "
    "'segment_size', (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
    "'last_commit', pg_last_xact_replay_timestamp(), 'read_at', now())"
)
RECOVERY_END_COMMAND = psql(RECOVERY_END_SQL)
SEGMENT = re.compile(r"[0-9A-F]{24}")
LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
# What the box says is checked before it is printed or stored: a timestamp as PostgreSQL prints one (no escape
# sequences, no length), segment sizes initdb allows (powers of two, 1 MB to 1 GB), 32-bit timelines.
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([+-]\d{2}(:?\d{2})?)?")
SEGMENT_SIZES = frozenset(1 << n for n in range(20, 31))
MAX_HISTORY = 10_000  # timelines on one path; a real history has one line per promotion
UNCHECKED = ("where recovery ended could not be read, so whether this restore reached the end of the archive is "
             "not checked: compare its newest rows with what you expect")  # fmt: skip


@dataclass(frozen=True)
class RecoveryEnd:
    """Where recovery ended. ``path``: (timeline, LSN in bytes where the next one begins) for each timeline recovery
    followed, oldest first; the last switch point is the end of recovery. ``segment_size`` in bytes;
    ``last_commit``: the last replayed commit's time as PostgreSQL printed it ('' when none); ``read_at``: the
    box's time of the reading (the state records a short restore with it, as backups are timed by that clock)."""

    path: tuple[tuple[int, int], ...]
    segment_size: int
    last_commit: str = ""
    read_at: str = ""  # the box's clock when this was read (ISO 8601), '' when unknown

    @property
    def lsn(self) -> int:
        return self.path[-1][1]

    @property
    def lsn_text(self) -> str:
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"

    @property
    def timeline(self) -> int:
        """The timeline recovery ended on: the first of the path whose switch point lies past the end."""
        return next((tli for tli, switch in self.path[:-1] if switch > self.lsn), self.path[-1][0])

    @property
    def first_unread(self) -> int:
        """The number of the first segment recovery did not replay (the one after the end's, or the one the end
        starts exactly)."""
        return -(-self.lsn // self.segment_size)

    def file_timeline(self, number: int) -> int:
        """The timeline in the name of segment ``number`` as recovery asks for it: the newest timeline of the path
        that begins at or before that segment (a timeline begins at its parent's switch point)."""
        begins = [(tli, 0 if i == 0 else self.path[i - 1][1]) for i, (tli, _) in enumerate(self.path)]
        return max(tli for tli, start in begins if start // self.segment_size <= number)


def parse_recovery_end(output: str) -> RecoveryEnd | None:
    """``RECOVERY_END_COMMAND``'s output as a RecoveryEnd; None when there is no history file (the cluster never
    promoted) or the output is not understood."""
    try:
        found = json.loads(output.strip().splitlines()[0])
        size = int(found["segment_size"])
        path = []
        for line in (found.get("history") or "").splitlines():
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0].strip().isdigit():
                continue  # blank lines and comments
            lsn = LSN.fullmatch(fields[1].strip())
            if lsn is None:
                return None
            path.append((int(fields[0]), (int(lsn[1], 16) << 32) + int(lsn[2], 16)))
            if len(path) > MAX_HISTORY or not 0 < path[-1][0] <= 0xFFFFFFFF:
                return None
        commit, read_at = (found.get(key) or "" for key in ("last_commit", "read_at"))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    if size not in SEGMENT_SIZES or not path:
        return None
    return RecoveryEnd(tuple(path), size, _timestamp(commit), _timestamp(read_at))


def _timestamp(value: object) -> str:
    return value if isinstance(value, str) and TIMESTAMP.fullmatch(value) else ""


def segment_number(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, segment number) of WAL segment ``name`` (24 hex digits: timeline, then the number as a "log"
    of 4 GiB and the segment within it)."""
    per_log = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def short_of_archive(end: RecoveryEnd, archive_max: str | None) -> str:
    """'' when recovery replayed the archive to its end, else one line: where recovery stopped, the first segment
    it could not read, and what that means. ``archive_max``: the newest segment the repository held (pgBackRest's
    info: the highest timeline's newest); None, a malformed name, or a timeline off recovery's path claims
    nothing."""
    if not archive_max or not SEGMENT.fullmatch(archive_max):
        return ""
    timeline, newest = segment_number(archive_max, end.segment_size)
    if timeline not in {tli for tli, _ in end.path}:
        return ""  # an abandoned branch: its segments are not recovery's to reach
    if timeline < end.timeline or (timeline == end.timeline and newest < end.first_unread):
        return ""
    unread = segment_name(end.file_timeline(end.first_unread), end.first_unread, end.segment_size)
    when = f", after its last replayed commit of {end.last_commit}" if end.last_commit else ""
    return (
        f"the restore stopped short of the archive: recovery ended at {end.lsn_text} on timeline {end.timeline}"
        f"{when}, but the repository holds WAL up to {archive_max}: segment {unread} could not be read (missing "
        "from the repository, or a read error), so what was written after that point is not in the restored "
        "database. PostgreSQL runs on what was restored; the repository still holds the WAL after the gap, and a "
        "later restore --latest follows the new timeline, so it does not cross the gap either"
    )


def short_restore_warning(recorded: dict[str, str], last_backup: dict[str, Any] | None) -> str:
    """The warning status shows while the last restore is known to have stopped short of the archive (``recorded``:
    the state's ``short_restore``) and no backup has finished since (``last_backup``: status's); '' otherwise."""
    if not recorded.get("at"):
        return ""
    try:
        if backed_up_after(last_backup, recorded["at"]):
            return ""
    except ValueError:  # a hand-edited state file: keep warning
        pass
    why = recorded.get("line", "").removeprefix("the restore stopped short of the archive: ")
    return (f"the restore of {recorded['at']} stopped short of the archive: {why}; once you have checked the "
            "restored data, a backup clears this warning (postgressor backup now)")
