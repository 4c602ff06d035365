"""apt that waits like a person would: the retry of lock failures, run by a real shell (box/operations.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from postgressor.box.operations import retry_while_locked


def fake_apt(tmp_path: Path, failures: list[str]) -> str:
    """A command that prints each of ``failures`` and exits 100 on its successive runs, then succeeds."""
    script = tmp_path / "apt-get"
    lines = "\n".join(f"[ \"$n\" = {i} ] && {{ echo {text!r}; exit 100; }}" for i, text in enumerate(failures))
    script.write_text(f"#!/bin/sh\nn=$(cat {tmp_path}/runs 2>/dev/null || echo 0)\necho $((n + 1)) > {tmp_path}/runs\n"
                      f"{lines}\necho 'Reading package lists... Done'\n")  # fmt: skip
    script.chmod(0o755)
    return str(script)


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_a_held_lists_lock_is_waited_for(tmp_path: Path) -> None:
    held = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)"
    proc = subprocess.run(["sh", "-c", retry_while_locked(fake_apt(tmp_path, [held]))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert runs(tmp_path) == 2


def test_dpkgs_frontend_lock_is_waited_for(tmp_path: Path) -> None:
    held = "dpkg: error: dpkg frontend lock was locked by another process with pid 977"
    proc = subprocess.run(["sh", "-c", retry_while_locked(fake_apt(tmp_path, [held]))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and runs(tmp_path) == 2, proc.stderr


def test_any_other_failure_is_not_retried(tmp_path: Path) -> None:
    broken = "E: The repository 'http://deb.example bookworm Release' does not have a Release file."
    proc = subprocess.run(["sh", "-c", retry_while_locked(fake_apt(tmp_path, [broken]))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and runs(tmp_path) == 1
    assert "does not have a Release file" in proc.stderr
