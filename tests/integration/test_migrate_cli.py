"""The migrate CLI with --database-url, and the missing-role-privilege message (on a cluster of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import APP_PASSWORD, APP_ROLE
from pgcluster import running_cluster
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.errors import PostgressorError
from postgressor.migrations import runner

OR_CONFIG = """
[[sync.tables]]
name = "OR"
owner_column = "user_id"

[migrations]
directory = "db"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSTGRESSOR_DATABASE_URL", raising=False)
    (tmp_path / "postgressor.toml").write_text(OR_CONFIG)
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "0001_or.sql").write_text('CREATE TABLE "OR" (id bigserial PRIMARY KEY, user_id text);\n')
    return tmp_path


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), catch_exceptions=True)
    return result


def test_cli_dry_run_then_apply_then_up_to_date(pg_cluster, app_db, project):
    url = pg_cluster.url(app_db, APP_ROLE, APP_PASSWORD)
    dry = invoke("--json", "migrate", "--database-url", url, "--dry-run")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["pending"] == ["postgressor/0001_supabase_auth.sql", "postgressor/0002_one_identity.sql", "0001_or.sql"]
    assert plan["tables"][0]["missing"] is True
    assert APP_PASSWORD not in dry.output
    with pg_cluster.connect(app_db) as su:  # the dry run changed nothing
        assert su.execute("SELECT to_regclass('postgressor.schema_migrations')").fetchone() == (None,)

    applied = invoke("migrate", "--database-url", url, "--yes")
    assert applied.exit_code == 0, applied.output
    assert "applied 0001_or.sql" in applied.stdout
    assert '"public"."OR": enable RLS, force RLS, create postgressor_owner_select' in applied.stdout
    summary = applied.stdout.strip().splitlines()[-1]
    assert summary.endswith(" is up to date: applied 3 migrations now, 0 were applied before"), summary

    again = invoke("--json", "migrate", "--database-url", url, "--yes")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["pending"] == []
    assert all(p["action"] == "unchanged" for p in json.loads(again.stdout)["tables"][0]["policies"])


def test_cli_database_url_from_environment_and_confirmation(pg_cluster, app_db, project, monkeypatch):
    monkeypatch.setenv("POSTGRESSOR_DATABASE_URL", pg_cluster.url(app_db, APP_ROLE, APP_PASSWORD))
    monkeypatch.setenv("CI", "true")
    refused = invoke("migrate")
    assert refused.exit_code == 2
    assert "pass --yes" in refused.stderr and refused.stderr.count("\n") == 1
    with pg_cluster.connect(app_db) as su:
        assert su.execute("""SELECT to_regclass('public."OR"')""").fetchone() == (None,)
    assert invoke("migrate", "--yes").exit_code == 0


def test_cli_connection_failure_masks_the_password(pg_cluster, app_db, project):
    url = pg_cluster.url(app_db, APP_ROLE, "wrong-secret-pw")
    result = invoke("migrate", "--database-url", url, "--yes")
    assert result.exit_code == 1
    message = result.stderr
    assert "wrong-secret-pw" not in message and "password authentication failed" in message
    assert f"{APP_ROLE}@127.0.0.1:{pg_cluster.port}/{app_db}" in message


def test_cli_missing_configured_directory_is_a_usage_error(pg_cluster, app_db, project):
    result = invoke("migrate", "--database-url", pg_cluster.url(app_db, APP_ROLE, APP_PASSWORD), "--dir", "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: migrations directory nope not found")


def test_role_without_createrole_gets_a_clear_message(tmp_path):
    with running_cluster() as pg:  # a cluster of its own: the Supabase roles must not exist yet
        pg.ensure_role("weak", "weak-pw", "NOSUPERUSER", "NOCREATEROLE")
        db = pg.create_database(owner="weak")
        with pg.connect(db, "weak", "weak-pw") as conn, pytest.raises(PostgressorError) as caught:
            runner.run(conn, runner.builtin_migrations(), [])
        message = str(caught.value)
        assert 'role "weak" may not create the roles anon, authenticated, service_role' in message
        wanted = "CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN; CREATE ROLE service_role NOLOGIN"
        assert wanted in message
        assert "built-in 0001_supabase_auth.sql line" in message
        with pg.connect(db) as su:
            assert su.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'anon'").fetchone() == (0,)
            su.execute("CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN; CREATE ROLE service_role NOLOGIN")
        with pg.connect(db, "weak", "weak-pw") as conn:  # once a superuser made them, it goes through
            assert [a.name for a in runner.run(conn, runner.builtin_migrations(), []).applied] == [
                m.name for m in runner.builtin_migrations()]
