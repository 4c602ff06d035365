"""Output to a pipe or CI log: no line wrapped, no table cell cut (rich would assume 80 columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor.cli import app, backup_cmds
from postgressor.state import HostRecord

LABEL = "20261130-100812F_20261130-101503D"


def test_backup_list_keeps_timestamps_whole_in_a_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    parsed: dict[str, Any] = {
        "backups": [{"label": LABEL, "type": "diff", "start": "2026-11-30T10:08:12+00:00",
                     "stop": "2026-11-30T10:15:03+00:00", "size": 123456789, "repo_size": 23456789}],
        "archive": {"min": "000000010000000000000003", "max": "00000001000000000000001A"},
        "cipher": "aes-256-cbc",
    }  # fmt: skip
    monkeypatch.setattr(backup_cmds, "_host", lambda ctx: HostRecord("192.0.2.1", 22, "root", "k"))
    monkeypatch.setattr(backup_cmds.health, "info", lambda host: parsed)
    monkeypatch.setattr(backup_cmds.health, "info_problem", lambda parsed: "")
    result = CliRunner().invoke(app, ["backup", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if LABEL in line)
    assert "2026-11-30T10:08:12+00:00" in row and "2026-11-30T10:15:03+00:00" in row
    assert "…" not in result.output.replace("00000003 … 0000", "")
    assert any(line.startswith("WAL archived:") and line.endswith("(cipher aes-256-cbc)") for line in lines)


def test_long_lines_are_not_wrapped_in_a_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    domain = "sync." + "very-long-subdomain-name." * 6 + "example.com"
    (tmp_path / "postgressor.toml").write_text(f'[https]\ndomain = "{domain}"\n')
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert f"https.domain = '{domain}'" in result.output.splitlines()
