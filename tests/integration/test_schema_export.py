"""schema export: dump a Supabase-like dev database, then apply the result to a fresh vanilla database."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import APP_PASSWORD, APP_ROLE
from pgcluster import Cluster, bindir, running_cluster
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.migrations import dump_filter, schema_export, verify

# A dev database as Supabase sets it up: its roles (cluster-wide, so in a cluster of their own), the auth
# schema and helpers (definitions from supabase/auth migrations/20220224000811_update_auth_functions.up.sql
# and 20220531120530_add_auth_jwt_function.up.sql), the extensions schema with the default extensions
# (pgjwt is not packaged for Debian, so it is left out), storage, realtime, graphql_public,
# supabase_functions, the supabase_realtime publication and an event trigger.
SUPABASE_PLATFORM = """
DO $$ DECLARE r text; BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role', 'supabase_admin', 'supabase_auth_admin',
                             'supabase_storage_admin', 'supabase_realtime_admin', 'supabase_functions_admin',
                             'authenticator', 'dashboard_user'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;
CREATE SCHEMA extensions;
CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;
CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
CREATE EXTENSION pg_stat_statements WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;
CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
CREATE TYPE auth.aal_level AS ENUM ('aal1', 'aal2', 'aal3');
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, aal auth.aal_level);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid $$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text $$;
CREATE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim.email', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email'))::text $$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb $$;
CREATE SCHEMA storage;
CREATE TABLE storage.buckets (id text PRIMARY KEY);
CREATE TABLE storage.objects (id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
                              bucket_id text REFERENCES storage.buckets (id), owner uuid REFERENCES auth.users (id));
