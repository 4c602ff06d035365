"""destroy's final backup is proven restorable: each way the proof (checks.restorable) refuses, on real pgBackRest
2.45 outputs (restorable_fixtures/README.md), and the numbering of WAL segments across the wrap."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_safe_destroy import HEALTHY, LABEL, WAL_START, WAL_STOP, Box, fixture

from postgressor.checks import backups as health
from postgressor.checks import restorable
from postgressor.day2 import destroy as safe_destroy
from postgressor.errors import PostgressorError
from postgressor.state import HostRecord

HOST = HostRecord("203.0.113.7", 22, "root", "k", "ssh-ed25519 AAAA")
SET_INFO = f"--set={LABEL} info"
RANGE = ["0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001",
         "000000010000000100000002", "000000010000000100000003", "000000010000000100000004"]  # fmt: skip


def run_final(monkeypatch: pytest.MonkeyPatch, **answers: tuple[int, str]) -> tuple[dict[str, Any], Box]:
    """final_backup against the recorded box, with ``answers`` (by HEALTHY pattern) replacing healthy ones."""
    box = Box({**HEALTHY, **{pattern: answer for pattern, answer in answers.items()}})
    monkeypatch.setattr(health, "run", box)
    return safe_destroy.final_backup(HOST), box


def refusal(monkeypatch: pytest.MonkeyPatch, **answers: tuple[int, str]) -> str:
    with pytest.raises(PostgressorError) as caught:
        run_final(monkeypatch, **answers)
    message = str(caught.value)
    assert "\n" not in message and message.endswith("; nothing was destroyed"), message
    assert f"the final backup {LABEL} did not verify: " in message and "--skip-final-backup" in message
    return message


def info_with(**changes: Any) -> str:
    """The real `info --set` output with the set's fields changed (None removes one)."""
    data = json.loads(fixture("info_set.json"))
    for key, value in changes.items():
        if value is None:
            del data[0]["backup"][0][key]
        else:
            data[0]["backup"][0][key] = value
    return json.dumps(data, separators=(",", ":"))


def test_a_clean_repository_proves_the_set_and_says_what_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    final, box = run_final(monkeypatch)
    assert final == {"label": LABEL, "bucket": "my-backups", "path": "/pgbackrest",
                     "endpoint": "fsn1.your-objectstorage.com", "archive_id": "15-1", "wal_start": WAL_START,
                     "wal_stop": WAL_STOP, "wal_segments": 6, "repository_problems": []}  # fmt: skip
    listings = [c for c in box.commands if "repo-ls" in c]
    assert len(listings) == 1 and len(box.commands) == 8  # one round trip lists both archive directories
    assert listings[0].count(" repo-ls ") == 2
    assert "repo-ls archive/main/15-1/0000000100000000" in listings[0]
    assert "repo-ls archive/main/15-1/0000000100000001" in listings[0]
    verify = next(c for c in box.commands if c.endswith(" verify 2>&1"))
    assert "--output=text --verbose --log-level-console=info" in verify and "--set" not in verify


def test_segment_names_wrap_into_the_middle_part() -> None:
    assert restorable.wal_segments(WAL_START, WAL_STOP) == RANGE
    assert restorable.wal_segments("00000002000000FF000000FE", "0000000200000100 00000001".replace(" ", "")) == [
        "00000002000000FF000000FE", "00000002000000FF000000FF", "000000020000010000000000",
        "000000020000010000000001"]  # fmt: skip
    assert restorable.wal_segments("000000010000000000000008", "000000010000000000000008") == [
        "000000010000000000000008"
    ]


@pytest.mark.parametrize(("start", "stop", "says"), [
    ("000000010000000000000005", "000000020000000000000006", "spans two timelines"),
    ("000000010000000000000006", "000000010000000000000005", "ends (000000010000000000000005) before it starts"),
    ("000000010000000000000100", "000000010000000000000101", "is not the name of a 16 MB WAL segment"),
    ("00000001000000000000000g", "000000010000000000000001", "is not the name of a 16 MB WAL segment"),
])  # fmt: skip
def test_a_range_that_is_no_16_mb_sequence_is_refused(start: str, stop: str, says: str) -> None:
    with pytest.raises(PostgressorError, match=r".*" + says.replace("(", r"\(").replace(")", r"\)")):
        restorable.wal_segments(start, stop)


