"""postgressor migrate against a real cluster: built-in auth layer, owner policies on "OR", RLS behaviour."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from conftest import APP_PASSWORD, APP_ROLE
from pgcluster import Cluster
from psycopg import errors

from postgressor.config import SyncTable
from postgressor.errors import PostgressorError
from postgressor.migrations import runner

OR_TABLE = 'CREATE TABLE "OR" (id bigserial PRIMARY KEY, user_id text NOT NULL, body text NOT NULL);\n'
OR_SYNC = [SyncTable(name="OR", owner_column="user_id")]
BUILTINS = ["postgressor/0001_supabase_auth.sql", "postgressor/0002_one_identity.sql"]


def migrate(pg: Cluster, db: str, folder: Path, tables: list[SyncTable]) -> runner.Result:
    with pg.connect(db, APP_ROLE, APP_PASSWORD) as conn:
        return runner.run(conn, runner.all_migrations(folder, required=False), tables)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def as_identity(conn: psycopg.Connection, setting: str | None, value: str | None) -> None:
    """Start a transaction carrying the caller's identity the way Electric's proxy or PostgREST would."""
    conn.execute("BEGIN")
    if setting:
        conn.execute("SELECT set_config(%s, %s, true)", [setting, value])


def seed_or(pg: Cluster, db: str) -> None:
    with pg.connect(db) as su:  # the superuser bypasses RLS
        su.execute("""INSERT INTO "OR" (user_id, body) VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1')""")


def rows(pg: Cluster, db: str) -> list[tuple[str, str]]:
    with pg.connect(db) as su:
        return [tuple(r) for r in su.execute('SELECT user_id, body FROM "OR" ORDER BY id').fetchall()]


def test_first_run_applies_builtins_migrations_and_forces_rls(pg_cluster, app_db, tmp_path):
    write(tmp_path, "0001_or.sql", OR_TABLE)
    result = migrate(pg_cluster, app_db, tmp_path, OR_SYNC)
    assert [a.name for a in result.applied] == [*BUILTINS, "0001_or.sql"]
    with pg_cluster.connect(app_db) as su:
        recorded = su.execute("SELECT name, checksum, duration >= interval '0' FROM postgressor.schema_migrations "
                              "ORDER BY applied_at, name").fetchall()
        assert {r[0] for r in recorded} == {*BUILTINS, "0001_or.sql"}
        assert dict((r[0], r[1]) for r in recorded)["0001_or.sql"] == runner.checksum(OR_TABLE)
        assert su.execute("""SELECT relrowsecurity, relforcerowsecurity FROM pg_class
                             WHERE oid = '"OR"'::regclass""").fetchone() == (True, True)
        cmds = su.execute("""SELECT polname, polcmd FROM pg_policy WHERE polrelid = '"OR"'::regclass
                             ORDER BY 1""").fetchall()
        assert cmds == [("postgressor_owner_delete", "d"), ("postgressor_owner_insert", "a"),
                        ("postgressor_owner_select", "r"), ("postgressor_owner_update", "w")]
        roles = su.execute("""SELECT rolname, rolcanlogin FROM pg_roles
                              WHERE rolname IN ('anon', 'authenticated', 'service_role') ORDER BY 1""").fetchall()
        assert roles == [("anon", False), ("authenticated", False), ("service_role", False)]


