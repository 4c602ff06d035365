"""`move`: copy live tables from a (Supabase) database to the box with logical replication, then switch.

``start`` checks the source can publish and the target's columns match, then creates a publication on the
source and a subscription on the target (initial copy, then streaming). ``status`` reads the copy state and
the lag, ``cutover`` blocks writes on the source tables, lets the target catch up to the source's WAL position,
copies sequence positions, verifies row counts and checksums and drops both sides' objects; ``abort`` drops
them without switching.

The source is a URL (the target's server connects to it for the subscription, so it holds the password);
the target is an open autocommit psycopg connection (the box through the SSH tunnel, or a URL). Messages name
the source by ``user@host:port/db`` only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from postgressor.errors import PostgressorError, UsageError
from postgressor.masking import mask_url
from postgressor.migrations.policies import TableRef
from postgressor.remote.database import connect, describe, parse_url

PUBLICATION = "postgressor_move"
SUBSCRIPTION = "postgressor_move"  # its replication slot on the source has the same name
SEQUENCE_MARGIN = 1000  # added to the source's sequence positions at cutover (see copy_sequences)
COPY_STATES = {"i": "initializing", "d": "copying", "f": "copied", "s": "synchronized", "r": "streaming"}
# Session settings that make row text identical on both sides, whatever each server's defaults are.
CANONICAL_TEXT = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
                  "SET extra_float_digits = 3", "SET bytea_output = 'hex'")  # fmt: skip


@dataclass(frozen=True)
class Table(TableRef):
    """A table to move; shown as ``schema.name`` as written (case kept, unquoted) in messages."""

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def parse_tables(text: str) -> list[Table]:
    """``"OR,app.items"`` -> [public.OR, app.items]: names as written (case kept), schema public by default.

    Raises UsageError on an empty list or an empty name.
    """
    tables: list[Table] = []
    for part in (p.strip() for p in text.split(",")):
        schema, dot, name = part.partition(".")
        table = Table(schema, name) if dot else Table("public", part)
        if not table.schema or not table.name:
            raise UsageError(f"invalid table '{part}' in --tables; write NAME or SCHEMA.NAME, comma-separated")
        if table not in tables:
            tables.append(table)
    if not tables:
        raise UsageError("--tables is empty; name the tables to move, e.g. --tables OR,items")
    return tables


@dataclass
class Names:
    """What ``start`` creates: the publication on the source, the subscription (and its slot) on the target."""

    publication: str = PUBLICATION
    subscription: str = SUBSCRIPTION

    @property
    def slot(self) -> str:
        return self.subscription


def source_connection(source_url: str, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the source; failures are one line naming it without the password."""
    parse_url(source_url)
    conn = connect(source_url, f"the source {describe(source_url)}")
    conn.autocommit = autocommit
    return conn


