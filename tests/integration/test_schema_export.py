"""schema export: dump a Supabase-like dev database, then apply the result to a fresh vanilla database."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from conftest import APP_PASSWORD, APP_ROLE
from pgcluster import Cluster, bindir
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.config import SyncTable
from postgressor.migrations import runner

SUPABASE_LIKE = """
DO $$ DECLARE r text; BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'supabase_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;
CREATE SCHEMA extensions;
CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;
CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid $$;
CREATE SCHEMA storage;
CREATE TABLE storage.buckets (id text PRIMARY KEY);
CREATE TABLE storage.objects (id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
                              bucket_id text REFERENCES storage.buckets (id), owner uuid REFERENCES auth.users (id));
CREATE SCHEMA realtime;
CREATE TABLE realtime.messages (id bigint);
CREATE SCHEMA supabase_functions;
CREATE FUNCTION supabase_functions.http_request() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE FUNCTION extensions.grant_pg_cron_access() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE EVENT TRIGGER issue_pg_cron_access ON ddl_command_end EXECUTE FUNCTION extensions.grant_pg_cron_access();

CREATE TABLE public.profiles (id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE, name text);
CREATE TABLE public."OR" (
    id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
    user_id uuid NOT NULL DEFAULT auth.uid(),
    body text NOT NULL,
    digest text DEFAULT encode(extensions.digest('x', 'sha256'), 'hex'),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public."OR" IS 'operational memory; one row per thought';
CREATE INDEX or_user_idx ON public."OR" (user_id, created_at);
ALTER TABLE public."OR" ENABLE ROW LEVEL SECURITY;
CREATE POLICY "User owns data" ON public."OR" TO authenticated
    USING (auth.uid() = user_id) WITH CHECK (auth.uid() = user_id);
CREATE FUNCTION public.current_user_id() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting('electric.user_id', true) $$;
CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
    AS $$ BEGIN INSERT INTO public.profiles (id) VALUES (NEW.id); RETURN NEW; END; $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
CREATE TRIGGER or_webhook AFTER INSERT ON public."OR" FOR EACH ROW EXECUTE FUNCTION supabase_functions.http_request();
CREATE VIEW public.my_or AS SELECT id, body FROM public."OR" WHERE user_id = auth.uid();
CREATE SCHEMA app;
CREATE TABLE app.settings (key text PRIMARY KEY, value jsonb NOT NULL DEFAULT '{}');
ALTER TABLE app.settings OWNER TO supabase_admin;
GRANT USAGE ON SCHEMA public TO anon, authenticated;
GRANT ALL ON public."OR" TO anon, authenticated;
GRANT SELECT ON public.my_or TO authenticated;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated;
CREATE PUBLICATION supabase_realtime FOR TABLE public."OR";
"""


@pytest.fixture
def dev_db(pg_cluster: Cluster):
    name = pg_cluster.create_database()
    with pg_cluster.connect(name) as su:
        su.execute(SUPABASE_LIKE)
    yield name
    pg_cluster.drop_database(name)


def export(*args: str):
    return CliRunner().invoke(app, ["schema", "export", *args])


def test_export_round_trip_applies_cleanly_to_vanilla_postgres(pg_cluster, dev_db, app_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "migrations" / "0001_initial.sql"
    result = export("--from", pg_cluster.url(dev_db), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert pg_cluster.password not in result.output
    assert "exported schemas app, public" in result.stdout
    dump = target.read_text()
    assert "-- postgressor removed (foreign keys into managed schemas): ALTER TABLE ONLY public.profiles" in dump
    code = "\n".join(line for line in dump.splitlines() if not line.startswith("--"))
    for gone in ("CREATE EXTENSION", "EVENT TRIGGER", "GRANT ", "OWNER TO", "PUBLICATION", "auth.users",
                 "storage.", "realtime.", "supabase_functions", "extensions.", "DEFAULT PRIVILEGES", "\\restrict",
                 "current_setting('electric.user_id', true) $$"):
        assert gone not in code, gone
    for kept in ('CREATE TABLE public."OR"', "CREATE POLICY \"User owns data\"", "CREATE TABLE app.settings",
                 "gen_random_uuid()", "public.digest(", "operational memory", "CREATE VIEW public.my_or"):
        assert kept in dump, kept
    assert pg_cluster.password not in dump

    # the fresh database runs postgressor's built-ins first, then the export, as its non-superuser owner
    with pg_cluster.connect(app_db) as su:
        su.execute("CREATE EXTENSION pgcrypto")  # the deploy installs [postgres] extensions like this
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        done = runner.run(conn, runner.all_migrations(target.parent, True), [SyncTable(name="OR")])
        assert [a.name for a in done.applied][-1] == "0001_initial.sql"
    alice = str(uuid.uuid4())
    with pg_cluster.connect(app_db) as su:
        su.execute(f'GRANT authenticated TO "{APP_ROLE}"; GRANT ALL ON public."OR" TO authenticated')
        fks = su.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()
        assert fks == (0,)  # profiles -> auth.users could not survive: auth.users is Supabase's
        assert su.execute("SELECT count(*) FROM pg_event_trigger").fetchone() == (0,)
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        conn.execute("BEGIN")
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", [json.dumps({"sub": alice})])
        conn.execute("""INSERT INTO "OR" (body) VALUES ('hello')""")
        assert conn.execute("""SELECT user_id::text, length(id::text), digest IS NOT NULL FROM "OR" """).fetchall() == [
            (alice, 36, True)]
        conn.execute("COMMIT")


def _wrapper(tmp_path: Path, body: str) -> str:
    script = tmp_path / "pg_dump"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_password_reaches_pg_dump_only_through_the_environment(pg_cluster, dev_db, tmp_path):
    log = tmp_path / "argv.log"
    real = bindir() / "pg_dump"
    wrapper = _wrapper(tmp_path, f'echo "$@" >> {log}\necho "PGPASSWORD=${{PGPASSWORD:+set}}" >> {log}\n'
                                 f'exec {real} "$@"\n')
    result = export("--from", pg_cluster.url(dev_db), "--pg-dump", wrapper, "-o", str(tmp_path / "out.sql"))
    assert result.exit_code == 0, result.output
    recorded = log.read_text()
    assert "--schema-only" in recorded and "PGPASSWORD=set" in recorded
    assert pg_cluster.password not in recorded


def test_pg_dump_older_than_the_server_is_refused(pg_cluster, dev_db, tmp_path):
    old = _wrapper(tmp_path, 'echo "pg_dump (PostgreSQL) 12.22"\n')
    result = export("--from", pg_cluster.url(dev_db), "--pg-dump", old)
    assert result.exit_code == 1
    assert "pg_dump 12" in result.stderr and "older than the server (PostgreSQL 15)" in result.stderr


def test_missing_pg_dump_is_reported(pg_cluster, dev_db, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("postgressor.migrations.schema_export.PG_DUMP_LOCATIONS", ())
    result = export("--from", pg_cluster.url(dev_db))
    assert result.exit_code == 1
    assert "pg_dump not found" in result.stderr and "postgresql-client-15" in result.stderr
    missing = export("--from", pg_cluster.url(dev_db), "--pg-dump", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "not found or not executable" in missing.stderr


def test_unreachable_source_masks_the_password(pg_cluster):
    url = f"postgresql://someone:hunter2-secret@127.0.0.1:{pg_cluster.port}/nope"
    result = export("--from", url)
    assert result.exit_code == 1
    assert "hunter2-secret" not in result.output and "someone@127.0.0.1" in result.stderr
    assert os.environ.get("PGPASSWORD") is None
