"""`schema export`: a schema-only pg_dump of a (Supabase) dev database that applies to vanilla PostgreSQL.

pg_dump is asked for the application's own schemas only, without owners and privileges; the output is
then filtered statement by statement: Supabase-managed schemas, extensions, event triggers, publications,
grants, owners, foreign keys into managed schemas and psql meta-commands go; ``extensions.``-qualified
names are rewritten to where postgressor installs extensions.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from postgressor.dbconnect import connect, describe, mask_url, split_password
from postgressor.errors import PostgressorError, UsageError
from postgressor.migrations import sqltext

MANAGED_SCHEMAS = frozenset({
    "auth", "storage", "realtime", "_realtime", "supabase_functions", "supabase_migrations", "extensions",
    "graphql", "graphql_public", "pgsodium", "pgsodium_masks", "vault", "net", "pgbouncer", "_analytics",
    "_supavisor", "cron", "pgtle", "pgmq", "topology", "tiger", "tiger_data", "postgressor",
})  # fmt: skip
# Extensions Supabase installs in every project; others are worth telling the user about.
SUPABASE_DEFAULT_EXTENSIONS = frozenset({
    "plpgsql", "pg_graphql", "pg_stat_statements", "pgcrypto", "pgjwt", "supabase_vault", "uuid-ossp",
    "pgsodium", "pg_net", "pg_cron",
})  # fmt: skip
PG_DUMP_LOCATIONS = (
    "/usr/lib/postgresql/*/bin/pg_dump", "/usr/pgsql-*/bin/pg_dump", "/opt/homebrew/opt/postgresql@*/bin/pg_dump",
    "/usr/local/opt/postgresql@*/bin/pg_dump", "/Applications/Postgres.app/Contents/Versions/*/bin/pg_dump",
)  # fmt: skip

NOTED = frozenset({"foreign keys into managed schemas", "triggers calling managed functions"})
_DROPPED = [(reason, re.compile(pattern, re.IGNORECASE)) for reason, pattern in (
    ("extensions", r"^(?:CREATE|ALTER|COMMENT\s+ON)\s+EXTENSION\b"),
    ("event triggers", r"^(?:CREATE|ALTER|COMMENT\s+ON)\s+EVENT\s+TRIGGER\b"),
    ("publications", r"^(?:(?:CREATE|ALTER|COMMENT\s+ON)\s+PUBLICATION|CREATE\s+SUBSCRIPTION)\b"),
    ("grants", r"^(?:GRANT|REVOKE|ALTER\s+DEFAULT\s+PRIVILEGES)\b"),
    ("security labels", r"^SECURITY\s+LABEL\b"),
    ("settings newer servers only know", r"^SET\s+transaction_timeout\b"),
    ("comment on schema public", r'^COMMENT\s+ON\s+SCHEMA\s+"?public"?\s'),
)]  # fmt: skip
_OWNER = re.compile(r"^ALTER\s+\w+(?:\s+\w+)?\s+.*\sOWNER\s+TO\s", re.IGNORECASE | re.DOTALL)
_SCHEMA_STATEMENT = re.compile(r'^(CREATE|COMMENT\s+ON)\s+SCHEMA\s+("?)([^\s";]+)\2', re.IGNORECASE)
_QUALIFIED = r'(?<![\w."$])"?({schemas})"?\.(?=["\w])'
_SEED_FUNCTION = re.compile(
    r'^(?:CREATE(?:\s+OR\s+REPLACE)?\s+FUNCTION|COMMENT\s+ON\s+FUNCTION)\s+"?public"?\."?current_user_id"?\(\)',
    re.IGNORECASE,
)


@dataclass
class Export:
    sql: str
    removed: dict[str, int] = field(default_factory=dict)  # reason -> statements dropped
    extensions: list[str] = field(default_factory=list)  # non-default extensions the dev database uses
    schemas: list[str] = field(default_factory=list)


def _managed_pattern(names: frozenset[str]) -> re.Pattern[str]:
    return re.compile(_QUALIFIED.format(schemas="|".join(sorted(map(re.escape, names)))))


def classify(statement: str, managed: frozenset[str] = MANAGED_SCHEMAS) -> str | None:
    """Why a pg_dump statement must go, or None to keep it."""
    head = statement.lstrip()
    for reason, pattern in _DROPPED:
        if pattern.match(head):
            return reason
    if _OWNER.match(head):
        return "owners"
    schema = _SCHEMA_STATEMENT.match(head)
    if schema and schema.group(3) in managed:
        return "managed schemas"
    if _SEED_FUNCTION.match(head):
        return "current_user_id() (postgressor provides it)"
    references = _managed_pattern(managed - {"extensions"})
    if re.match(r"^ALTER\s+TABLE\b", head, re.I) and re.search(r"\bFOREIGN\s+KEY\b", head, re.I):
        target = re.search(r"\bREFERENCES\s+(.*)", head, re.I | re.S)
        if target and references.match(target.group(1)):
            return "foreign keys into managed schemas"
    if re.match(r"^CREATE\s+(?:CONSTRAINT\s+)?TRIGGER\b", head, re.I):
        call = re.search(r"\bEXECUTE\s+(?:FUNCTION|PROCEDURE)\s+(.*)", head, re.I | re.S)
        if call and references.match(call.group(1)):
            return "triggers calling managed functions"
    return None


def rewrite(statement: str) -> str:
    """Make kept statements vanilla: schemas idempotent, extension objects found where we install them."""
    return sqltext.map_code(statement, _rewrite_code)


def _rewrite_code(statement: str) -> str:
    statement = re.sub(r"^CREATE\s+SCHEMA\s+(?!IF\s+NOT\s+EXISTS)", "CREATE SCHEMA IF NOT EXISTS ", statement,
                       flags=re.IGNORECASE)  # fmt: skip
    statement = re.sub(r'"?extensions"?\."?uuid_generate_v4"?\(\)', "gen_random_uuid()", statement)
    return _managed_pattern(frozenset({"extensions"})).sub("public.", statement)


def filter_dump(dump: str, managed: frozenset[str] = MANAGED_SCHEMAS) -> tuple[str, dict[str, int]]:
    """The dump without what vanilla PostgreSQL (or postgressor's own migrations) would reject."""
    kept: list[str] = []
    removed: dict[str, int] = {}
    for seg in sqltext.split(dump):
        if seg.kind == "meta":
            removed["psql meta-commands"] = removed.get("psql meta-commands", 0) + 1
            continue
        reason = classify(seg.statement, managed) if seg.kind == "sql" else None
        if reason:
            removed[reason] = removed.get(reason, 0) + 1
            if reason in NOTED:  # worth seeing in place: the app's own schema lost something
                kept.append(f"\n-- postgressor removed ({reason}): {' '.join(seg.statement.split())[:160]}\n")
            continue
        kept.append(seg.source[seg.start : seg.first] + rewrite(seg.statement) if seg.kind == "sql" else seg.text)
    text = re.sub(r"\n{3,}", "\n\n", "".join(kept))
    return text, removed


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


def inspect_source(conn: psycopg.Connection) -> tuple[int, list[str], list[str]]:
    """Server major version, the schemas holding the application's objects, and its extensions."""
    version = conn.info.server_version // 10000
    schemas = [r[0] for r in conn.execute(_SCHEMAS).fetchall() if r[0] not in MANAGED_SCHEMAS]
    extensions = [r[0] for r in conn.execute("SELECT extname FROM pg_catalog.pg_extension ORDER BY 1").fetchall()]
    return version, schemas, [e for e in extensions if e not in SUPABASE_DEFAULT_EXTENSIONS]


def pg_dump_command(tool: str, conninfo: str, schemas: list[str]) -> list[str]:
    """argv for pg_dump; ``conninfo`` must already be free of the password (it shows in the process list)."""
    args = [tool, "--schema-only", "--no-owner", "--no-privileges", "--no-security-labels",
            "--no-publications", "--no-subscriptions", "--no-tablespaces"]
    args += [f"--schema={name}" for name in schemas]
    return [*args, "--dbname", conninfo]


def dump_env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def export_schema(url: str, pg_dump: str | None = None) -> Export:
    """Dump the application's schema from ``url`` and filter it for vanilla PostgreSQL."""
    conninfo, password = split_password(url)
    label = describe(url)
    with connect(url, label) as conn:
        server_major, schemas, extensions = inspect_source(conn)
    if not schemas:
        raise UsageError(f"{label} has no application schema to export (only Supabase-managed ones)")
    tool = choose_pg_dump([PgDump(p, pg_dump_version(p)) for p in candidates(pg_dump)], server_major)
    try:
        done = subprocess.run(pg_dump_command(tool.path, conninfo, schemas), capture_output=True, text=True,
                              env=dump_env(password), timeout=600)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise PostgressorError(f"pg_dump of {label} took longer than 10 minutes; check the connection") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        reason = mask_url(lines[-1] if lines else f"exit {done.returncode}")
        raise PostgressorError(f"pg_dump of {label} failed: {reason}")
    text, removed = filter_dump(done.stdout)
    header = (f"-- Schema exported by 'postgressor schema export' from {label} (PostgreSQL {server_major}).\n"
              "-- Supabase-managed schemas, extensions, event triggers, publications, grants and owners removed.\n")
    if extensions:
        header += (f"-- The source uses extensions {', '.join(extensions)}: list them in [postgres] extensions "
                   "so the box installs them.\n")
    return Export(header + text, removed, extensions, schemas)