def _oid(conn: psycopg.Connection, table: Table) -> int | None:
    row = conn.execute("SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                       [table.schema, table.name]).fetchone()  # fmt: skip
    return None if row is None else int(row[0])


def publish_problems(source: psycopg.Connection, tables: list[Table]) -> list[str]:
    """Why the source cannot publish ``tables`` to a subscriber, one line per fix; [] when it can."""
    problems: list[str] = []
    wal_level = source.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
    if wal_level != "logical":
        problems.append(f"the source has wal_level = {wal_level}; set it to logical (ALTER SYSTEM SET wal_level = "
                        "logical; then restart PostgreSQL; Supabase projects have it already)")  # fmt: skip
    user, superuser, replication, can_create = source.execute(
        "SELECT current_user, rolsuper, rolreplication, has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()  # type: ignore[misc]
    if not (superuser or replication):
        problems.append(f"role {user} on the source may not replicate; connect as a role with REPLICATION "
                        f"(on Supabase: postgres) or run ALTER ROLE \"{user}\" WITH REPLICATION")  # fmt: skip
    if not (superuser or can_create):
        problems.append(f"role {user} may not create publications in the source database; GRANT CREATE ON "
                        f"DATABASE to it or connect as the owner (on Supabase: postgres)")  # fmt: skip
    free = source.execute(
        "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_catalog.pg_replication_slots)"
    ).fetchone()[0]  # type: ignore[index]
    if free < 1:
        problems.append("the source has no free replication slot; raise max_replication_slots or drop an unused "
                        "slot (SELECT slot_name FROM pg_replication_slots WHERE NOT active)")  # fmt: skip
    for table in tables:
        oid = _oid(source, table)
        if oid is None:
            problems.append(f"table {table} does not exist on the source")
            continue
        owner, identity, has_key = source.execute(
            "SELECT pg_has_role(current_user, c.relowner, 'USAGE'), c.relreplident, EXISTS (SELECT 1 FROM "
            "pg_catalog.pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)) "
            "FROM pg_catalog.pg_class c WHERE c.oid = %s", [oid]).fetchone()  # type: ignore[misc]
        if not (owner or superuser):
            problems.append(f"role {user} does not own table {table} on the source; connect as its owner "
                            "(on Supabase: postgres)")  # fmt: skip
        if not has_key:
            problems.append(f"table {table} has no primary key; add one (ALTER TABLE {_quoted(table)} ADD PRIMARY "
                            "KEY (...)): updates and deletes cannot replicate and the rows cannot be checked")
        elif identity == "n":
            problems.append(f"table {table} has REPLICA IDENTITY NOTHING; run ALTER TABLE {_quoted(table)} "
                            "REPLICA IDENTITY DEFAULT")  # fmt: skip
    return problems


def _quoted(table: Table) -> str:
    return '"' + table.schema.replace('"', '""') + '"."' + table.name.replace('"', '""') + '"'


def _columns(conn: psycopg.Connection, table: Table) -> dict[str, tuple[str, bool, bool]]:
    """column -> (type, not null, has default), in column order."""
    rows = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        "a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", [_oid(conn, table)]
    ).fetchall()
    return {name: (kind, notnull, default) for name, kind, notnull, default in rows}


def column_mismatches(source: psycopg.Connection, target: psycopg.Connection, tables: list[Table]) -> list[str]:
    """Differences that break replication, one line per column (or per missing table); [] when none."""
    problems: list[str] = []
    for table in tables:
        if _oid(target, table) is None:
            problems.append(f"table {table} does not exist on the target; run 'postgressor schema export' and "
                            "'postgressor migrate' first")  # fmt: skip
            continue
        if _oid(source, table) is None:
            continue  # said by publish_problems
        theirs, ours = _columns(source, table), _columns(target, table)
        for column, (kind, _, _) in theirs.items():
            if column not in ours:
                problems.append(f"{table}.{column}: missing on the target (source type {kind})")
            elif ours[column][0] != kind:
                problems.append(f"{table}.{column}: {kind} on the source, {ours[column][0]} on the target")
        for column, (_, notnull, default) in ours.items():
            if column not in theirs and notnull and not default:
                problems.append(f"{table}.{column}: only on the target, NOT NULL without a default "
                                "(copied rows would fail)")  # fmt: skip
    return problems


def _filled(target: psycopg.Connection, tables: list[Table]) -> list[str]:
    return [f"table {t} on the target already has rows; empty it (TRUNCATE) so the copy does not collide"
            for t in tables if _oid(target, t) is not None
            and target.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(t.ident)).fetchone()[0]]  # type: ignore[index]  # fmt: skip


