"""`schema export --verify`: apply an export to a fresh database in a separate throwaway cluster.

The cluster is set up like the box (box/deploys/postgres.py): a non-superuser owner with CREATEROLE owns the
database, the superuser creates Supabase's API roles and the [postgres] extensions (in schema
``extensions``). As that owner, postgressor's built-in migrations run, then the export one statement at a
time (each in its own transaction, so every failing statement is reported, not only the first), then the
project's other migrations and the [[sync.tables]] policies through the real runner.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from postgressor.config import SyncTable
from postgressor.errors import PostgressorError
from postgressor.migrations import runner, scratch, sqltext
from postgressor.migrations.dump_filter import API_ROLES, EXTENSIONS_SCHEMA

OWNER = "postgressor_verify_owner"
DATABASE = "app"


@dataclass(frozen=True)
class Failure:
    line: int  # 1-based line of the export (0: not a statement of the export)
    statement: str  # the statement's first line, shortened
    reason: str  # PostgreSQL's message and SQLSTATE, or the runner's one-line report


@dataclass
class Verdict:
    server: str  # e.g. "PostgreSQL 15.8 (/usr/lib/postgresql/15/bin)"
    major: int = 0  # the throwaway server's major version
    statements: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def available() -> Path | None:
    """initdb/pg_ctl's directory when a local PostgreSQL server is installed, else None."""
    return scratch.find_bindir()


def verify(export_sql: str, migrations: list[runner.Migration], tables: list[SyncTable],
           extensions: list[str], bins: Path) -> Verdict:  # fmt: skip
    """Apply ``export_sql`` then ``migrations`` (built-ins excluded: they run first) in a throwaway cluster.

    Raises PostgressorError when the cluster cannot start; statement failures are in the verdict.
    """
    password = secrets.token_hex(16)
    try:
        with scratch.running_cluster(bins) as cluster:
            _prepare(cluster, password, extensions)
            with cluster.connect(DATABASE, OWNER, password) as conn:
                verdict = Verdict(f"PostgreSQL {conn.info.parameter_status('server_version')} ({bins})",
                                  conn.info.server_version // 10000)
                runner.run(conn, runner.builtin_migrations(), [])
                _apply_export(conn, export_sql, verdict)
                if verdict.ok:
                    _apply_project(conn, migrations, tables, verdict)
            return verdict
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PostgressorError(f"cannot start a throwaway PostgreSQL cluster to verify the export: {first}") from None


def _prepare(cluster: scratch.Cluster, password: str, extensions: list[str]) -> None:
    """What the box's deploy does as the superuser before `postgressor migrate` runs."""
    cluster.ensure_role(OWNER, password, "NOSUPERUSER", "CREATEROLE", "INHERIT")
    with cluster.connect() as su:
        for role in sorted(API_ROLES):
            su.execute(f'CREATE ROLE "{role}" NOLOGIN')
        su.execute(f'GRANT {", ".join(sorted(API_ROLES))} TO "{OWNER}"')
        su.execute("ALTER ROLE service_role BYPASSRLS")
        su.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{OWNER}"')
    if not extensions:
        return
    with cluster.connect(DATABASE) as su:
        su.execute(f'CREATE SCHEMA IF NOT EXISTS {EXTENSIONS_SCHEMA} AUTHORIZATION "{OWNER}"')
        for name in extensions:
            # not installed locally: the export's own preamble reports it in place
            with contextlib.suppress(psycopg.Error):
                su.execute(f'CREATE EXTENSION IF NOT EXISTS "{name}" WITH SCHEMA {EXTENSIONS_SCHEMA}')


def _apply_export(conn: psycopg.Connection, text: str, verdict: Verdict) -> None:
    for seg in sqltext.statements(text):
        if seg.kind != "sql":
            verdict.failures.append(Failure(seg.line, _head(seg.statement), "psql meta-command, not SQL"))
            continue
        verdict.statements += 1
        try:
            conn.execute(seg.text.encode())
        except psycopg.Error as err:
            diag = err.diag
            message = (diag.message_primary or str(err).strip().splitlines()[0]).rstrip(".")
            code = f" (SQLSTATE {diag.sqlstate})" if diag.sqlstate else ""
            hint = f"; hint: {diag.message_hint}" if diag.message_hint else ""
            line = runner.failure_line(seg, err)
            verdict.failures.append(Failure(line, _head(seg.statement), message + code + hint))
    conn.execute("RESET ALL")


def _apply_project(conn: psycopg.Connection, migrations: list[runner.Migration], tables: list[SyncTable],
                   verdict: Verdict) -> None:  # fmt: skip
    try:
        runner.run(conn, runner.builtin_migrations() + migrations, tables)
    except PostgressorError as err:
        verdict.failures.append(Failure(0, "postgressor migrate", str(err)))


def _head(statement: str, limit: int = 80) -> str:
    first = " ".join(statement.split())
    return first if len(first) <= limit else first[: limit - 1] + "…"