def test_a_gap_in_the_range_is_named_though_verify_says_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "\nstatus: ok\n" in fixture("verify_gap.txt")  # pgBackRest 2.45 verify misses it
    message = refusal(monkeypatch, **{"repo-ls": (0, fixture("listings_gap.json")),
                                      " verify": (0, fixture("verify_gap.txt"))})  # fmt: skip
    assert (f"WAL segment 000000010000000100000002 is not in archive/main/15-1: a gap in the range {WAL_START} "
            f"to {WAL_STOP} it needs") in message  # fmt: skip


def test_several_missing_segments_are_counted() -> None:
    backup = restorable.BackupSet(LABEL, "15-1", WAL_START, WAL_STOP)
    listing = json.dumps({"archive/main/15-1/0000000100000000": {".": {"type": "path"}},
                          "archive/main/15-1/0000000100000001": {}})  # fmt: skip
    problem = restorable.wal_problem(listing, backup, RANGE)
    assert problem.startswith(f"WAL segment {WAL_START} is not in") and "(5 more of its 6 are missing too)" in problem


def test_a_duplicated_segment_in_the_range_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, **{"repo-ls": (0, fixture("listings_dup.json")),
                                      " verify": (0, fixture("verify_dup.txt"))})  # fmt: skip
    assert "WAL segment 000000010000000100000001 is in archive/main/15-1 2 times" in message
    assert "archive-get refuses a duplicated segment" in message


def test_backup_and_history_files_are_not_segments() -> None:
    """The listing's <segment>.<offset>.backup file (real: 0000000100000000000000FF.00000028.backup) and the
    directory entry do not count."""
    listed = json.loads(fixture("listings.json"))["archive/main/15-1/0000000100000000"]
    assert "0000000100000000000000FF.00000028.backup" in listed
    backup = restorable.BackupSet(LABEL, "15-1", WAL_START, WAL_START)
    assert restorable.wal_problem(fixture("listings.json"), backup, [WAL_START]) == ""


@pytest.mark.parametrize(("info", "says"), [
    (fixture("info_unknown_set.json"), "pgBackRest info: requested backup not found (status 6)"),
    (info_with(type="diff"), "pgBackRest info lists it as a diff backup, not a full one"),
    (info_with(error=True), "pgBackRest info marks it as in error (error: true)"),
    (info_with(archive=None), "pgBackRest info gives no WAL range for it"),
    (info_with(archive={"start": WAL_START}), "pgBackRest info gives no WAL range for it"),
    (info_with(database={"id": 2, "repo-key": 1}), "names no single archive id for its database (id 2)"),
    (info_with(label="20261201-025606F_20261201-030000D"), "pgBackRest info does not list it"),
    ("ERROR: [055]: unable to load info file", "pgBackRest info is unreadable: unable to load info file"),
])  # fmt: skip
def test_info_without_a_sound_full_set_refuses(monkeypatch: pytest.MonkeyPatch, info: str, says: str) -> None:
    message = refusal(monkeypatch, **{SET_INFO: (0, info)})
    assert says in message


def test_an_error_flag_absent_from_info_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    final, _ = run_final(monkeypatch, **{SET_INFO: (0, info_with(error=None))})
    assert final["wal_segments"] == 6


@pytest.mark.parametrize(("verify", "says"), [
    # a reason logged at INFO only, about a segment of the range; the set's own line says valid
    ("verify_wal_in_range.txt", "pgbackrest verify reports: invalid checksum "
     "'15-1/0000000100000001/000000010000000100000003-0177c1b0116524eee8c501bcb87cc92d5bca49ef.zst'"),
    ("verify_dup.txt", "pgbackrest verify reports: duplicate WAL '000000010000000100000001' for '15-1' exists"),
    ("verify_set_invalid.txt", "pgbackrest verify lists it with status invalid, 966 of 967 files valid: invalid "
     f"checksum '{LABEL}/pg_data/base/1/1259.zst'"),
    ("verify_unreachable.txt", "pgbackrest verify does not list it: No usable backup.info file"),
])  # fmt: skip
def test_verify_naming_the_set_or_its_wal_refuses(monkeypatch: pytest.MonkeyPatch, verify: str, says: str) -> None:
    message = refusal(monkeypatch, **{" verify": (0, fixture(verify))})
    assert says in message


def test_the_archive_id_of_the_set_outside_the_history_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = fixture("verify_hist.txt").replace("archiveIds '15-2'", "archiveIds '15-1, 15-2'")
    message = refusal(monkeypatch, **{" verify": (0, ours)})
    assert "pgbackrest verify reports: archiveIds '15-1, 15-2' are not in the archive.info history list" in message