def test_owner_sees_and_changes_only_own_rows_via_electric_user_id(pg_cluster, app_db, tmp_path):
    write(tmp_path, "0001_or.sql", OR_TABLE)
    migrate(pg_cluster, app_db, tmp_path, OR_SYNC)
    seed_or(pg_cluster, app_db)
    # app_owner owns "OR" and is no superuser: FORCE ROW LEVEL SECURITY must restrict it too
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        as_identity(conn, "electric.user_id", "alice")
        assert conn.execute('SELECT body FROM "OR" ORDER BY id').fetchall() == [("a1",), ("a2",)]
        conn.execute("""INSERT INTO "OR" (user_id, body) VALUES ('alice', 'a3')""")
        assert conn.execute("""UPDATE "OR" SET body = 'a1!' WHERE body = 'a1'""").rowcount == 1
        assert conn.execute("""UPDATE "OR" SET body = 'stolen' WHERE user_id = 'bob'""").rowcount == 0
        assert conn.execute("""DELETE FROM "OR" WHERE user_id = 'bob'""").rowcount == 0
        assert conn.execute("""DELETE FROM "OR" WHERE body = 'a2'""").rowcount == 1
        conn.execute("COMMIT")

        as_identity(conn, "electric.user_id", "alice")
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("""INSERT INTO "OR" (user_id, body) VALUES ('bob', 'forged')""")
        conn.execute("ROLLBACK")

        as_identity(conn, "electric.user_id", "alice")
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("""UPDATE "OR" SET user_id = 'bob' WHERE body = 'a3'""")
        conn.execute("ROLLBACK")

        as_identity(conn, "electric.user_id", "bob")
        assert conn.execute('SELECT body FROM "OR"').fetchall() == [("b1",)]
        conn.execute("COMMIT")

        as_identity(conn, None, None)  # no identity at all
        assert conn.execute('SELECT count(*) FROM "OR"').fetchone() == (0,)
        assert conn.execute("""DELETE FROM "OR" """).rowcount == 0
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("""INSERT INTO "OR" (user_id, body) VALUES ('alice', 'anonymous')""")
        conn.execute("ROLLBACK")
    assert rows(pg_cluster, app_db) == [("alice", "a1!"), ("bob", "b1"), ("alice", "a3")]


def test_jwt_claims_path_with_uuid_owner_column(pg_cluster, app_db, tmp_path):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    write(tmp_path, "0001_or.sql", 'CREATE TABLE "OR" (id bigserial PRIMARY KEY, user_id uuid NOT NULL, body text);')
    result = migrate(pg_cluster, app_db, tmp_path, OR_SYNC)
    assert result.tables[0].owner_type == "uuid"
    with pg_cluster.connect(app_db) as su:
        su.execute('INSERT INTO "OR" (user_id, body) VALUES (%s, %s), (%s, %s)', [alice, "a", bob, "b"])
    claims = json.dumps({"sub": alice, "role": "authenticated", "aud": "authenticated"})
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        as_identity(conn, "request.jwt.claims", claims)
        assert conn.execute("SELECT current_user_id()").fetchone() == (alice,)
        assert conn.execute('SELECT body FROM "OR"').fetchall() == [("a",)]
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute('INSERT INTO "OR" (user_id, body) VALUES (%s, %s)', [bob, "forged"])
        conn.execute("ROLLBACK")
        # electric.user_id wins over the JWT claims when both are set
        as_identity(conn, "request.jwt.claims", claims)
        conn.execute("SELECT set_config('electric.user_id', %s, true)", [bob])
        assert conn.execute('SELECT body FROM "OR"').fetchall() == [("b",)]
        conn.execute("ROLLBACK")
        # a claims document without "sub" (e.g. an anon key) identifies nobody
        as_identity(conn, "request.jwt.claims", json.dumps({"role": "anon"}))
        assert conn.execute("SELECT current_user_id()").fetchone() == (None,)
        assert conn.execute('SELECT count(*) FROM "OR"').fetchone() == (0,)
        conn.execute("ROLLBACK")


SUPABASE_STYLE = """
CREATE TABLE notes (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL DEFAULT auth.uid(),
    body text NOT NULL
);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
create policy "User owns data" on notes for all to authenticated
  using ( auth.uid() = user_id ) with check ( auth.uid() = user_id );
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO authenticated;
GRANT USAGE ON SEQUENCE notes_id_seq TO authenticated;
"""


