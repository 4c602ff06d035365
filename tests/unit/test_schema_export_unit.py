"""Pure parts of schema export: statement filtering, pg_dump choice and argv, URL masking."""

from __future__ import annotations

import pytest

from postgressor.dbconnect import describe, mask_url, split_password
from postgressor.errors import PostgressorError, UsageError
from postgressor.migrations.schema_export import PgDump, choose_pg_dump, classify, dump_env, filter_dump, pg_dump_command

DUMP = """\\restrict Zq9
-- Dumped by pg_dump version 17.6
SET statement_timeout = 0;
SET transaction_timeout = 0;
CREATE SCHEMA auth;
CREATE SCHEMA app;
COMMENT ON SCHEMA public IS 'standard public schema';
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA extensions;
COMMENT ON EXTENSION "uuid-ossp" IS 'generate universally unique identifiers (UUIDs)';
CREATE EVENT TRIGGER issue_pg_cron_access ON ddl_command_end
         WHEN TAG IN ('CREATE EXTENSION')
   EXECUTE FUNCTION extensions.grant_pg_cron_access();
CREATE TABLE public."OR" (
    id uuid DEFAULT extensions.uuid_generate_v4() NOT NULL,
    v extensions.vector(3),
    note text DEFAULT 'extensions.keep; GRANT inside a string'
);
ALTER TABLE public."OR" OWNER TO supabase_admin;
ALTER FUNCTION public.f() OWNER TO postgres;
ALTER TABLE ONLY public.profiles
    ADD CONSTRAINT profiles_id_fkey FOREIGN KEY (id) REFERENCES auth.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.items
    ADD CONSTRAINT items_owner_fkey FOREIGN KEY (owner) REFERENCES public.profiles(id);
CREATE TRIGGER hook AFTER INSERT ON public."OR" FOR EACH ROW EXECUTE FUNCTION supabase_functions.http_request();
CREATE TRIGGER own AFTER INSERT ON public."OR" FOR EACH ROW EXECUTE FUNCTION public.touch();
CREATE FUNCTION public.current_user_id() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE POLICY "User owns data" ON public."OR" TO authenticated USING ((auth.uid() = user_id));
ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public."OR";
GRANT ALL ON TABLE public."OR" TO anon;
REVOKE USAGE ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON TABLES TO anon;
\\unrestrict Zq9
"""


def test_filter_dump_keeps_the_app_and_drops_the_platform():
    text, removed = filter_dump(DUMP)
    assert "\\restrict" not in text and "\\unrestrict" not in text
    assert "transaction_timeout" not in text and "SET statement_timeout = 0;" in text
    assert "CREATE SCHEMA auth" not in text and "CREATE SCHEMA IF NOT EXISTS app;" in text
    assert "EXTENSION" not in text.replace("'CREATE EXTENSION'", "") and "EVENT TRIGGER" not in text
    assert "OWNER TO" not in text and "GRANT ALL" not in text and "REVOKE" not in text
    assert "PUBLICATION" not in text and "COMMENT ON SCHEMA public" not in text
    assert "id uuid DEFAULT gen_random_uuid() NOT NULL" in text and "v public.vector(3)" in text
    assert "'extensions.keep; GRANT inside a string'" in text  # only qualifiers are rewritten, not strings
    assert "items_owner_fkey" in text and "EXECUTE FUNCTION public.touch()" in text
    assert "-- postgressor removed (foreign keys into managed schemas): ALTER TABLE ONLY public.profiles" in text
    assert "-- postgressor removed (triggers calling managed functions)" in text
    assert "CREATE FUNCTION public.current_user_id" not in text
    assert 'CREATE POLICY "User owns data"' in text
    assert removed["psql meta-commands"] == 2 and removed["grants"] == 3 and removed["owners"] == 2
    assert removed["extensions"] == 2 and removed["event triggers"] == 1 and removed["publications"] == 1


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ('COMMENT ON SCHEMA "storage" IS \'x\';', "managed schemas"),
        ("CREATE SCHEMA IF NOT EXISTS realtime;", None),  # only exact CREATE SCHEMA name forms are matched
        ("SECURITY LABEL FOR pgsodium ON COLUMN t.c IS 'ENCRYPT';", "security labels"),
        ("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES \"auth\".\"users\"(id);",
         "foreign keys into managed schemas"),
        ("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES public.authors(id);", None),
        ("CREATE TABLE public.grants (x int);", None),
    ],
)
def test_classify(statement, reason):
    assert classify(statement) == reason


def test_choose_pg_dump_prefers_first_new_enough():
    tools = [PgDump("/usr/bin/pg_dump", 14), PgDump("/usr/lib/postgresql/16/bin/pg_dump", 16),
             PgDump("/usr/lib/postgresql/17/bin/pg_dump", 17)]
    assert choose_pg_dump(tools, 15).path.endswith("16/bin/pg_dump")
    assert choose_pg_dump(tools, 14).path == "/usr/bin/pg_dump"
    with pytest.raises(PostgressorError, match=r"pg_dump 17 .* is older than the server \(PostgreSQL 18\)"):
        choose_pg_dump(tools, 18)
    with pytest.raises(PostgressorError, match=r"pg_dump not found.*postgresql-client-15"):
        choose_pg_dump([], 15)


def test_pg_dump_gets_the_password_only_through_its_environment(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "from-the-shell")
    conninfo, password = split_password("postgresql://me:s3cr%40t@db.example.com:6543/app?sslmode=require")
    assert password == "s3cr@t"
    argv = pg_dump_command("pg_dump", conninfo, ["public", "app"])
    assert not any("s3cr" in a for a in argv)
    assert "--schema=public" in argv and "--schema-only" in argv and "--no-owner" in argv
    assert "sslmode=require" in argv[-1] and "host=db.example.com" in argv[-1]
    assert dump_env(password)["PGPASSWORD"] == "s3cr@t"
    assert "PGPASSWORD" not in dump_env(None)


def test_mask_url_and_describe():
    assert mask_url("postgresql://u:p%40ss@h:5432/d and more") == "postgresql://u:***@h:5432/d and more"
    assert mask_url("host=h password='a b' user=u") == "host=h password=*** user=u"
    assert mask_url("postgres://u@h/d") == "postgres://u@h/d"
    assert describe("postgresql://u:pw@h:5433/d") == "u@h:5433/d"
    with pytest.raises(UsageError) as caught:
        describe("postgresql://u:topsecret@[h/d")
    assert "topsecret" not in str(caught.value)
