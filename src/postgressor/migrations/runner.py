"""Apply postgressor's built-in migrations, then the project's SQL files, then the sync-table policies.

Every migration runs in its own transaction and is recorded in postgressor.schema_migrations with a
checksum; a recorded file whose content changed is refused. A session advisory lock keeps two runs
against one database from interleaving.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg

from postgressor.config import SyncTable
from postgressor.errors import PostgressorError, UsageError
from postgressor.migrations import policies, sqltext

BUILTIN_PREFIX = "postgressor/"
LOCK_KEY = "postgressor.migrate"
_PLPGSQL_LINE = re.compile(r"inline_code_block line (\d+)")
_TRANSACTION_CONTROL = re.compile(
    r"^(?:BEGIN|COMMIT|END|ABORT|START\s+TRANSACTION)\b|^ROLLBACK\b(?!\s+(?:WORK\s+|TRANSACTION\s+)?TO\b)",
    re.IGNORECASE,
)

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS postgressor;
CREATE TABLE IF NOT EXISTS postgressor.schema_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration interval NOT NULL
);
"""


@dataclass(frozen=True)
class Migration:
    name: str  # the record key: a file name, or postgressor/<file> for built-ins
    sql: str
    origin: str  # where to look when it fails: a path, or the built-in's name

    @property
    def checksum(self) -> str:
        return checksum(self.sql)


