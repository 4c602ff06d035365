"""Pure parts of schema export: statement filtering (dump_filter), preamble, pg_dump choice and argv, URLs."""

from __future__ import annotations

import pytest

from postgressor.errors import PostgressorError, UsageError
from postgressor.migrations.dump_filter import Source, filter_dump
from postgressor.migrations.schema_export import (
    PgDump,
    SourceInfo,
    build_export,
    choose_pg_dump,
    dump_env,
    pg_dump_command,
    preamble,
)
from postgressor.remote.database import describe, mask_url, split_password

VECTOR = Source({("extensions", "uuid_generate_v4"): "uuid-ossp", ("extensions", "vector"): "vector"},
                {"uuid-ossp": "extensions", "vector": "extensions"})

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
    result = filter_dump(DUMP, VECTOR)
    text, removed = result.sql, result.removed
    assert "\\restrict" not in text and "\\unrestrict" not in text
    assert "transaction_timeout" not in text and "SET statement_timeout = 0;" in text
    assert "CREATE SCHEMA auth" not in text and "CREATE SCHEMA IF NOT EXISTS app;" in text
    code = "\n".join(ln for ln in text.splitlines() if not ln.startswith("--"))
    assert "EXTENSION" not in code.replace("'CREATE EXTENSION'", "") and "EVENT TRIGGER" not in code
    assert "OWNER TO" not in code and "FOR ROLE postgres" not in code
    assert 'GRANT ALL ON TABLE public."OR" TO anon;' in code and "REVOKE USAGE ON SCHEMA public FROM PUBLIC;" in code
    assert "PUBLICATION" not in code and "COMMENT ON SCHEMA public" not in code
    # extension objects keep their schema: the preamble recreates it
    assert "id uuid DEFAULT extensions.uuid_generate_v4() NOT NULL" in code and "v extensions.vector(3)" in code
    assert result.extensions_used == {"uuid-ossp", "vector"}
    assert "'extensions.keep; GRANT inside a string'" in text
    assert "items_owner_fkey" in code and "EXECUTE FUNCTION public.touch()" in code
    assert "-- postgressor removed (foreign key into auth.users, which a vanilla box lacks): ALTER TABLE ONLY" in text
    assert "-- postgressor removed (trigger calls supabase_functions.http_request" in text
    assert "CREATE FUNCTION public.current_user_id" not in code
    assert 'CREATE POLICY "User owns data"' in code
    assert removed["psql meta-commands"] == 2 and removed["owners"] == 2
    assert removed["extensions (installed by the export's preamble)"] == 2
    assert removed["event triggers"] == 1 and removed["publications"] == 1
    assert removed["references to Supabase-managed objects"] == 2


@pytest.mark.parametrize(
    ("statement", "verdict"),
    [
        ('COMMENT ON SCHEMA "storage" IS \'x\';', "removed"),
        ("CREATE SCHEMA IF NOT EXISTS realtime;", "removed"),
        ("SECURITY LABEL FOR pgsodium ON COLUMN t.c IS 'ENCRYPT';", "removed"),
        ("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES \"auth\".\"users\"(id);", "noted"),
        ("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES public.authors(id);", "kept"),
        ("CREATE TABLE public.grants (x int);", "kept"),
        ("CREATE POLICY p ON public.t TO authenticated USING (auth.email() = e);", "kept"),
        ("CREATE POLICY p ON public.t TO supabase_admin USING (true);", "noted"),
        ("CREATE POLICY p ON public.t TO anon, supabase_admin USING (true);", "rewritten"),
        ("CREATE POLICY p ON public.t USING (EXISTS (SELECT 1 FROM auth.users));", "noted"),
        ("GRANT SELECT ON public.t TO supabase_read_only_user;", "removed"),
        ("GRANT SELECT ON public.t TO authenticated, postgres;", "rewritten"),
        ("CREATE VIEW public.v AS SELECT * FROM storage.objects;", "noted"),
        ("CREATE FUNCTION public.f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM 1 FROM auth.identities; "
         "RETURN 1; END $$;", "noted"),
        ("CREATE TABLE public.t (a text DEFAULT realtime.topic());", "rewritten"),
        ("CREATE TRIGGER t AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION public.f();", "noted"),
        ("SELECT pg_catalog.set_config('search_path', '', false);", "rewritten"),
        ("SET SESSION AUTHORIZATION supabase_admin;", "removed"),
        ("RESET SESSION AUTHORIZATION;", "removed"),
        ("ALTER FUNCTION public.f() OWNER TO supabase_admin;", "removed"),
        ("ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public GRANT ALL ON TABLES TO dashboard_user;",
         "removed"),
        ("CREATE VIEW public.v AS SELECT extensions.uuid_generate_v4();", "noted"),  # not an extension's here
        ("CREATE TABLE public.t (a int) WITH (fillfactor=$1);", "kept"),  # not parseable: kept for --verify
    ],
)
def test_each_kind_of_reference(statement, verdict):
    text = filter_dump(statement).sql
    got = ("rewritten" if "-- postgressor rewrote" in text else "noted" if "-- postgressor removed" in text
           else "kept" if statement in text else "removed")
    assert got == verdict, text


def test_what_depends_on_a_removed_type_follows_it():
    text = filter_dump("CREATE DOMAIN public.level AS auth.aal_level;\n"
                       "CREATE TYPE public.pair AS (a auth.aal_level, b int);\n"
                       "CREATE TABLE public.t (l public.level, p public.pair, n int);\n").sql
    assert "-- postgressor removed (uses auth.aal_level, which a vanilla box lacks): CREATE DOMAIN" in text
    assert "-- postgressor removed (uses auth.aal_level, which a vanilla box lacks): CREATE TYPE" in text
    assert "CREATE TABLE public.t (l text, p text, n integer);" in text


def test_header_names_extensions_the_box_cannot_install():
    info = SourceInfo(15, ["public"], Source({("extensions", "sign"): "pgjwt", ("extensions", "digest"): "pgcrypto"},
                                             {"pgjwt": "extensions", "pgcrypto": "extensions"}))
    export = build_export("CREATE FUNCTION public.t() RETURNS text LANGUAGE sql AS $$ SELECT extensions.sign('{}', "
                          "'k') $$;\n", info, "dev")
    assert export.extensions == ["pgjwt"]
    assert "-- The box must have the extensions pgjwt (schema extensions)" in export.sql
    assert "-- postgressor cannot install the extension pgjwt on a box" in export.sql


def test_preamble_recreates_the_extensions_schema_and_search_path():
    sql = preamble({"pgcrypto": "extensions", "vector": "public"})
    assert "CREATE SCHEMA IF NOT EXISTS extensions;" in sql
    assert 'CREATE EXTENSION "pgcrypto" WITH SCHEMA "extensions";' in sql
    assert 'ALTER EXTENSION "vector" SET SCHEMA "public";' in sql
    assert "ALTER DATABASE %I SET search_path = \"$user\", public, extensions" in sql
    assert "add \\\"pgcrypto\\\" to [postgres] extensions" not in sql  # quoted for SQL, not escaped twice


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
    assert "--no-privileges" not in argv  # grants to the API roles are kept
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



def test_an_invalid_url_never_shows_its_password() -> None:
    from postgressor.errors import UsageError
    from postgressor.remote.database import parse_url

    with pytest.raises(UsageError) as caught:
        parse_url("postgresql://u:S3cret PW@127.0.0.1/db")
    assert "S3cret" not in str(caught.value) and "***" in str(caught.value)