def test_supabase_written_policy_and_default_work_unchanged(pg_cluster, app_db, tmp_path):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    write(tmp_path, "0001_notes.sql", SUPABASE_STYLE)
    migrate(pg_cluster, app_db, tmp_path, [])
    with pg_cluster.connect(app_db) as su:
        su.execute(f'GRANT authenticated TO "{APP_ROLE}"')  # PostgREST's authenticator is a member likewise
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        for user, body in ((alice, "from alice"), (bob, "from bob")):
            conn.execute("BEGIN")
            conn.execute("SET LOCAL ROLE authenticated")
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                         [json.dumps({"sub": user, "role": "authenticated"})])
            conn.execute("INSERT INTO notes (body) VALUES (%s)", [body])  # user_id from auth.uid()
            conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                     [json.dumps({"sub": alice, "role": "authenticated"})])
        assert conn.execute("SELECT user_id::text, body FROM notes").fetchall() == [(alice, "from alice")]
        assert conn.execute("SELECT auth.uid()::text, auth.role(), auth.jwt() ->> 'sub'").fetchone() == (
            alice, "authenticated", alice)
        assert conn.execute("UPDATE notes SET body = 'x' WHERE user_id = %s", [bob]).rowcount == 0
        conn.execute("ROLLBACK")
        # the legacy per-claim setting PostgREST once used is honoured by auth.uid() as in Supabase
        conn.execute("BEGIN")
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", [bob])
        assert conn.execute("SELECT auth.uid()::text").fetchone() == (bob,)
        conn.execute("ROLLBACK")


def test_auth_functions_another_role_owns_are_kept(pg_cluster, app_db, tmp_path):
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        conn.execute("CREATE SCHEMA auth")
    with pg_cluster.connect(app_db) as su:  # e.g. supabase_auth_admin's functions in a real Supabase database
        su.execute("CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql AS $$ SELECT NULL::uuid $$")
        su.execute("COMMENT ON FUNCTION auth.uid() IS 'the platform''s own'")
    migrate(pg_cluster, app_db, tmp_path / "none", [])
    with pg_cluster.connect(app_db) as su:
        assert su.execute("SELECT obj_description('auth.uid()'::regprocedure)").fetchone() == ("the platform's own",)
        assert su.execute("SELECT to_regprocedure('auth.email()') IS NOT NULL").fetchone() == (True,)


def test_own_older_auth_functions_are_replaced_by_the_one_identity(pg_cluster, app_db, tmp_path):
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        conn.execute("CREATE SCHEMA auth")
        conn.execute("CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql AS $$ SELECT NULL::uuid $$")
    migrate(pg_cluster, app_db, tmp_path / "none", [])
    user = str(uuid.uuid4())
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        as_identity(conn, "electric.user_id", user)
        assert conn.execute("SELECT auth.uid()::text").fetchone() == (user,)


def test_any_role_may_evaluate_the_owner_policies(pg_cluster, app_db, tmp_path):
    write(tmp_path, "0001_or.sql", OR_TABLE)
    migrate(pg_cluster, app_db, tmp_path, OR_SYNC)
    seed_or(pg_cluster, app_db)
    pg_cluster.ensure_role("plain_reader", "reader-pw")  # no Supabase role, no membership in the owner
    with pg_cluster.connect(app_db) as su:
        su.execute('GRANT SELECT ON "OR" TO plain_reader')
    with pg_cluster.connect(app_db, "plain_reader", "reader-pw") as conn:
        as_identity(conn, "electric.user_id", "bob")
        assert conn.execute('SELECT body FROM "OR"').fetchall() == [("b1",)]
        conn.execute("ROLLBACK")


U, V = "8d0f9a4e-3c57-4a0b-9b7e-2f1c6d5e4a31", "0b7c2e9f-6a14-4d3b-8e25-9c1f7a6b3d42"
CLAIMS = json.dumps({"sub": U, "role": "authenticated", "email": "u@example.com", "aud": "authenticated"})
# The README's "Who is the caller" table, one row per case: settings -> uid, role, email (= current_user_id).
IDENTITY_ROWS = {
    "request.jwt.claims": ({"request.jwt.claims": CLAIMS}, (U, "authenticated", "u@example.com")),
    "request.jwt.claim.*": ({"request.jwt.claim.sub": U, "request.jwt.claim.role": "authenticated",
                             "request.jwt.claim.email": "u@example.com"}, (U, "authenticated", "u@example.com")),
    "request.jwt.claim.sub only": ({"request.jwt.claim.sub": U}, (U, "authenticated", None)),
    "electric.user_id": ({"electric.user_id": U}, (U, "authenticated", None)),
    "electric.user_id over claims of the same user": (
        {"electric.user_id": U, "request.jwt.claims": CLAIMS}, (U, "authenticated", "u@example.com")),
    "electric.user_id over claims of another user": (
        {"electric.user_id": V, "request.jwt.claims": CLAIMS}, (V, "authenticated", None)),
    "anon key claims (no sub)": ({"request.jwt.claims": json.dumps({"role": "anon"})}, (None, "anon", None)),
    "nothing set": ({}, (None, None, None)),
}