def start(source_url: str, target: psycopg.Connection, tables: list[Table], names: Names | None = None,
          log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:  # fmt: skip
    """Check both sides, then create the publication (source) and the subscription (target; copy, then stream).

    Returns {"publication", "subscription", "slot", "tables": [str], "source": "user@host:port/db"}.
    Raises UsageError listing every problem (one per line) before anything is created; PostgressorError when
    creating fails (what was created is dropped again).
    """
    names = names or Names()
    with source_connection(source_url) as source:
        problems = publish_problems(source, tables)
        if denied := subscribe_problems(target):  # the checks below read the target's tables: stop here
            raise UsageError("the move cannot start:\n" + "\n".join(problems + denied))
        problems += column_mismatches(source, target, tables)
        problems += _filled(target, tables)
        if _exists(target, "pg_subscription", "subname", names.subscription):
            problems.append(f"subscription {names.subscription} exists on the target: a move is under way "
                            "('postgressor move status', or 'move abort' to start over)")  # fmt: skip
        if _exists(source, "pg_replication_slots", "slot_name", names.slot):
            problems.append(f"replication slot {names.slot} exists on the source: a move is under way or was left "
                            f"behind ('postgressor move abort', or SELECT pg_drop_replication_slot('{names.slot}') "
                            "there when no subscription uses it)")  # fmt: skip
        if _exists(source, "pg_publication", "pubname", names.publication):
            problems.append(f"publication {names.publication} exists on the source: a move is under way "
                            "('postgressor move abort' to start over)")  # fmt: skip
        if problems:
            raise UsageError("the move cannot start:\n" + "\n".join(problems))
        listed = sql.SQL(", ").join(t.ident for t in tables)
        try:
            source.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(names.publication), listed))
            log(f"created publication {names.publication} on {describe(source_url)}")
            quiet_statement_logging(target)  # the statement holds the source's password
            create = "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true)"
            target.execute(sql.SQL(create).format(
                sql.Identifier(names.subscription), sql.Literal(source_url), sql.Identifier(names.publication)))
        except psycopg.Error as err:
            reason = _reason(err)
            abort(source_url, target, names)
            raise PostgressorError(f"creating the move failed ({reason}); nothing is left behind") from None
        log(f"created subscription {names.subscription} on the target; the initial copy runs")
    return {"publication": names.publication, "subscription": names.subscription, "slot": names.slot,
            "tables": [str(t) for t in tables], "source": describe(source_url)}  # fmt: skip


def quiet_statement_logging(conn: psycopg.Connection) -> None:
    """Keep this session's statements out of the server log, even when one fails (``log_min_error_statement``
    logs a failed statement's text by default). Superuser-only settings: a role that may not set them (the
    PostgreSQL 16 ``pg_create_subscription`` route) keeps the server's."""
    for setting in ("log_min_error_statement = panic", "log_statement = 'none'"):
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET {setting}")


def subscribe_problems(target: psycopg.Connection) -> list[str]:
    """Whether the target's role may ``CREATE SUBSCRIPTION``: a superuser, or from PostgreSQL 16 a member of
    ``pg_create_subscription`` with CREATE on the database (PostgreSQL docs, "CREATE SUBSCRIPTION")."""
    user, superuser, version, member, can_create = target.execute(
        "SELECT current_user, rolsuper, current_setting('server_version_num')::int, "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'pg_create_subscription' "
        "AND pg_has_role(current_user, r.oid, 'USAGE')), has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()  # type: ignore[misc]
    if superuser or (version >= 160000 and member and can_create):
        return []
    fix = ("GRANT pg_create_subscription TO " + user + " and CREATE on the database"
           if version >= 160000 else "a superuser (PostgreSQL 15 and older)")  # fmt: skip
    return [f"role {user} on the target may not create a subscription; connect as {fix}"]


def _reason(err: psycopg.Error) -> str:
    return mask_url(" ".join(str(err).split()))


def _exists(conn: psycopg.Connection, catalog: str, column: str, name: str) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} = %s)").format(
        sql.Identifier("pg_catalog", catalog), sql.Identifier(column))
    return bool(conn.execute(query, [name]).fetchone()[0])  # type: ignore[index]


@dataclass
class TableStatus:
    table: str
    state: str  # initializing, copying, copied, synchronized, streaming (or "not subscribed")
    rows: int  # rows on the target now


@dataclass
class Status:
    tables: list[TableStatus]
    lag_bytes: int | None  # source WAL not yet confirmed by the subscriber; None: no slot
    lag_seconds: float  # the source walsender's replay lag (0 when idle or caught up)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(source_url: str, target: psycopg.Connection, tables: list[Table], names: Names | None = None) -> Status:
    """Per table the copy state and the rows on the target, the lag, and what is wrong (errors, stopped worker)."""
    names = names or Names()
    with source_connection(source_url) as source:
        return _status(source, target, tables, names)