def checksum(text: str) -> str:
    """sha256 of the content with line endings normalised (a CRLF checkout is not a change)."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


def builtin_migrations() -> list[Migration]:
    folder = resources.files("postgressor.migrations.builtin")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [
        Migration(BUILTIN_PREFIX + f.name, f.read_text(encoding="utf-8"), f"built-in {f.name}") for f in files
    ]


def project_migrations(directory: Path, required: bool) -> list[Migration]:
    """The *.sql files of ``directory`` in name order; a missing directory is empty unless ``required``."""
    if not directory.exists():
        if required:
            raise UsageError(
                f"migrations directory {directory} not found; create it or fix [migrations] directory"
            )
        return []
    if not directory.is_dir():
        raise UsageError(
            f"{directory} is not a directory; point [migrations] directory at the SQL files' folder"
        )
    found = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if path.suffix != ".sql" or path.name.startswith(".") or not path.is_file():
            continue
        try:
            found.append(Migration(path.name, path.read_text(encoding="utf-8"), str(path)))
        except UnicodeDecodeError:
            raise UsageError(f"migration {path} is not UTF-8 text; re-save it as UTF-8") from None
    return found


def all_migrations(directory: Path, required: bool) -> list[Migration]:
    return builtin_migrations() + project_migrations(directory, required)


@dataclass
class Applied:
    name: str
    seconds: float


@dataclass
class Plan:
    pending: list[Migration]
    applied: list[str]
    vanished: list[str]  # recorded, but no file any more (left alone)
    tables: list[policies.TablePolicies]

    @property
    def has_work(self) -> bool:
        return bool(self.pending) or any(t.has_work for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": [m.name for m in self.pending], "applied": self.applied, "vanished": self.vanished,
            "tables": [t.as_dict() for t in self.tables],
        }  # fmt: skip


@dataclass
class Result:
    applied: list[Applied] = field(default_factory=list)
    already: int = 0
    tables: list[policies.TablePolicies] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": [{"name": a.name, "seconds": round(a.seconds, 3)} for a in self.applied],
            "already_applied": self.already,
            "tables": [t.as_dict() for t in self.tables],
        }


def recorded(conn: psycopg.Connection) -> dict[str, str]:
    """name -> checksum of every applied migration; empty when the tracking table does not exist yet."""
    exists = conn.execute(
        "SELECT pg_catalog.to_regclass('postgressor.schema_migrations') IS NOT NULL"
    ).fetchone()
    if not exists or not exists[0]:
        return {}
    return dict(conn.execute("SELECT name, checksum FROM postgressor.schema_migrations").fetchall())


def pending(migrations: list[Migration], done: dict[str, str]) -> list[Migration]:
    """The migrations still to run, in order; any applied one whose content changed is an error."""
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise UsageError("two migrations share a name; rename one")  # only possible via a bad built-in
    for m in migrations:
        if m.name in done and done[m.name] != m.checksum:
            raise PostgressorError(
                f"migration {m.origin} was changed after it was applied (checksum differs); restore its "
                "applied content and put the change in a new migration file"
            )
    return [m for m in migrations if m.name not in done]


def plan(conn: psycopg.Connection, migrations: list[Migration], tables: list[SyncTable]) -> Plan:
    """What ``run`` would do, without changing anything."""
    done = recorded(conn)
    todo = pending(migrations, done)
    known = {m.name for m in migrations}
    table_plans = policies.plan_policies(conn, tables)
    if not todo:
        for t in table_plans:
            if t.missing:
                raise PostgressorError(
                    f"sync table {t.table} does not exist; create it in a migration or remove it from "
                    "[[sync.tables]]"
                )
    return Plan(todo, [m.name for m in migrations if m.name in done], sorted(set(done) - known), table_plans)


def run(conn: psycopg.Connection, migrations: list[Migration], tables: list[SyncTable]) -> Result:
    """Apply pending migrations, then the policies. ``conn`` must be in autocommit mode."""
    if not conn.autocommit:
        raise ValueError("run() needs an autocommit connection: it manages transactions itself")
    policies.check_config(tables)
    with _advisory_lock(conn):
        with conn.transaction():
            conn.execute(_BOOTSTRAP)
        done = recorded(conn)
        result = Result(already=len(done.keys() & {m.name for m in migrations}))
        for m in pending(migrations, done):
            result.applied.append(Applied(m.name, apply(conn, m)))
        result.tables = policies.apply_policies(conn, tables)
    return result


class _advisory_lock:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        row = self.conn.execute(
            "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext(%s))", [LOCK_KEY]
        ).fetchone()
        if not row or not row[0]:
            raise PostgressorError(
                "another 'postgressor migrate' is running on this database; wait for it and retry"
            )

    def __exit__(self, *exc: object) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext(%s))", [LOCK_KEY])


def apply(conn: psycopg.Connection, migration: Migration) -> float:
    """Run one migration and its record in one transaction; return its duration in seconds."""
    segments = sqltext.statements(migration.sql)
    for seg in segments:
        if seg.kind == "meta":
            raise UsageError(
                f"migration {migration.origin} line {seg.line}: psql meta-command "
                f"'{seg.statement.split()[0]}' is not SQL; remove it"
            )
        if _TRANSACTION_CONTROL.match(seg.statement):
            raise UsageError(_ends_transaction(migration, seg))
    started = time.monotonic()
    current: sqltext.Segment | None = None
    try:
        with conn.transaction():
            for current in segments:
                conn.execute(current.text.encode())
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
                    raise _EndsTransaction()
            seconds = time.monotonic() - started
            conn.execute(
                "INSERT INTO postgressor.schema_migrations (name, checksum, duration) "
                "VALUES (%s, %s, make_interval(secs => %s))",
                [migration.name, migration.checksum, seconds],
            )
    except _EndsTransaction:
        assert current is not None
        raise PostgressorError(_ends_transaction(migration, current)) from None
    except psycopg.Error as err:
        raise PostgressorError(describe_failure(migration, current, err)) from None
    finally:
        _reset_session(conn)
    return seconds


def _reset_session(conn: psycopg.Connection) -> None:
    """Session settings a migration made (pg_dump's search_path, SET ROLE) must not leak into the next."""
    if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.execute("RESET ALL")
        conn.execute("RESET ROLE")


class _EndsTransaction(Exception):
    pass


def _ends_transaction(migration: Migration, segment: sqltext.Segment) -> str:
    return (
        f"migration {migration.origin} line {segment.line} controls the transaction itself; remove "
        "BEGIN/COMMIT/ROLLBACK (each migration already runs in its own transaction)"
    )


def failure_line(segment: sqltext.Segment, err: psycopg.Error) -> int:
    """The file line an error points at: its position when PostgreSQL gives one, else the statement."""
    diag = err.diag
    if diag.statement_position:
        # the position counts characters from 1 in the text sent, which starts at segment.start
        return sqltext.line_of(segment.source, segment.start + int(diag.statement_position) - 1)
    found = _PLPGSQL_LINE.search(diag.context or "")
    if found:
        body = re.search(r"\$[A-Za-z_0-9]*\$", segment.statement)
        if body:  # PL/pgSQL counts lines from the one holding the opening $tag$
            return sqltext.line_of(segment.source, segment.first + body.start()) + int(found.group(1)) - 1
    return segment.line


def describe_failure(migration: Migration, segment: sqltext.Segment | None, err: psycopg.Error) -> str:
    diag = err.diag
    message = (diag.message_primary or str(err).strip().splitlines()[0]).rstrip(".")
    where = f" line {failure_line(segment, err)}" if segment is not None else ""
    code = f" (SQLSTATE {diag.sqlstate})" if diag.sqlstate else ""
    hint = f"; hint: {diag.message_hint}" if diag.message_hint else ""
    return (
        f"migration {migration.origin}{where} failed: {message}{code}{hint}; nothing from this file was "
        "applied: fix it and run 'postgressor migrate' again"
    )