@pytest.mark.parametrize("case", IDENTITY_ROWS, ids=list(IDENTITY_ROWS))
def test_every_auth_helper_reads_one_identity(pg_cluster, app_db, tmp_path, case):
    settings, (uid, role, email) = IDENTITY_ROWS[case]
    migrate(pg_cluster, app_db, tmp_path / "none", [])
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        conn.execute("BEGIN")
        for name, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", [name, value])
        got = conn.execute("SELECT auth.uid()::text, auth.role(), auth.email(), current_user_id(), "
                           "auth.jwt() ->> 'sub', auth.jwt() ->> 'role', auth.jwt() ->> 'email'").fetchone()
        assert got == (uid, role, email, uid, uid, role, email)
        conn.execute("ROLLBACK")


def test_rerun_is_idempotent_and_replaces_only_changed_policies(pg_cluster, app_db, tmp_path):
    write(tmp_path, "0001_or.sql", OR_TABLE)
    write(tmp_path, "0002_tasks.sql", "CREATE TABLE tasks (id int PRIMARY KEY, owner text, assignee text);")
    tables = [*OR_SYNC, SyncTable(name="tasks", owner_column="owner")]
    migrate(pg_cluster, app_db, tmp_path, tables)

    again = migrate(pg_cluster, app_db, tmp_path, tables)
    assert again.applied == [] and again.already == 4
    assert all(not t.has_work for t in again.tables)

    changed = migrate(pg_cluster, app_db, tmp_path, [*OR_SYNC, SyncTable(name="tasks", owner_column="assignee")])
    by_table = {t.table: {c.action for c in t.changes} for t in changed.tables}
    assert by_table == {'"public"."OR"': {"unchanged"}, '"public"."tasks"': {"replace"}}
    with pg_cluster.connect(app_db) as su:
        qual = su.execute("""SELECT pg_get_expr(polqual, polrelid) FROM pg_policy
                             WHERE polname = 'postgressor_owner_select' AND polrelid = 'tasks'::regclass""").fetchone()
        assert "assignee" in qual[0]
        su.execute("""ALTER POLICY postgressor_owner_select ON "OR" USING (true)""")  # tampering
        su.execute("""ALTER TABLE "OR" NO FORCE ROW LEVEL SECURITY""")
    tampered = migrate(pg_cluster, app_db, tmp_path, [*OR_SYNC, SyncTable(name="tasks", owner_column="assignee")])
    or_plan = tampered.tables[0]
    assert or_plan.force_rls and not or_plan.enable_rls
    assert [(c.policy, c.action) for c in or_plan.changes if c.action != "unchanged"] == [
        ("postgressor_owner_select", "replace")]
    assert "outside postgressor" in or_plan.changes[0].reason
    assert all(c.action == "unchanged" for c in tampered.tables[1].changes)