def _status(source: psycopg.Connection, target: psycopg.Connection, tables: list[Table], names: Names) -> Status:
    errors: list[str] = []
    sub = target.execute("SELECT oid, subenabled FROM pg_catalog.pg_subscription WHERE subname = %s",
                         [names.subscription]).fetchone()  # fmt: skip
    states: dict[int, str] = {}
    if sub is None:
        errors.append(f"no subscription {names.subscription} on the target ('postgressor move start' first)")
    else:
        if not sub[1]:
            errors.append(f"subscription {names.subscription} is disabled on the target")
        states = dict(target.execute("SELECT srrelid, srsubstate FROM pg_catalog.pg_subscription_rel "
                                     "WHERE srsubid = %s", [sub[0]]).fetchall())  # fmt: skip
        worker = target.execute("SELECT pid FROM pg_catalog.pg_stat_subscription WHERE subname = %s AND relid IS NULL",
                                [names.subscription]).fetchone()  # fmt: skip
        if sub[1] and (worker is None or worker[0] is None):
            errors.append("the subscription's apply worker is not running (see the target's server log)")
        counts = target.execute("SELECT apply_error_count, sync_error_count FROM pg_catalog."
                                "pg_stat_subscription_stats WHERE subname = %s",
                                [names.subscription]).fetchone()  # fmt: skip
        if counts is not None and (counts[0] or counts[1]):
            errors.append(f"the subscription hit {counts[0]} apply and {counts[1]} copy error(s) (the target's "
                          "server log says which; it retries)")  # fmt: skip
    result: list[TableStatus] = []
    for table in tables:
        oid = _oid(target, table)
        state = COPY_STATES.get(states.get(oid, ""), "not subscribed") if oid is not None else "missing"
        count = sql.SQL("SELECT count(*) FROM {}").format(table.ident)
        rows = 0 if oid is None else target.execute(count).fetchone()[0]  # type: ignore[index]
        result.append(TableStatus(str(table), state, int(rows)))
    slot = source.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, wal_status "
                          "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                          [names.slot]).fetchone()  # fmt: skip
    if slot is None and sub is not None:
        errors.append(f"replication slot {names.slot} is missing on the source")
    elif slot is not None and slot[1] == "lost":
        errors.append(f"replication slot {names.slot} on the source is lost (WAL removed); "
                      "'move abort' and start again")
    lag = source.execute("SELECT coalesce(extract(epoch FROM replay_lag), 0)::float8 "
                         "FROM pg_catalog.pg_stat_replication WHERE application_name = %s",
                         [names.subscription]).fetchone()  # fmt: skip
    return Status(result, None if slot is None else int(slot[0] or 0), float(lag[0]) if lag else 0.0, errors)


@dataclass
class TableCheck:
    table: str
    rows: int
    checksum: str  # md5 over the rows' md5s in primary-key order


