"""Pure parts of migrate: statement splitting, checksums, ordering, drift detection, error lines, policy SQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from postgressor.config import SyncTable, load_settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.migrations import policies, runner, sqltext


def texts(source: str) -> list[str]:
    return [s.statement for s in sqltext.statements(source)]


def test_split_respects_quotes_comments_and_dollar_bodies():
    source = (
        "-- header; not a statement\n"
        "CREATE TABLE \"a;b\" (x text DEFAULT 'it''s; fine');\n"
        "/* block ; /* nested ; */ still comment */ SELECT E'back\\'slash;';\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;\n"
        "DO $$ BEGIN PERFORM 1; END $$;\n"
        "SELECT $1, a$b FROM t;\n"
    )
    assert texts(source) == [
        "CREATE TABLE \"a;b\" (x text DEFAULT 'it''s; fine');",
        "SELECT E'back\\'slash;';",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;",
        "DO $$ BEGIN PERFORM 1; END $$;",
        "SELECT $1, a$b FROM t;",
    ]


def test_split_keeps_sql_standard_function_bodies_whole():
    source = (
        "CREATE OR REPLACE FUNCTION g(x int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\n"
        "SELECT 3;"
    )
    parts = texts(source)
    assert len(parts) == 2 and parts[0].endswith("END;") and parts[1] == "SELECT 3;"


def test_split_marks_meta_commands_and_lines():
    source = "\\restrict abc\n\nCREATE TABLE t (x int);\n\n-- trailing\n\\unrestrict abc\n"
    segs = sqltext.statements(source)
    assert [(s.kind, s.line) for s in segs] == [("meta", 1), ("sql", 3), ("meta", 6)]
    assert "".join(s.text for s in sqltext.split(source)) == source


@given(st.text(alphabet=st.sampled_from(list("ab;'\"$-/*\n E\\x")), max_size=60))
def test_split_never_loses_or_invents_text(source):
    assert "".join(s.text for s in sqltext.split(source)) == source


def test_checksum_ignores_line_endings_but_not_content():
    assert runner.checksum("a\nb\n") == runner.checksum("a\r\nb\r\n")
    assert runner.checksum("a\nb\n") != runner.checksum("a\nb \n")
    assert len(runner.checksum("")) == 64


def test_project_migrations_in_name_order_only_sql(tmp_path: Path):
    for name in ("0010_later.sql", "0002_second.sql", "0001_first.sql", "README.md", ".0000_hidden.sql"):
        (tmp_path / name).write_text(f"-- {name}\n")
    (tmp_path / "0003_dir.sql").mkdir()
    assert [m.name for m in runner.project_migrations(tmp_path, True)] == [
        "0001_first.sql", "0002_second.sql", "0010_later.sql"]
    builtins = runner.all_migrations(tmp_path, True)[: len(runner.builtin_migrations())]
    assert builtins and all(m.name.startswith("postgressor/") for m in builtins)


def test_missing_directory_is_empty_unless_required(tmp_path: Path):
    assert runner.project_migrations(tmp_path / "nope", required=False) == []
    with pytest.raises(UsageError, match="not found"):
        runner.project_migrations(tmp_path / "nope", required=True)
    (tmp_path / "bad.sql").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        runner.project_migrations(tmp_path, True)


def test_pending_skips_applied_and_refuses_drift():
    a, b, c = (runner.Migration(n, f"SELECT '{n}';", f"migrations/{n}") for n in ("a.sql", "b.sql", "c.sql"))
    assert runner.pending([a, b, c], {"a.sql": a.checksum}) == [b, c]
    assert runner.pending([a, b, c], {m.name: m.checksum for m in (a, b, c)}) == []
    with pytest.raises(PostgressorError, match=r"migrations/b\.sql was changed after it was applied"):
        runner.pending([a, b, c], {"a.sql": a.checksum, "b.sql": "0" * 64})


class FakeDiag:
    def __init__(self, position: str | None = None, context: str | None = None) -> None:
        self.statement_position, self.context = position, context


class FakeError:
    def __init__(self, **kw: str | None) -> None:
        self.diag = FakeDiag(**kw)


def test_failure_line_from_position_plpgsql_context_or_statement():
    source = "SELECT 1;\n\n-- note\nSELECT x\n  FROM nowhere;\nDO $$\nBEGIN\n  RAISE 'x';\nEND $$;\n"
    second, third = sqltext.statements(source)[1:]
    offset_of_from = second.text.index("FROM") + 1
    assert runner.failure_line(second, FakeError(position=str(offset_of_from))) == 5  # type: ignore[arg-type]
    assert runner.failure_line(second, FakeError()) == 4  # type: ignore[arg-type]
    context = "PL/pgSQL function inline_code_block line 3 at RAISE"
    assert runner.failure_line(third, FakeError(context=context)) == 8  # type: ignore[arg-type]


def test_parse_table_name():
    assert policies.parse_table_name("OR") == policies.TableRef("public", "OR")
    assert policies.parse_table_name("app.Notes") == policies.TableRef("app", "Notes")
    assert str(policies.parse_table_name("OR")) == '"public"."OR"'
    for bad in (".x", "x.", "a.b.c"):
        with pytest.raises(UsageError):
            policies.parse_table_name(bad)


def test_policy_sql_for_each_command():
    ref = policies.parse_table_name("OR")
    check = policies.owner_check("user_id", "text")
    rendered = {c: policies.create_policy(ref, c, check).as_string(None) for c in policies.COMMANDS}
    expr = '"user_id" = (SELECT public.current_user_id())'
    assert rendered["select"] == (
        f'CREATE POLICY "postgressor_owner_select" ON "public"."OR" AS PERMISSIVE FOR SELECT TO PUBLIC USING ({expr})')
    assert rendered["insert"].endswith(f"FOR INSERT TO PUBLIC WITH CHECK ({expr})")
    assert "USING" not in rendered["insert"]
    assert rendered["update"].endswith(f"FOR UPDATE TO PUBLIC USING ({expr}) WITH CHECK ({expr})")
    assert rendered["delete"].endswith(f"FOR DELETE TO PUBLIC USING ({expr})")
    uuid_check = policies.owner_check("Owner", "uuid").as_string(None)
    assert uuid_check == '"Owner" = (SELECT public.current_user_id()::uuid)'


def test_policy_identifiers_are_quoted_not_interpolated():
    ref = policies.parse_table_name('we"ird')
    check = policies.owner_check('col"; DROP TABLE x; --', "text")
    text = policies.create_policy(ref, "select", check).as_string(None)
    assert '"we""ird"' in text and '"col""; DROP TABLE x; --"' in text
    assert isinstance(check, sql.Composed)


def test_sync_table_config_checks():
    with pytest.raises(UsageError, match="listed twice"):
        policies.check_config([SyncTable(name="OR"), SyncTable(name="public.OR")])
    with pytest.raises(UsageError, match="empty owner_column"):
        policies.check_config([SyncTable.model_construct(name="OR", owner_column="", columns=[], where="")])


def test_migrations_directory_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings().migrations.directory == Path("migrations")
    (tmp_path / "p.toml").write_text('[migrations]\ndirectory = "db/sql"\n[[sync.tables]]\nname = "OR"\n')
    settings = load_settings(tmp_path / "p.toml")
    assert settings.migrations.directory == Path("db/sql")
    assert settings.sync.tables[0].name == "OR" and settings.sync.tables[0].owner_column == "user_id"


def test_builtin_auth_migrations_define_the_supabase_functions_over_one_identity():
    first, identity = runner.builtin_migrations()
    assert first.name == "postgressor/0001_supabase_auth.sql"  # applied on existing boxes: never edited
    assert identity.name == "postgressor/0002_one_identity.sql"
    for needle in ("public.current_user_id()", "auth.uid()", "auth.role()", "auth.jwt()", "auth.email()",
                   "'electric.user_id'", "'request.jwt.claims'", "'request.jwt.claim.sub'"):
        assert needle in identity.sql
    # every helper but auth.jwt() reads auth.jwt(), and only auth.jwt() reads the settings
    bodies = identity.sql.split("$body$")[1::2]
    assert len(bodies) == 5
    assert all("auth.jwt()" in b and "current_setting" not in b for b in bodies[1:])


def test_map_code_leaves_strings_and_comments_alone():
    source = "SELECT a.b, 'a.b' -- a.b\n, $$ a.b $$ /* a.b */, \"a.b\""
    assert sqltext.map_code(source, lambda s: s.replace("a.b", "X")) == (
        "SELECT X, 'a.b' -- a.b\n, $$ X $$ /* a.b */, \"X\"")
