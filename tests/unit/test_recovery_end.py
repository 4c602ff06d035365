"""Where a restore to the end of the archive stopped, against the newest archived segment (checks/recovery_end.py);
the restored marker that carries it from the box; the warning status keeps. The real recovery over a gap is in
tests/integration/test_restore_new_stack.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from postgressor.box.operations import read_restored_marker, restored_marker_command
from postgressor.checks.recovery_end import (
    RECOVERY_END_COMMAND,
    RecoveryEnd,
    parse_recovery_end,
    segment_name,
    segment_number,
    short_of_archive,
    short_restore_warning,
)

MB16 = 16 * 1024 * 1024
# A history file as PostgreSQL 15 writes it at promotion (timeline.c writeTimeLineHistory): the parent's lines,
# then "<parent timeline>\t<switch point>\t<reason>"; timeline 3 branched off 2 at 0/5000098.
HISTORY = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000098\tno recovery target specified\n"
COMMIT = "2026-12-02T04:40:56.123456+00:00"  # pg_last_xact_replay_timestamp() as json_build_object prints it


def output(history: str | None = HISTORY, size: int = MB16, commit: str | None = COMMIT) -> str:
    return json.dumps({"history": history, "segment_size": size, "last_commit": commit}) + "\n"


def end_at(lsn: int, *, parents: tuple[tuple[int, int], ...] = (), timeline: int = 2) -> RecoveryEnd:
    return RecoveryEnd((*parents, (timeline, lsn)), MB16, COMMIT)


def test_the_history_files_last_line_says_where_recovery_ended() -> None:
    end = parse_recovery_end(output())
    assert end == RecoveryEnd(((1, 0x3000000), (2, 0x5000098)), MB16, COMMIT)
    assert end.lsn_text == "0/5000098" and end.timeline == 2 and end.first_unread == 6  # 0/5000098: segment 5


@pytest.mark.parametrize("text", [
    output(history=None),  # never promoted: no history file
    output(history="# only a comment\n"),
    output(size=0),
    output(size=2**33),  # not a size initdb allows (a power of two, 1 MB to 1 GB)
    output(size=3 * MB16),
    output(history="0\t0/5000098\tx\n"),  # timelines start at 1
    output(history="4294967296\t0/5000098\tx\n"),  # and are 32-bit
    output(history="1\t0/100\tx\n" * 10_001),
    "",
    "psql: error: connection refused",
    json.dumps({"history": "2\tnot-an-lsn\tx\n", "segment_size": MB16}),
    json.dumps(["not", "an", "object"]),
])  # fmt: skip
def test_an_unreadable_end_is_none(text: str) -> None:
    assert parse_recovery_end(text) is None


@pytest.mark.parametrize("commit", [12, "2026-12-02 04:40:56\x1b[2J", "x" * 100, "2026-12-02T04:40:56+00:00\nnext"])
def test_a_commit_time_that_is_not_a_timestamp_is_left_out(commit: object) -> None:
    end = parse_recovery_end(output(commit=commit))  # type: ignore[arg-type]
    assert end is not None and end.last_commit == ""


def test_no_replayed_commit_leaves_it_out() -> None:
    end = parse_recovery_end(output(commit=None))
    assert end is not None and end.last_commit == ""
    assert "last replayed commit" not in short_of_archive(end, "000000020000000000000009")


@pytest.mark.parametrize(("end", "newest", "short"), [
    (end_at(0x5000098), "000000020000000000000005", False),  # ended in the newest segment (after its switch record)
    (end_at(0x6000000), "000000020000000000000005", False),  # ended exactly at its end: the next was never archived
    (end_at(0x5000098), "000000020000000000000006", True),  # segment 6 was archived and not replayed
    (end_at(0x6000000), "000000020000000000000006", True),
    (end_at(0x5000098), "000000020000000100000000", True),  # past a log boundary
    (end_at(0x5000098), "000000030000000000000005", False),  # timeline 3 is not on recovery's path: no claim
    (end_at(0x5000098, parents=((1, 0x3000000),)), "000000010000000000000009", False),  # before the branch: older
    (end_at(0x5000098), None, False),  # nothing known of the archive: nothing claimed
    (end_at(0x5000098), "00000002000000000000000G", False),
    # Recovery followed timeline 2 (which began at 0/9000000) but ended on timeline 1 at 0/5000098, before it:
    (end_at(0x5000098, parents=((1, 0x9000000),)), "000000020000000000000009", True),
    (end_at(0x5000098, parents=((1, 0x9000000),)), "000000010000000000000008", True),  # the gap is on timeline 1
    (end_at(0x5000098, parents=((1, 0x9000000),)), "000000010000000000000005", False),
])  # fmt: skip
def test_a_shortfall_is_an_archived_segment_at_or_past_the_first_unread(end: RecoveryEnd, newest: str | None,
                                                                        short: bool) -> None:  # fmt: skip
    assert bool(short_of_archive(end, newest)) is short


def test_the_shortfall_names_the_unread_segment_the_newest_and_the_last_commit() -> None:
    line = short_of_archive(end_at(0x5000098), "000000020000000000000009")
    assert line == ("the restore stopped short of the archive: recovery ended at 0/5000098 on timeline 2, after its "
                    f"last replayed commit of {COMMIT}, but the repository holds WAL up to 000000020000000000000009: "
                    "segment 000000020000000000000006 could not be read (missing from the repository, or a read "
                    "error), so what was written after that point is not in the restored database. PostgreSQL runs "
                    "on what was restored; the repository still holds the WAL after the gap, and a later restore "
                    "--latest follows the new timeline, so it does not cross the gap either")
    # Ended on timeline 1 before timeline 2 began: the segment recovery could not read is timeline 1's.
    earlier = short_of_archive(end_at(0x5000098, parents=((1, 0x9000000),)), "000000020000000000000009")
    assert "on timeline 1," in earlier and "segment 000000010000000000000006 could not be read" in earlier
    # The first unread segment holds the switch to timeline 2: its file carries timeline 2.
    switch = short_of_archive(end_at(0x5FFFFFF, parents=((1, 0x6000010),)), "000000020000000000000009")
    assert "segment 000000020000000000000006 could not be read" in switch


def test_segment_names_follow_the_segment_size() -> None:
    assert segment_number("0000000200000001000000FF", MB16) == (2, 0x1FF)
    assert segment_name(2, 0x1FF, MB16) == "0000000200000001000000FF"
    size64 = 64 * 1024 * 1024  # 64 segments a log: 0/3FFFFFFF is segment 0x0F, the next log starts at 0x40
    assert segment_name(1, 0x40, size64) == "000000010000000100000000"
    assert segment_number("000000010000000100000000", size64) == (1, 0x40)
    end = RecoveryEnd(((1, 0x3FFFFFFF),), size64)
    assert end.first_unread == 0x10 and not short_of_archive(end, "00000001000000000000000F")
    assert "segment 000000010000000000000010 " in short_of_archive(end, "000000010000000100000000")


def shell_marker(tmp_path: Path, archive_max: str, psql_output: str, psql_rc: int = 0) -> str:
    """restored_marker_command run by sh, with psql and the marker path swapped for stand-ins."""
    marker = tmp_path / "restored-from"
    command = restored_marker_command("d1g", "20261202-040000F", archive_max)
    stand_in = f"printf '%s\\n' {json.dumps(psql_output)}; exit {psql_rc}"
    command = (command.replace("/var/lib/postgressor/applied/restored-from", str(marker))
               .replace(RECOVERY_END_COMMAND, f"sh -c {json.dumps(stand_in)}"))  # fmt: skip
    assert str(marker) in command and "sh -c" in command, command
    subprocess.run(["sh", "-ec", command], check=True, capture_output=True, text=True)
    assert not (tmp_path / "restored-from.new").exists()
    return marker.read_text()


def test_the_marker_carries_where_recovery_ended(tmp_path: Path) -> None:
    text = shell_marker(tmp_path, "000000020000000000000009", output().strip())
    marker = read_restored_marker(text)
    assert (marker.digest, marker.label, marker.checked) == ("d1g", "20261202-040000F", True)
    assert "segment 000000020000000000000006 could not be read" in marker.shortfall and COMMIT in marker.shortfall


def test_a_failed_read_still_writes_the_marker_and_says_it_is_unchecked(tmp_path: Path) -> None:
    marker = read_restored_marker(shell_marker(tmp_path, "000000020000000000000009", "psql: error", psql_rc=2))
    assert (marker.digest, marker.label, marker.shortfall, marker.checked) == ("d1g", "20261202-040000F", "", False)


def test_a_label_that_is_not_pgbackrests_is_not_repeated() -> None:
    assert read_restored_marker("d1g 20261125-040122F_20261126-013000D").label == "20261125-040122F_20261126-013000D"
    for odd in ("d1g \x1b[2J", "d1g a b", "d1g " + "9" * 200):
        assert read_restored_marker(odd).label == "(unreadable label)", odd


def test_a_point_in_time_restore_and_an_older_marker_carry_no_end() -> None:
    assert restored_marker_command("d1g", "L", "") == "echo d1g L > /var/lib/postgressor/applied/restored-from"
    assert read_restored_marker("d1g 20261125-040122F\n") == read_restored_marker("d1g 20261125-040122F")
    older = read_restored_marker("d1g 20261125-040122F")
    assert (older.shortfall, older.checked) == ("", True) and read_restored_marker("").digest == ""


def test_status_warns_until_a_backup_finished_after_the_short_restore() -> None:
    recorded = {"at": "2026-12-02T04:50:00+00:00", "line": short_of_archive(end_at(0x5000098),
                                                                              "000000020000000000000009")}
    before = {"label": "20261202-013000F", "stop": "2026-12-02T01:31:00+00:00"}
    warning = short_restore_warning(recorded, before)
    assert warning.startswith("the restore of 2026-12-02T04:50:00+00:00 stopped short of the archive: recovery "
                              "ended at 0/5000098 on timeline 2")
    assert warning.endswith("a backup clears this warning (postgressor backup now)")
    assert short_restore_warning(recorded, None) == warning
    assert short_restore_warning(recorded, {"stop": "2026-12-02T05:10:00+00:00"}) == ""
    assert short_restore_warning({}, None) == ""