@dataclass
class Cutover:
    tables: list[TableCheck]
    sequences: dict[str, int]  # target sequence -> the value set (its next value is greater)
    lock_wait_seconds: float  # waiting for in-flight writes to finish before the lock was granted
    write_pause_seconds: float  # from asking for the lock until it was released: writes were blocked
    caught_up_lsn: str  # the source WAL position the target confirmed under the lock

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wait(what: str, seconds: float, ready: Callable[[], bool], pause: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise PostgressorError(f"{what} did not happen within {seconds:g} s")
        time.sleep(pause)


def _key_columns(conn: psycopg.Connection, table: Table) -> list[str]:
    """The primary key's (else the replica identity index's) columns, in index order."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND (i.indisprimary OR i.indisreplident) ORDER BY i.indisprimary DESC, k.n",
        [_oid(conn, table)]).fetchall()  # fmt: skip
    seen: list[str] = []
    for (name,) in rows:
        if name not in seen:
            seen.append(name)
    return seen


def table_check(conn: psycopg.Connection, table: Table, columns: list[str], key: list[str]) -> TableCheck:
    """Row count and md5(string_agg(md5(row text) ORDER BY key)) over ``columns`` of ``table``.

    ``conn`` must be in the CANONICAL_TEXT session settings so both sides render values alike.
    """
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    order = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(md5({}::text), '' ORDER BY {}), '')) FROM {}").format(
        row, order, table.ident)
    count, checksum = conn.execute(query).fetchone()  # type: ignore[misc]
    return TableCheck(str(table), int(count), str(checksum))


@contextmanager
def _canonical(conn: psycopg.Connection) -> Iterator[None]:
    for statement in CANONICAL_TEXT:
        conn.execute(statement)
    yield


def owned_sequences(conn: psycopg.Connection, table: Table) -> dict[str, str]:
    """column -> sequence (schema-qualified, quoted) for the table's serial and identity columns."""
    rows = conn.execute(
        "SELECT a.attname, pg_catalog.pg_get_serial_sequence(%s, a.attname) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped", [_quoted(table), _oid(conn, table)]
    ).fetchall()  # fmt: skip
    return {column: seq for column, seq in rows if seq}


def copy_sequences(source: psycopg.Connection, target: psycopg.Connection, tables: list[Table],
                   margin: int = SEQUENCE_MARGIN) -> dict[str, int]:  # fmt: skip
    """Set each target sequence to max(source position, target max(column)) + ``margin``; returns seq -> value.

    The source's position is at least every id it handed out (committed or not, cached included), so the
    target's next value is above every copied id; the margin keeps ids a straggling source writer takes
    (one not yet repointed) from colliding with the box's new ones.
    """
    done: dict[str, int] = {}
    for table in tables:
        theirs, ours = owned_sequences(source, table), owned_sequences(target, table)
        for column, sequence in ours.items():
            position = 0
            if column in theirs:
                last = source.execute("SELECT pg_catalog.pg_sequence_last_value(%s::regclass)",
                                      [theirs[column]]).fetchone()[0]  # type: ignore[index]
                position = int(last or 0)  # NULL: never called
            highest = target.execute(sql.SQL("SELECT max({})::bigint FROM {}").format(
                sql.Identifier(column), table.ident)).fetchone()[0]  # type: ignore[index]
            value = max(position, int(highest or 0)) + margin
            target.execute("SELECT pg_catalog.setval(%s::regclass, %s, true)", [sequence, value])
            done[sequence] = value
    return done


def cutover(source_url: str, target: psycopg.Connection, tables: list[Table], names: Names | None = None, *,
            catch_up_seconds: float = 120, lock_seconds: float = 10, sync_seconds: float = 30,
            margin: int = SEQUENCE_MARGIN, on_locked: Callable[[], None] = lambda: None,
            log: Callable[[str], None] = lambda message: None) -> Cutover:  # fmt: skip
    """Switch the tables to the target: lag 0, writes blocked, target caught up, sequences, checks, drop.

    Waits up to ``catch_up_seconds`` for every table to stream with the lag near 0, then takes
    ``LOCK TABLE ... IN EXCLUSIVE MODE`` on the source in one transaction (reads go on, writes wait; at most
    ``lock_seconds`` to get it), waits up to ``sync_seconds`` for the subscriber to confirm the source's WAL
    position, copies sequence positions, compares row counts and checksums, drops the subscription (and its
    slot), then drops the publication in the locking transaction and commits, which releases the lock.
    ``on_locked`` runs after the checks, before the release (the app can be repointed there).
    Raises PostgressorError when a wait runs out or the checks differ: the lock is released, the move goes on.
    """
    names = names or Names()
    with source_connection(source_url) as watcher, source_connection(source_url, autocommit=False) as locker:
        seen: list[Status] = []

        def caught_up() -> bool:
            seen[:] = [_status(watcher, target, tables, names)]
            if seen[0].lag_bytes is None:
                raise PostgressorError("the move has problems: " + "; ".join(seen[0].errors))
            return all(t.state == "streaming" for t in seen[0].tables) and seen[0].lag_bytes < 1024 * 1024

        try:
            _wait("the initial copy and catching up", catch_up_seconds, caught_up, pause=0.5)
        except PostgressorError as err:
            problems = "; ".join(seen[0].errors) if seen else ""
            raise PostgressorError(f"{err}" + (f" ({problems})" if problems else "") + "; nothing changed, "
                                   "see 'postgressor move status'") from None
        log("caught up; blocking writes on the source tables")
        locker.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_seconds * 1000)}ms")))
        asked = time.monotonic()
        try:
            try:
                locker.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(t.ident for t in tables)))
            except psycopg.errors.LockNotAvailable:
                raise PostgressorError(f"the source tables stayed busy for {lock_seconds:g} s (long transactions "
                                       "on them?); nothing changed, try again") from None
            granted = time.monotonic()
            lsn = str(locker.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]

            def confirmed() -> bool:
                row = watcher.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_catalog.pg_replication_slots "
                                      "WHERE slot_name = %s", [lsn, names.slot]).fetchone()  # fmt: skip
                return bool(row and row[0])

            _wait(f"the target confirming the source's position {lsn}", sync_seconds, confirmed, pause=0.02)
            log(f"the target confirmed {lsn}; comparing row counts and checksums")
            checks = _verify(locker, target, tables)
            sequences = copy_sequences(locker, target, tables, margin)
            on_locked()
            drop_subscription(target, names)
            locker.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(names.publication)))
            locker.commit()
            released = time.monotonic()
        except BaseException:
            locker.rollback()
            raise
        log(f"released the source tables after {released - asked:.3f} s")
    return Cutover(checks, sequences, granted - asked, released - asked, lsn)


