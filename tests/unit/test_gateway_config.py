"""Gateway settings that cannot break out: refused at `config check` with the reason (issue #18, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.config import load_settings
from postgressor.errors import ConfigError


def check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postgressor.toml").write_text(toml)
    result = CliRunner().invoke(app, ["config", "check"])
    return result.exit_code, result.output


@pytest.mark.parametrize("where", [
    "archived = false) OR (true", "true) OR (1 = 1", "archived = false --", "true; DROP TABLE t",
    "true ORDER BY 1", "true UNION SELECT 1",
])
def test_config_check_refuses_a_where_that_is_not_one_expression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 where: str) -> None:
    code, output = check(tmp_path, monkeypatch, f'[[sync.tables]]\nname = "todos"\nwhere = "{where}"\n')
    assert code == 2, output
    assert "sync.tables" in output and "one SQL expression" in output
    assert "Traceback" not in output


def test_config_check_accepts_one_expression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = check(tmp_path, monkeypatch,
                         '[supabase]\njwks_url = "https://ref.supabase.co/auth/v1/.well-known/jwks.json"\n\n'
                         '[[sync.tables]]\nname = "todos"\nowner_column = "user_id"\n'
                         'where = "archived = false OR pinned"\n')
    assert code == 0, output


@pytest.mark.parametrize(("origins", "reason"), [
    ('["*"]', "'*' is refused"), ('["https://app.example.com/"]', "exact origin"), ('["null"]', "'null'"),
])
def test_cors_origins_must_be_exact(tmp_path: Path, origins: str, reason: str) -> None:
    path = tmp_path / "postgressor.toml"
    path.write_text(f"[gateway]\ncors_origins = {origins}\n")
    with pytest.raises(ConfigError, match=reason.replace("*", r"\*")):
        load_settings(path)



@pytest.mark.parametrize(("tables", "reason"), [
    ('[[sync.tables]]\nname = "todos"\nowner_column = "user_id"\ncolumns = ["id"]\n', "owner column"),
    ('[[sync.tables]]\nname = "todos"\nowner_column = "user_id"\n[[sync.tables]]\nname = "todos"\n'
     'owner_column = "author"\n', "more than once"),
    ('[[sync.tables]]\nname = ""\nowner_column = "user_id"\n', "non-empty names"),
    ('[[sync.tables]]\nname = "todos"\nowner_column = ""\n', "owner_column is empty"),
])
def test_config_check_refuses_tables_the_gateway_would_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tables: str, reason: str) -> None:
    code, output = check(tmp_path, monkeypatch, tables)
    assert code == 2 and reason in output, output
    assert "Traceback" not in output