def test_changed_applied_migration_is_refused(pg_cluster, app_db, tmp_path):
    first = write(tmp_path, "0001_or.sql", OR_TABLE)
    migrate(pg_cluster, app_db, tmp_path, [])
    first.write_text(OR_TABLE + "-- an edit\n")
    write(tmp_path, "0002_more.sql", "CREATE TABLE more (x int);")
    with pytest.raises(PostgressorError, match=r"0001_or\.sql was changed after it was applied"):
        migrate(pg_cluster, app_db, tmp_path, [])
    with pg_cluster.connect(app_db) as su:
        assert su.execute("SELECT to_regclass('public.more')").fetchone() == (None,)
    first.write_text(OR_TABLE.replace("\n", "\r\n"))  # line endings alone are no change
    assert [a.name for a in migrate(pg_cluster, app_db, tmp_path, []).applied] == ["0002_more.sql"]


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("CREATE TABLE half (x int);\n\nINSERT INTO half VALUES (1);\nSELECT 1/0;\n", 4, "division by zero"),
        ("CREATE TABLE half (x int);\n-- comment\nSELECT x,\n       nope\n  FROM half;\n", 4,
         'column "nope" does not exist'),
        ("CREATE TABLE half (x int);\nCREATE TABLE half (y int);\n", 2, 'relation "half" already exists'),
        ("CREATE TABLE half (x int);\nDO $$\nBEGIN\n  PERFORM 1;\n  RAISE EXCEPTION 'custom failure';\nEND\n$$;\n",
         5, "custom failure"),
        ("CREATE TABLE half (x int);\nCREATE TABLE other (y int) WITH OIDS oops;\n", 2, "syntax error"),
    ],
)
def test_failing_migration_rolls_back_and_names_file_and_line(pg_cluster, app_db, tmp_path, body, line, message):
    write(tmp_path, "0001_or.sql", OR_TABLE)
    bad = write(tmp_path, "0002_bad.sql", body)
    with pytest.raises(PostgressorError) as caught:
        migrate(pg_cluster, app_db, tmp_path, OR_SYNC)
    text = str(caught.value)
    assert f"{bad} line {line} failed" in text and message in text and "\n" not in text
    with pg_cluster.connect(app_db) as su:
        assert su.execute("SELECT to_regclass('public.half')").fetchone() == (None,)
        names = [r[0] for r in su.execute("SELECT name FROM postgressor.schema_migrations").fetchall()]
        assert "0001_or.sql" in names and "0002_bad.sql" not in names
    bad.write_text("CREATE TABLE half (x int);\n")
    assert [a.name for a in migrate(pg_cluster, app_db, tmp_path, OR_SYNC).applied] == ["0002_bad.sql"]


def test_transaction_control_in_a_migration_is_refused(pg_cluster, app_db, tmp_path):
    write(tmp_path, "0001_commit.sql", "CREATE TABLE early (x int);\nCOMMIT;\nCREATE TABLE late (x int);\n")
    with pytest.raises(PostgressorError, match=r"0001_commit\.sql line 2 controls the transaction"):
        migrate(pg_cluster, app_db, tmp_path, [])
    with pg_cluster.connect(app_db) as su:
        assert su.execute("SELECT to_regclass('public.early')").fetchone() == (None,)


def test_sync_table_problems_are_reported(pg_cluster, app_db, tmp_path):
    with pytest.raises(PostgressorError, match=r'sync table "public"."OR" does not exist'):
        migrate(pg_cluster, app_db, tmp_path / "none", OR_SYNC)
    write(tmp_path, "0001_or.sql", 'CREATE TABLE "OR" (id int, user_id bigint);')
    with pytest.raises(PostgressorError, match="is bigint; it must be uuid or text"):
        migrate(pg_cluster, app_db, tmp_path, OR_SYNC)
    with pytest.raises(PostgressorError, match="has no column 'owner'"):
        migrate(pg_cluster, app_db, tmp_path, [SyncTable(name="OR", owner_column="owner")])


def test_session_settings_do_not_leak_into_the_next_migration(pg_cluster, app_db, tmp_path):
    write(tmp_path, "0001_dump.sql", "SELECT pg_catalog.set_config('search_path', '', false);\n"
                                     "SET row_security = off;\nCREATE TABLE public.a (x int);\n")
    write(tmp_path, "0002_plain.sql", "CREATE TABLE b (x int);\nINSERT INTO a VALUES (1);\n")
    result = migrate(pg_cluster, app_db, tmp_path, [])
    assert [a.name for a in result.applied][-2:] == ["0001_dump.sql", "0002_plain.sql"]
