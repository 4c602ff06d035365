"""`schema export`: a schema-only pg_dump of a (Supabase) dev database that applies to vanilla PostgreSQL.

pg_dump is asked for the application's own schemas only, without owners; the output is then filtered
statement by statement (dump_filter) and prefixed with a preamble that recreates Supabase's ``extensions``
schema, installs the extensions the schema uses where the dev database had them, and gives the database
Supabase's search_path (``"$user", public, extensions``) so unqualified calls resolve as they did there.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from postgressor.box.quoting import sql_literal
from postgressor.box.spec import CONTRIB_EXTENSIONS, EXTENSION_PACKAGES
from postgressor.errors import PostgressorError, UsageError
from postgressor.migrations.dump_filter import EXTENSIONS_SCHEMA, MANAGED_SCHEMAS, Source, filter_dump
from postgressor.remote.database import connect, describe, mask_url, split_password

# Extensions Supabase installs in every project: needed on the box only when the schema uses them.
SUPABASE_DEFAULT_EXTENSIONS = frozenset({
    "plpgsql", "pg_graphql", "pg_stat_statements", "pgcrypto", "pgjwt", "supabase_vault", "uuid-ossp",
    "pgsodium", "pg_net", "pg_cron",
})  # fmt: skip
PG_DUMP_LOCATIONS = (
    "/usr/lib/postgresql/*/bin/pg_dump", "/usr/pgsql-*/bin/pg_dump", "/opt/homebrew/opt/postgresql@*/bin/pg_dump",
    "/usr/local/opt/postgresql@*/bin/pg_dump", "/Applications/Postgres.app/Contents/Versions/*/bin/pg_dump",
)  # fmt: skip
SEARCH_PATH = '"$user", public, extensions'  # Supabase's database default


@dataclass
class Export:
    sql: str
    removed: dict[str, int] = field(default_factory=dict)  # reason -> statements dropped
    extensions: list[str] = field(default_factory=list)  # what the box must install: name (schema)
    schemas: list[str] = field(default_factory=list)
    rewritten: dict[str, int] = field(default_factory=dict)  # reason -> statements rewritten
    server_major: int = 0  # the dev database's PostgreSQL major version


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def preamble(extensions: dict[str, str]) -> str:
    """SQL that recreates Supabase's ``extensions`` schema and installs ``extensions`` (name -> schema).

    Each extension is created where the dev database had it; one that exists elsewhere is moved when the
    migrating role owns it, else the statement fails with a hint (a superuser moves it, or the box installs it).
    """
    lines = [
        "-- postgressor: Supabase keeps extensions in schema extensions and has it on the search_path.",
        f"CREATE SCHEMA IF NOT EXISTS {EXTENSIONS_SCHEMA};",
        "DO $postgressor$",
        "BEGIN",
        f"    GRANT USAGE ON SCHEMA {EXTENSIONS_SCHEMA} TO PUBLIC;",
        f"    EXECUTE pg_catalog.format('ALTER DATABASE %I SET search_path = {SEARCH_PATH}', current_database());",
        "EXCEPTION WHEN insufficient_privilege THEN",
        "    RAISE WARNING 'postgressor: only the database owner can set its search_path (%); set it to "
        f"{SEARCH_PATH}', SQLERRM;",
        "END",
        "$postgressor$;",
    ]
    others = sorted(set(extensions.values()) - {EXTENSIONS_SCHEMA})
    lines += [f"CREATE SCHEMA IF NOT EXISTS {_ident(s)};" for s in others]
    for name, schema in sorted(extensions.items()):
        lines += [
            "DO $postgressor$",
            "DECLARE",
            f"    found oid := (SELECT extnamespace FROM pg_catalog.pg_extension WHERE extname = {sql_literal(name)});",  # noqa: S608 (quoted)
            "BEGIN",
            "    IF found IS NULL THEN",
            f"        CREATE EXTENSION {_ident(name)} WITH SCHEMA {_ident(schema)};",
            f"    ELSIF found <> (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = {sql_literal(schema)}) THEN",  # noqa: S608 (quoted)
            f"        ALTER EXTENSION {_ident(name)} SET SCHEMA {_ident(schema)};",
            "    END IF;",
            "EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN",
            f"    RAISE EXCEPTION 'extension {name} is needed in schema {schema}: %', SQLERRM USING HINT = "
            f"'add \"{name}\" to [postgres] extensions so the box installs it (postgressor up), or as a "
            f"superuser run: CREATE EXTENSION IF NOT EXISTS \"{name}\" WITH SCHEMA {schema}';",
            "END",
            "$postgressor$;",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PgDump:
    path: str
    major: int


def pg_dump_version(path: str) -> int:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise PostgressorError(f"cannot run {path} ({err}); install the PostgreSQL client tools") from None
    found = re.search(r"\b(\d+)(?:\.\d+)?", out)
    if not found:
        raise PostgressorError(f"cannot tell the version of {path} from '{out.strip()}'")
    return int(found.group(1))


def candidates(explicit: str | None) -> list[str]:
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise UsageError(f"pg_dump {explicit} not found or not executable; fix --pg-dump")
        return [explicit]
    on_path = shutil.which("pg_dump")
    found = [on_path] if on_path else []
    for pattern in PG_DUMP_LOCATIONS:
        found += sorted(p for p in glob.glob(pattern) if os.access(p, os.X_OK) and p not in found)
    return found


def choose_pg_dump(tools: list[PgDump], server_major: int) -> PgDump:
    """The first tool (PATH first) at least as new as the server; pg_dump refuses older servers only."""
    if not tools:
        raise PostgressorError(
            "pg_dump not found; install the PostgreSQL client tools (Debian/Ubuntu: apt install "
            f"postgresql-client-{server_major}) or pass --pg-dump PATH"
        )
    for tool in tools:
        if tool.major >= server_major:
            return tool
    newest = max(tools, key=lambda t: t.major)
    raise PostgressorError(
        f"pg_dump {newest.major} ({newest.path}) is older than the server (PostgreSQL {server_major}) and "
        f"cannot dump it; install postgresql-client-{server_major} or pass --pg-dump PATH"
    )


_SCHEMAS = """
SELECT n.nspname FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY 1
"""
# Functions and types that belong to an extension, with the schema they live in.
_EXTENSION_OBJECTS = """
SELECT n.nspname, p.proname, e.extname
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
JOIN pg_catalog.pg_proc p ON p.oid = d.objid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE d.deptype = 'e' AND d.classid = 'pg_catalog.pg_proc'::regclass
  AND d.refclassid = 'pg_catalog.pg_extension'::regclass
