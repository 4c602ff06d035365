"""The health wait http_ready yields, run by sh against stand-ins for curl, date, sleep and journalctl."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from fake_host import FakeHost

from postgressor.box import operations

URL = "http://127.0.0.1:3000/v1/health"
SHIMS = {
    "curl": 'n=$(cat "$STUB/answers" | wc -l); code=$(sed -n 1p "$STUB/answers"); '
            '[ "$n" -gt 1 ] && sed -i 1d "$STUB/answers"; printf %s "$code"',
    # Each call is one second later: the deadline is the box's clock, not a count of tries.
    "date": 't=$(cat "$STUB/clock"); echo $((t + 1)) > "$STUB/clock"; echo "$t"',
    "sleep": "exit 0",
    "journalctl": 'echo "$*" > "$STUB/journal-args"; printf "%s\\n\\n" "cannot reach PostgreSQL yet, retrying"',
}


@pytest.fixture
def box(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    for name, body in SHIMS.items():
        path = tmp_path / "bin" / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "clock").write_text("1000\n")
    return tmp_path


def wait(box: Path, answers: list[str], monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess[str]:
    (box / "answers").write_text("".join(f"{a}\n" for a in answers))
    monkeypatch.setattr(operations, "host", FakeHost({f"HttpStatus:{URL}": answers[0]}))
    (script,) = operations.http_ready._inner(URL, 10, "electric")
    env = {**os.environ, "PATH": f"{box / 'bin'}:{os.environ['PATH']}", "STUB": str(box)}
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)


def test_ready_after_a_while(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = wait(box, ["202", "202", "200"], monkeypatch)
    assert proc.returncode == 0, proc.stderr


def test_never_ready_names_the_last_answer_and_the_units_last_line(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = wait(box, ["000", "202"], monkeypatch)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"{URL} did not answer 200 within 10 s (last: HTTP 202; electric last logged: cannot reach PostgreSQL "
        "yet, retrying); see journalctl -u electric on the box"
    )
    assert "-u electric" in (box / "journal-args").read_text()
    assert int((box / "clock").read_text()) <= 1000 + 2 * 10 + 3  # stops at the deadline


def test_no_answer_at_all_says_so(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = wait(box, ["000"], monkeypatch)
    assert proc.returncode == 1 and "(last: no answer;" in proc.stderr