@pytest.mark.parametrize(("verify", "problem"), [
    ("verify_hist.txt", "archiveIds '15-2' are not in the archive.info history list"),
    ("verify_wal_after_range.txt", "invalid checksum "
     "'15-1/0000000100000001/000000010000000100000005-df3dd3e2aea359472e9a57cf5b41eccad1587a55.zst'"),
])  # fmt: skip
def test_status_error_about_other_archive_ids_or_segments_is_named_not_refused(
    monkeypatch: pytest.MonkeyPatch, verify: str, problem: str
) -> None:
    assert "\nstatus: error\n" in fixture(verify)
    final, _ = run_final(monkeypatch, **{" verify": (0, fixture(verify))})
    assert final["repository_problems"] == [problem]
    line = safe_destroy.remaining(final, safe_destroy.Backups("s3", ""))
    assert line.endswith(f"; pgbackrest verify also reported, outside this backup and its WAL: {problem}")


def test_another_backup_in_error_is_named_not_refused() -> None:
    """Synthetic: the real report of a set with a bad file, that set renamed, and the final set's real line added."""
    other = "20261130-120000F"
    ours = next(line for line in fixture("verify_ok.txt").splitlines() if line.startswith(f"  backup: {LABEL}"))
    text = fixture("verify_set_invalid.txt").replace(LABEL, other) + ours + "\n"
    backup = restorable.BackupSet(LABEL, "15-1", WAL_START, WAL_STOP)
    problems = restorable.verify_verdict(text, backup, RANGE)
    assert problems == [f"invalid checksum '{other}/pg_data/base/1/1259.zst'",
                        f"backup '{other}' has status invalid"]  # fmt: skip


@pytest.mark.parametrize(("verify", "says"), [
    # synthetic: the real report of verify_hist.txt with a reason that names no backup, archive id or segment
    (fixture("verify_hist.txt").replace("archiveIds '15-2' are not in the archive.info history list",
                                        "backup.info does not match archive.info"),
     "pgbackrest verify reports status: error: backup.info does not match archive.info"),
    # synthetic: the real clean report, its status turned to error, with no reason anywhere
    (fixture("verify_ok.txt").replace("status: ok", "status: error"),
     "pgbackrest verify reports status: error: it names no reason, even at log level info"),
])  # fmt: skip
def test_status_error_that_may_concern_the_set_refuses(monkeypatch: pytest.MonkeyPatch, verify: str,
                                                       says: str) -> None:  # fmt: skip
    assert says in refusal(monkeypatch, **{" verify": (0, verify)})


@pytest.mark.parametrize(("broken", "answer", "says"), [
    (" verify", (29, fixture("verify_aborted.txt")),
     "pgbackrest verify could not run: zst error: [-20] Data corruption detected"),
    (" verify", (0, ""), "pgbackrest verify printed no status: no output"),
    (" verify", (255, "runuser: failed to execute pgbackrest: No such file or directory"),
     "pgbackrest verify could not run: pgBackRest is not installed on the box"),
    ("repo-ls", (41, '{"archive/main/15-1/0000000100000000":ERROR: [041]: unable to list file info for path'),
     "pgBackRest repo-ls failed: unable to list file info for path"),
    ("repo-ls", (0, '{"archive/main/15-1/0000000100000000":'), "the repository's WAL listing is unreadable"),
    (SET_INFO, (1, "ERROR: [103]: unable to find a valid repository"),
     "pgBackRest info failed: unable to find a valid repository"),
])  # fmt: skip
def test_a_check_that_cannot_run_refuses(monkeypatch: pytest.MonkeyPatch, broken: str, answer: tuple[int, str],
                                         says: str) -> None:  # fmt: skip
    assert says in refusal(monkeypatch, **{broken: answer})


def test_the_listing_is_one_json_object_for_any_path() -> None:
    from postgressor.box.layout import pgbackrest_listings

    command = pgbackrest_listings(["archive/main/15-1/0000000100000000", "a 'quoted' path"])
    assert command.count("repo-ls") == 2 and command.endswith("echo '}'")
    assert "printf '%s' '{\"archive/main/15-1/0000000100000000\":'" in command
    assert pgbackrest_listings([]) == "echo '{}'"


def test_an_absurd_wal_range_is_refused_not_listed() -> None:
    with pytest.raises(PostgressorError, match=r"spans 4294967295 segments, more than a backup of a box writes"):
        restorable.wal_segments("000000010000000000000001", "0000000100FFFFFF000000FF")