UNION
SELECT n.nspname, t.typname, e.extname
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
JOIN pg_catalog.pg_type t ON t.oid = d.objid
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE d.deptype = 'e' AND d.classid = 'pg_catalog.pg_type'::regclass
  AND d.refclassid = 'pg_catalog.pg_extension'::regclass
"""


# Triggers on Supabase's tables that call the application's functions: pg_dump leaves them out (they
# belong to the managed table), so the export says so.
_MANAGED_TRIGGERS = """
SELECT pg_catalog.format('trigger %%I ON %%I.%%I calls %%I.%%I()', t.tgname, tn.nspname, c.relname, pn.nspname,
                         p.proname)
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace tn ON tn.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND tn.nspname = ANY(%(managed)s) AND pn.nspname = ANY(%(schemas)s)
ORDER BY 1
"""


@dataclass
class SourceInfo:
    server_major: int
    schemas: list[str]  # the application's schemas (not Supabase-managed)
    source: Source
    managed_triggers: list[str] = field(default_factory=list)


def inspect_source(conn: psycopg.Connection) -> SourceInfo:
    """Server major version, the schemas holding the application's objects, and its extensions' objects."""
    version = conn.info.server_version // 10000
    schemas = [r[0] for r in conn.execute(_SCHEMAS).fetchall() if r[0] not in MANAGED_SCHEMAS]
    objects = {(r[0], r[1]): r[2] for r in conn.execute(_EXTENSION_OBJECTS).fetchall()}
    where: dict[str, str] = dict(conn.execute(
        "SELECT extname, extnamespace::regnamespace::text FROM pg_catalog.pg_extension").fetchall())
    triggers = [r[0] for r in conn.execute(_MANAGED_TRIGGERS, {"managed": sorted(MANAGED_SCHEMAS),
                                                                 "schemas": schemas}).fetchall()]
    return SourceInfo(version, schemas, Source(objects, where), triggers)


def needed_extensions(source: Source, used: set[str]) -> dict[str, str]:
    """name -> schema of what the box must have: what the schema uses, and every non-default extension."""
    names = set(used) | {e for e in source.extension_schemas if e not in SUPABASE_DEFAULT_EXTENSIONS}
    names.discard("plpgsql")
    return {name: source.extension_schemas.get(name, EXTENSIONS_SCHEMA) for name in sorted(names)}


def pg_dump_command(tool: str, conninfo: str, schemas: list[str]) -> list[str]:
    """argv for pg_dump; ``conninfo`` must already be free of the password (it shows in the process list).

    Privileges are dumped: grants to Supabase's API roles are kept (dump_filter drops the internal roles).
    """
    args = [tool, "--schema-only", "--no-owner", "--no-security-labels",
            "--no-publications", "--no-subscriptions", "--no-tablespaces"]
    args += [f"--schema={name}" for name in schemas]
    return [*args, "--dbname", conninfo]


def dump_env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def unpackaged(extensions: Iterable[str]) -> list[str]:
    """The extensions ``postgressor up`` has no package for (e.g. Supabase's pgjwt)."""
    return [e for e in extensions if e not in CONTRIB_EXTENSIONS and e not in EXTENSION_PACKAGES]


def build_export(dump: str, info: SourceInfo, label: str) -> Export:
    """The file to write: header, preamble, filtered dump."""
    filtered = filter_dump(dump, info.source)
    extensions = needed_extensions(info.source, filtered.extensions_used)
    listed = [f"{name} (schema {schema})" for name, schema in extensions.items()]
    header = (
        f"-- Schema exported by 'postgressor schema export' from {label} (PostgreSQL {info.server_major}).\n"
        "-- Removed: Supabase-managed schemas, event triggers, publications, owners, grants to Supabase's\n"
        "-- internal roles, and references to objects a vanilla box lacks (each noted in place).\n"
    )
    for trigger in info.managed_triggers:
        header += f"-- postgressor removed ({trigger}): a vanilla box has no Supabase tables to fire it.\n"
    if listed:
        header += (f"-- The box must have the extensions {', '.join(listed)}: list them in [postgres] extensions "
                   "(this file installs the trusted ones itself).\n")  # fmt: skip
    for name in unpackaged(extensions):
        header += (f"-- postgressor cannot install the extension {name} on a box (no package for it in "
                   "Debian's or Ubuntu's archive or PGDG): replace what uses it before you migrate.\n")
    return Export(header + preamble(extensions) + filtered.sql, filtered.removed, list(extensions),
                  info.schemas, filtered.rewritten, info.server_major)  # fmt: skip


def export_schema(url: str, pg_dump: str | None = None) -> Export:
    """Dump the application's schema from ``url`` and filter it for vanilla PostgreSQL."""
    conninfo, password = split_password(url)
    label = describe(url)
    with connect(url, label) as conn:
        info = inspect_source(conn)
    if not info.schemas:
        raise UsageError(f"{label} has no application schema to export (only Supabase-managed ones)")
    tool = choose_pg_dump([PgDump(p, pg_dump_version(p)) for p in candidates(pg_dump)], info.server_major)
    try:
        done = subprocess.run(pg_dump_command(tool.path, conninfo, info.schemas), capture_output=True, text=True,
                              env=dump_env(password), timeout=600)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise PostgressorError(f"pg_dump of {label} took longer than 10 minutes; check the connection") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        reason = mask_url(lines[-1] if lines else f"exit {done.returncode}")
        raise PostgressorError(f"pg_dump of {label} failed: {reason}")
    return build_export(done.stdout, info, label)
