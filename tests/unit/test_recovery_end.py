"""Where a restore to the end of the archive stopped, against the newest archived segment (checks/recovery_end.py),
and the restored marker that carries it from the box. The real recovery over a gap is in
tests/integration/test_restore_new_stack.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from postgressor.box.operations import read_restored_marker, restored_marker_command
from postgressor.checks.recovery_end import (
    RecoveryEnd,
    parse_recovery_end,
    segment_name,
    segment_number,
    short_of_archive,
)

MB16 = 16 * 1024 * 1024
# A history file as PostgreSQL 15 writes it at promotion (timeline.c writeTimeLineHistory): the parent's lines,
# then "<parent timeline>\t<switch point>\t<reason>"; timeline 3 branched off 2 at 0/5000098.
HISTORY = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000098\tno recovery target specified\n"
COMMIT = "2026-12-02 04:40:56.123456+00"
LOG_LINE = f"2026-12-02 04:41:01.001 UTC [812] LOG:  last completed transaction was at log time {COMMIT}"


def output(history: str | None = HISTORY, size: int = MB16, log: str = LOG_LINE) -> str:
    return json.dumps({"history": history, "segment_size": size}) + ("\n" + log if log else "")


def test_the_history_files_last_line_says_where_recovery_ended() -> None:
    end = parse_recovery_end(output())
    assert end == RecoveryEnd(2, 0x5000098, MB16, COMMIT)
    assert end.lsn_text == "0/5000098" and end.first_unread == 6  # 0/5000098 lies in segment 5


@pytest.mark.parametrize("text", [
    output(history=None),  # never promoted: no history file
    output(history="# only a comment\n"),
    output(size=0),
    "",
    "psql: error: connection refused",
    json.dumps({"history": "2\tnot-an-lsn\tx\n", "segment_size": MB16}),
    json.dumps(["not", "an", "object"]),
])  # fmt: skip
def test_an_unreadable_end_is_none(text: str) -> None:
    assert parse_recovery_end(text) is None


def test_no_commit_line_leaves_it_out() -> None:
    end = parse_recovery_end(output(log=""))
    assert end is not None and end.last_commit == ""
    assert "its last commit" not in short_of_archive(end, "000000020000000000000009")


@pytest.mark.parametrize(("lsn", "newest", "short"), [
    (0x5000098, "000000020000000000000005", False),  # ended in the newest segment (after its switch record)
    (0x6000000, "000000020000000000000005", False),  # ended exactly at its end: the next one was never archived
    (0x5000098, "000000020000000000000006", True),  # segment 6 was archived and not replayed
    (0x6000000, "000000020000000000000006", True),
    (0x5000098, "000000020000000100000000", True),  # past a log boundary
    (0x5000098, "000000030000000000000005", True),  # a newer timeline recovery never reached
    (0x5000098, "000000010000000000000009", False),  # an older timeline's higher segments were abandoned
    (0x5000098, None, False),  # nothing known of the archive: nothing claimed
    (0x5000098, "00000002000000000000000G", False),
])  # fmt: skip
def test_a_shortfall_is_an_archived_segment_at_or_past_the_first_unread(lsn: int, newest: str | None,
                                                                        short: bool) -> None:  # fmt: skip
    assert bool(short_of_archive(RecoveryEnd(2, lsn, MB16, COMMIT), newest)) is short


def test_the_shortfall_names_the_missing_segment_the_newest_and_the_last_commit() -> None:
    line = short_of_archive(RecoveryEnd(2, 0x5000098, MB16, COMMIT), "000000020000000000000009")
    assert line.startswith("the restore stopped short of the archive: recovery ended at 0/5000098 on timeline 2 "
                           f"(its last commit: {COMMIT}), but the repository holds WAL up to "
                           "000000020000000000000009; segment 000000020000000000000006 is missing or unreadable")
    assert "postgressor backup now --type full" in line and "\n" not in line
    later = short_of_archive(RecoveryEnd(2, 0x5000098, MB16), "000000030000000000000002")
    assert "up to timeline 3, which recovery never reached" in later


def test_segment_names_follow_the_segment_size() -> None:
    assert segment_number("0000000200000001000000FF", MB16) == (2, 0x1FF)
    assert segment_name(2, 0x1FF, MB16) == "0000000200000001000000FF"
    size64 = 64 * 1024 * 1024  # 64 segments a log: 0/3FFFFFFF is segment 0x0F, the next log starts at 0x40
    assert segment_name(1, 0x40, size64) == "000000010000000100000000"
    assert segment_number("000000010000000100000000", size64) == (1, 0x40)
    end = RecoveryEnd(1, 0x3FFFFFFF, size64)
    assert end.first_unread == 0x10 and not short_of_archive(end, "00000001000000000000000F")
    assert "segment 000000010000000000000010 " in short_of_archive(end, "000000010000000100000000")


def shell_marker(tmp_path: Path, archive_max: str, psql_output: str, psql_rc: int = 0) -> str:
    """restored_marker_command run by sh, with psql, grep and the marker path swapped for stand-ins."""
    marker = tmp_path / "restored-from"
    (tmp_path / "pg.log").write_text(f"noise\n{LOG_LINE}\n")
    command = restored_marker_command("d1g", "20261202-040000F", archive_max, 15)
    stand_in = f"printf '%s\\n' {json.dumps(psql_output)}; exit {psql_rc}"
    command = (command.replace("/var/lib/postgressor/applied/restored-from", str(marker))
               .replace("/var/log/postgresql/postgresql-15-main.log", str(tmp_path / "pg.log"))
               .replace("cd / && runuser -u postgres -- psql", f"sh -c {json.dumps(stand_in)} --"))  # fmt: skip
    assert str(marker) in command and str(tmp_path / "pg.log") in command, command
    subprocess.run(["sh", "-ec", command], check=True, capture_output=True, text=True)
    return marker.read_text()


def test_the_marker_carries_where_recovery_ended(tmp_path: Path) -> None:
    text = shell_marker(tmp_path, "000000020000000000000009", json.dumps({"history": HISTORY, "segment_size": MB16}))
    marker = read_restored_marker(text)
    assert (marker.digest, marker.label) == ("d1g", "20261202-040000F")
    assert "segment 000000020000000000000006 is missing" in marker.shortfall and COMMIT in marker.shortfall


def test_a_failed_read_still_writes_the_marker_and_claims_nothing(tmp_path: Path) -> None:
    marker = read_restored_marker(shell_marker(tmp_path, "000000020000000000000009", "psql: error", psql_rc=2))
    assert (marker.digest, marker.label, marker.shortfall) == ("d1g", "20261202-040000F", "")


def test_a_point_in_time_restore_and_an_older_marker_carry_no_end() -> None:
    assert restored_marker_command("d1g", "L", "", 15) == "echo d1g L > /var/lib/postgressor/applied/restored-from"
    assert read_restored_marker("d1g 20261125-040122F\n") == read_restored_marker("d1g 20261125-040122F")
    assert read_restored_marker("d1g 20261125-040122F").shortfall == "" and read_restored_marker("").digest == ""