def _verify(source: psycopg.Connection, target: psycopg.Connection, tables: list[Table]) -> list[TableCheck]:
    checks: list[TableCheck] = []
    with _canonical(source), _canonical(target):
        for table in tables:
            columns = list(_columns(source, table))
            key = _key_columns(source, table)
            theirs, ours = table_check(source, table, columns, key), table_check(target, table, columns, key)
            if theirs != ours:
                raise PostgressorError(f"{table} differs: {theirs.rows} rows (md5 {theirs.checksum}) on the source, "
                                       f"{ours.rows} (md5 {ours.checksum}) on the target; nothing switched, the "
                                       "move goes on ('postgressor move status')")  # fmt: skip
            checks.append(ours)
    return checks


def drop_subscription(target: psycopg.Connection, names: Names) -> bool:
    """Drop the subscription and, through it, its slot on the source; False when there was none."""
    if not _exists(target, "pg_subscription", "subname", names.subscription):
        return False
    target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(names.subscription)))
    return True


def abort(source_url: str, target: psycopg.Connection, names: Names | None = None) -> list[str]:
    """Drop what ``start`` created on both sides (subscription, its slot, publication); idempotent.

    Returns what was dropped, e.g. ["subscription postgressor_move", "publication postgressor_move"].
    A subscription whose source is unreachable is detached from its slot first, and the slot is dropped
    directly when the source answers.
    """
    names = names or Names()
    dropped: list[str] = []
    unreachable = ""
    try:
        source: psycopg.Connection | None = source_connection(source_url)
    except PostgressorError as err:
        source, unreachable = None, str(err)
    try:
        if _exists(target, "pg_subscription", "subname", names.subscription):
            ident = sql.Identifier(names.subscription)
            try:
                drop_subscription(target, names)
            except psycopg.Error:  # the source does not answer: forget the slot here, drop it below if we can
                target.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                target.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
            dropped.append(f"subscription {names.subscription}")
        if source is None:
            raise PostgressorError(f"{unreachable}; so publication {names.publication} and slot {names.slot} are "
                                   "still on the source: fix that, then run 'move abort' again")  # fmt: skip
        slot = source.execute("SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                              [names.slot]).fetchone()  # fmt: skip
        if slot is not None:
            if slot[0] is not None:
                source.execute("SELECT pg_catalog.pg_terminate_backend(%s)", [slot[0]])
                _wait(f"slot {names.slot} released", 10, lambda: not source.execute(
                    "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", [names.slot]
                ).fetchone()[0])  # type: ignore[index]
            source.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", [names.slot])
            dropped.append(f"slot {names.slot}")
        if _exists(source, "pg_publication", "pubname", names.publication):
            source.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(names.publication)))
            dropped.append(f"publication {names.publication}")
    finally:
        if source is not None:
            source.close()
    return dropped