CREATE FUNCTION storage.foldername(name text) RETURNS text[] LANGUAGE sql AS $$ SELECT string_to_array(name, '/') $$;
CREATE SCHEMA realtime;
CREATE TABLE realtime.messages (id bigint);
CREATE SCHEMA graphql_public;
CREATE FUNCTION graphql_public.graphql() RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE SCHEMA supabase_functions;
CREATE FUNCTION supabase_functions.http_request() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE FUNCTION extensions.grant_pg_cron_access() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE EVENT TRIGGER issue_pg_cron_access ON ddl_command_end EXECUTE FUNCTION extensions.grant_pg_cron_access();
GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
GRANT ALL ON SCHEMA public TO supabase_admin;
ALTER DATABASE {db} SET search_path = "$user", public, extensions;
"""

# The application, one object per kind of reference to what Supabase manages (issue #13, item 1).
APP_SCHEMA = """
-- auth helpers, as policies and defaults call them
CREATE TABLE public."OR" (
    id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
    user_id uuid NOT NULL DEFAULT auth.uid(),
    body text NOT NULL,
    token text DEFAULT encode(extensions.gen_random_bytes(16), 'hex'),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public."OR" IS 'operational memory; one row per thought';
CREATE INDEX or_user_idx ON public."OR" (user_id, created_at);
ALTER TABLE public."OR" ENABLE ROW LEVEL SECURITY;
CREATE POLICY "User owns data" ON public."OR" TO authenticated, supabase_admin
    USING (auth.uid() = user_id) WITH CHECK (auth.uid() = user_id);
CREATE TABLE public.contacts (id bigserial PRIMARY KEY, email text NOT NULL, note text);
ALTER TABLE public.contacts ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_email ON public.contacts FOR SELECT TO authenticated USING (auth.email() = email);
CREATE POLICY users_only ON public.contacts AS RESTRICTIVE FOR SELECT USING (auth.role() = 'authenticated'
                                                           AND (auth.jwt() ->> 'aud') IS NOT NULL);
-- Supabase's roles: API roles kept, internal ones dropped from TO/GRANT, owners gone
CREATE POLICY admin_only ON public.contacts TO supabase_storage_admin USING (true);
GRANT ALL ON public."OR" TO anon, authenticated, service_role, supabase_admin;
GRANT SELECT ON public.contacts TO authenticated, dashboard_user;
GRANT USAGE ON SEQUENCE public.contacts_id_seq TO authenticated;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public GRANT ALL ON FUNCTIONS TO supabase_functions_admin;
CREATE SCHEMA app;
CREATE TABLE app.settings (key text PRIMARY KEY, value jsonb NOT NULL DEFAULT '{}', aal auth.aal_level);
ALTER TABLE app.settings OWNER TO supabase_admin;
-- auth.users and other managed objects in foreign keys, views, functions, triggers
CREATE TABLE public.profiles (id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE, name text,
                              avatar_folder text[] DEFAULT storage.foldername('a/b'));
CREATE VIEW public.member_emails AS SELECT p.name, u.email FROM public.profiles p JOIN auth.users u USING (id);
GRANT SELECT ON public.member_emails TO authenticated;
COMMENT ON VIEW public.member_emails IS 'who is who';
CREATE VIEW public.member_count AS SELECT count(*) AS n FROM public.member_emails;
CREATE FUNCTION public.my_email() RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
    AS $$ BEGIN RETURN (SELECT email FROM auth.users WHERE id = auth.uid()); END $$;
CREATE FUNCTION public.user_count() RETURNS bigint LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT count(*) FROM auth.users; END;
CREATE POLICY by_my_email ON public.contacts FOR UPDATE TO authenticated USING (email = public.my_email());
CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
    AS $$ BEGIN INSERT INTO public.profiles (id) VALUES (NEW.id); RETURN NEW; END; $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
CREATE TRIGGER or_webhook AFTER INSERT ON public."OR" FOR EACH ROW EXECUTE FUNCTION supabase_functions.http_request();
CREATE FUNCTION public.current_user_id() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting('electric.user_id', true) $$;
-- helpers called unqualified (Supabase's search_path has public and extensions; pg_dump's is empty)
CREATE FUNCTION public.squash(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(btrim(t)) $$;
CREATE FUNCTION public.slug(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT replace(squash(t), ' ', '-') $$;
CREATE FUNCTION public.short_token() RETURNS text LANGUAGE sql VOLATILE
    AS $$ SELECT encode(gen_random_bytes(6), 'hex') $$;
CREATE TABLE public.notes (
    id bigserial PRIMARY KEY,
    title text NOT NULL,
    slug text GENERATED ALWAYS AS (public.slug(title)) STORED,
    token text NOT NULL DEFAULT public.short_token()
);
CREATE INDEX notes_slug_idx ON public.notes (public.slug(title));
CREATE PUBLICATION supabase_realtime FOR TABLE public."OR";
"""


@pytest.fixture(scope="session")
def supabase_cluster() -> Iterator[Cluster]:
    """The dev side: its own cluster, so Supabase's cluster-wide roles never leak into the target."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def dev_db(supabase_cluster: Cluster):
    name = supabase_cluster.create_database()
    with supabase_cluster.connect(name) as su:
        su.execute(SUPABASE_PLATFORM.replace("{db}", f'"{name}"'))
    with supabase_cluster.connect(name) as su:  # a new session: Supabase's search_path
        su.execute(APP_SCHEMA)
    yield name
    supabase_cluster.drop_database(name)


def export(*args: str):
    return CliRunner().invoke(app, ["schema", "export", *args])


OR_CONFIG = '[[sync.tables]]\nname = "OR"\nowner_column = "user_id"\n'


@pytest.fixture
def exported(supabase_cluster, dev_db, tmp_path, monkeypatch) -> Path:
    """The README's steps: export from the dev database into migrations/ (verified on the way)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postgressor.toml").write_text(OR_CONFIG)
    target = tmp_path / "migrations" / "0001_initial.sql"
    result = CliRunner().invoke(app, ["schema", "export", "-o", "migrations/0001_initial.sql"],
                                env={"POSTGRESSOR_EXPORT_FROM": supabase_cluster.url(dev_db)})
    assert result.exit_code == 0, result.output
    assert "verified: the export and 0 project migration(s) apply" in result.stdout
    assert supabase_cluster.password not in result.output
    return target


def migrate_vanilla(pg_cluster: Cluster, app_db: str) -> None:
    """`postgressor migrate` into a separate, vanilla cluster, as the database's non-superuser owner."""
    url = pg_cluster.url(app_db, APP_ROLE, APP_PASSWORD)
    result = CliRunner().invoke(app, ["migrate", "--yes"], env={"POSTGRESSOR_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    with pg_cluster.connect(app_db) as su:  # PostgREST's authenticator is a member likewise (the box: deploy)
        su.execute(f'GRANT anon, authenticated, service_role TO "{APP_ROLE}"')


def code_of(dump: str) -> str:
    return "\n".join(line for line in dump.splitlines() if not line.lstrip().startswith("--"))


def test_export_lists_and_installs_the_extensions_it_uses(exported):
    dump = exported.read_text()
    assert "-- The box must have the extensions pgcrypto (schema extensions), uuid-ossp (schema extensions)" in dump
    code = code_of(dump)
    assert 'CREATE EXTENSION "pgcrypto" WITH SCHEMA "extensions"' in code
    assert "pg_stat_statements" not in code  # a default the schema does not use
    assert "extensions.gen_random_bytes(16)" in code and "extensions.uuid_generate_v4()" in code


def test_export_keeps_api_roles_and_drops_internal_ones(exported):
    dump = exported.read_text()
    code = code_of(dump)
    for internal in ("supabase_admin", "supabase_storage_admin", "dashboard_user", "supabase_functions_admin",
                     "FOR ROLE postgres", "OWNER TO"):
        assert internal not in code, internal
    for role in ("anon", "authenticated", "service_role"):  # pg_dump writes one GRANT per role
        assert f'GRANT ALL ON TABLE public."OR" TO {role};' in code
        assert f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL PRIVILEGES ON TABLES TO {role};" in code
    assert "GRANT SELECT ON TABLE public.contacts TO authenticated;" in code
    assert "GRANT USAGE ON SCHEMA public TO anon;" in code and "GRANT ALL ON SCHEMA public TO" not in code
    assert "-- postgressor removed (policy only for Supabase's internal roles supabase_storage_admin)" in dump


def test_export_removes_references_to_managed_objects_with_a_note(exported):
    dump = exported.read_text()
    code = code_of(dump)
    for gone in ("auth.users", "storage.", "supabase_functions", "auth.aal_level", "member_emails",
                 "member_count", "my_email", "user_count", "EVENT TRIGGER", "PUBLICATION", "\\restrict"):
        assert gone not in code, gone
    for note in ("foreign key into auth.users", "uses auth.users", "uses public.member_emails (removed above)",
                 "function uses auth.users",
                 "trigger on_auth_user_created ON auth.users calls public.handle_new_user()",
                 "trigger calls supabase_functions.http_request",
                 "policy uses public.my_email (removed above)", "type auth.aal_level of aal (now text)",
                 "default of avatar_folder (storage.foldername)"):
        assert note in dump, note
    for kept in ('CREATE TABLE public."OR"', 'CREATE POLICY "User owns data"', "CREATE TABLE app.settings",
                 "operational memory", "CREATE POLICY own_email", "auth.email()", "public.handle_new_user()"):
        assert kept in dump, kept


def identity_settings(user: str) -> dict[str, dict[str, str]]:
    claims = json.dumps({"sub": user, "role": "authenticated", "email": f"{user}@example.com",
                         "aud": "authenticated"})
    return {
        "request.jwt.claims": {"request.jwt.claims": claims},
        "request.jwt.claim.sub": {"request.jwt.claim.sub": user},
        "electric.user_id": {"electric.user_id": user},
    }


@pytest.mark.parametrize("setting", ["request.jwt.claims", "request.jwt.claim.sub", "electric.user_id"])
def test_or_table_written_through_each_identity_on_a_vanilla_cluster(exported, pg_cluster, app_db, setting):
    migrate_vanilla(pg_cluster, app_db)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        for user in (alice, bob):
            conn.execute("BEGIN")
            conn.execute("SET LOCAL ROLE authenticated")
            for name, value in identity_settings(user)[setting].items():
                conn.execute("SELECT set_config(%s, %s, true)", [name, value])
            conn.execute("""INSERT INTO "OR" (body) VALUES ('hello')""")
            assert conn.execute("""SELECT user_id::text, length(id::text), length(token) FROM "OR" """).fetchall() == [
                (user, 36, 32)]
            conn.execute("COMMIT")
    with pg_cluster.connect(app_db) as su:
        assert su.execute("""SELECT count(*) FROM "OR" """).fetchone() == (2,)


def test_email_policy_and_unqualified_helpers_work_on_a_vanilla_cluster(exported, pg_cluster, app_db):
    migrate_vanilla(pg_cluster, app_db)
    user = str(uuid.uuid4())
    with pg_cluster.connect(app_db) as su:
        su.execute("INSERT INTO contacts (email, note) VALUES (%s, 'mine'), ('x@example.com', 'theirs')",
                   [f"{user}@example.com"])
        assert su.execute("SELECT count(*) FROM pg_event_trigger").fetchone() == (0,)
        assert su.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:  # a fresh session: the database's search_path
        conn.execute("BEGIN")
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                     [identity_settings(user)["request.jwt.claims"]["request.jwt.claims"]])
        assert conn.execute("SELECT note FROM contacts").fetchall() == [("mine",)]
        conn.execute("ROLLBACK")
        row = conn.execute("INSERT INTO notes (title) VALUES ('  Hello World ') RETURNING slug, length(token)")
        assert row.fetchone() == ("hello-world", 12)


def test_verify_reports_each_failing_statement_with_its_line(supabase_cluster, dev_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = schema_export.filter_dump
    # a filter that misses one managed schema: storage.foldername() survives in profiles' default
    monkeypatch.setattr(schema_export, "filter_dump",
                        lambda dump, source: real(dump, source, dump_filter.MANAGED_SCHEMAS - {"storage"}))
    target = tmp_path / "migrations" / "0001_initial.sql"
    result = export("--from", supabase_cluster.url(dev_db), "-o", str(target), "--verify")
    assert result.exit_code == 1, result.output
    assert not target.exists()
    rejected = target.with_name("0001_initial.sql.rejected").read_text().splitlines()
    failures = [ln for ln in result.stderr.splitlines() if ln.startswith("verify: line ")]
    assert failures, result.stderr
    first = failures[0]
    line = int(first.split()[2].rstrip(":"))
    assert "CREATE TABLE public.profiles" in first and 'schema "storage" does not exist' in first
    assert "storage.foldername" in rejected[line - 1], (first, rejected[line - 1])
    for failure in failures[1:]:  # what depends on profiles fails too, each with its own line
        assert "profiles" in rejected[int(failure.split()[2].rstrip(":")) - 1], failure
    assert f"({len(failures)} failing statement(s) above)" in result.stderr


def test_verify_runs_the_projects_other_migrations_and_sync_tables_after_the_export(supabase_cluster, dev_db,
                                                                                     tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postgressor.toml").write_text(OR_CONFIG + '[[sync.tables]]\nname = "contacts"\n')
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_initial.sql").write_text("-- an earlier export: replaced, not applied\nSELECT 1/0;\n")
    (folder / "0002_more.sql").write_text('ALTER TABLE "OR" ADD COLUMN mood text;\nALTER TABLE nope ADD x int;\n')
    result = export("--from", supabase_cluster.url(dev_db), "-o", "migrations/0001_initial.sql")
    assert result.exit_code == 1, result.output
    assert "verify: after the export: postgressor migrate: migration migrations/0002_more.sql line 2 failed: " \
           'relation "nope" does not exist' in result.stderr
    (folder / "0002_more.sql").write_text('ALTER TABLE "OR" ADD COLUMN mood text;\n')
    result = export("--from", supabase_cluster.url(dev_db), "-o", "migrations/0001_initial.sql")
    # contacts has no user_id column: the [[sync.tables]] policies fail after the migrations applied
    assert result.exit_code == 1 and """sync table "public"."contacts" has no column 'user_id'""" in result.stderr
    (tmp_path / "postgressor.toml").write_text(OR_CONFIG)
    result = export("--from", supabase_cluster.url(dev_db), "-o", "migrations/0001_initial.sql")
    assert result.exit_code == 0, result.output
    assert "verified: the export and 1 project migration(s) apply" in result.stdout
    skipped = export("--from", supabase_cluster.url(dev_db), "-o", "migrations/0001_initial.sql", "--no-verify")
    assert skipped.exit_code == 0 and "verified" not in skipped.stdout


def test_verify_on_an_older_local_server_says_so(supabase_cluster, dev_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("postgressor.migrations.verify.verify", lambda *a: verify.Verdict("PostgreSQL 14.1", 14))
    result = export("--from", supabase_cluster.url(dev_db), "-o", "out.sql")
    assert result.exit_code == 0, result.output
    assert "note: verified on PostgreSQL 14, older than the dev database's 15" in result.stderr


def test_no_local_postgres_is_said_clearly(supabase_cluster, dev_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("postgressor.migrations.verify.available", lambda: None)
    out = tmp_path / "x.sql"
    result = export("--from", supabase_cluster.url(dev_db), "-o", str(out))
    assert result.exit_code == 0 and out.exists()
    assert "the export was NOT verified: no local PostgreSQL server" in result.stdout
    forced = export("--from", supabase_cluster.url(dev_db), "-o", str(out), "--verify")
    assert forced.exit_code == 1 and "--verify needs a local PostgreSQL server" in forced.stderr


def _wrapper(tmp_path: Path, body: str) -> str:
    script = tmp_path / "pg_dump"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_password_reaches_pg_dump_only_through_the_environment(supabase_cluster, dev_db, tmp_path):
    log = tmp_path / "argv.log"
    real = bindir() / "pg_dump"
    wrapper = _wrapper(tmp_path, f'echo "$@" >> {log}\necho "PGPASSWORD=${{PGPASSWORD:+set}}" >> {log}\n'
                                 f'exec {real} "$@"\n')
    result = export("--from", supabase_cluster.url(dev_db), "--pg-dump", wrapper, "-o", str(tmp_path / "out.sql"),
                    "--no-verify")
    assert result.exit_code == 0, result.output
    recorded = log.read_text()
    assert "--schema-only" in recorded and "PGPASSWORD=set" in recorded
    assert supabase_cluster.password not in recorded


def test_pg_dump_older_than_the_server_is_refused(supabase_cluster, dev_db, tmp_path):
    old = _wrapper(tmp_path, 'echo "pg_dump (PostgreSQL) 12.22"\n')
    result = export("--from", supabase_cluster.url(dev_db), "--pg-dump", old)
    assert result.exit_code == 1
    assert "pg_dump 12" in result.stderr and "older than the server (PostgreSQL 15)" in result.stderr


def test_missing_pg_dump_is_reported(supabase_cluster, dev_db, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("postgressor.migrations.schema_export.PG_DUMP_LOCATIONS", ())
    result = export("--from", supabase_cluster.url(dev_db))
    assert result.exit_code == 1
    assert "pg_dump not found" in result.stderr and "postgresql-client-15" in result.stderr
    missing = export("--from", supabase_cluster.url(dev_db), "--pg-dump", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "not found or not executable" in missing.stderr


def test_unreachable_source_masks_the_password(pg_cluster):
    url = f"postgresql://someone:hunter2-secret@127.0.0.1:{pg_cluster.port}/nope"
    result = export("--from", url)
    assert result.exit_code == 1
    assert "hunter2-secret" not in result.output and "someone@127.0.0.1" in result.stderr
    assert os.environ.get("PGPASSWORD") is None
