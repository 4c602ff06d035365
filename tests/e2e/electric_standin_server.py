"""A STAND-IN for Electric (electricsql/electric 1.7.12) inside the VM tests' container image. NOT Electric.

It runs in the image built by ``electric_standin_image.py`` (Debian's python3.11, psycopg with its bundled
libpq, pglast) and does against PostgreSQL what Electric does, so the box's wiring is really exercised:

- It connects with ``DATABASE_URL`` from the deploy's env file (the ``electric`` role, its password, the
  Docker-bridge ``pg_hba`` rule), first as a logical replication connection (``replication=database``) and runs
  Electric's setup steps (``lib/electric/postgres/replication_client/connection_setup.ex`` at tag
  ``@core/sync-service@1.7.12``): ``IDENTIFY_SYSTEM``, ``SELECT pg_advisory_lock(hashtext('<slot>'))``,
  ``CREATE PUBLICATION "electric_publication_default"`` (``publish_generated_columns = stored`` on PostgreSQL
  18+), on a newly created publication ``SELECT pg_drop_replication_slot('<slot>')``, then
  ``CREATE_REPLICATION_SLOT "electric_slot_default" LOGICAL pgoutput NOEXPORT_SNAPSHOT`` (names from
  ``lib/electric/application.ex``: ``electric_publication_#{replication_stream_id}``, stream id ``default``).
  A role without ``REPLICATION`` or with a wrong password stops it with exit 1 (Electric's
  ``db_connection_error.ex`` marks both ``retry_may_fix?: false``); an unreachable PostgreSQL is retried.
- On a shape request it adds the table to the publication and sets ``REPLICA IDENTITY FULL``
  (``lib/electric/postgres/configuration.ex`` ``configure_table_for_replication``, inside savepoints): both
  need the table's ownership, which the deploy grants through membership in the owner role.
- ``GET /v1/health``: 200 ``{"status":"active"}`` once set up and PostgreSQL answers a query through
  ``DATABASE_URL``, otherwise 202 ``{"status":"waiting"}`` (``lib/electric/plug/health_check_plug.ex``).
- ``/v1/shape``: ``secret`` (or ``api_secret``) must equal ``ELECTRIC_SECRET``, else 401
  ``{"message": "Unauthorized - Invalid API secret"}`` (``lib/electric/plug/router.ex``). The request rules
  (Plug query parsing, POST body merge, ``subset__*``, ``params``, ``columns``, the where grammar) are
  ``tests/electric_rules.py``, shared with the gateway tests' stand-in.
  ``offset=-1`` runs Electric's snapshot query (``lib/electric/shapes/querying.ex`` ``stream_initial_data`` /
  ``json_like_select``: key, text values and ``{"operation":"insert","relation":[schema,table]}`` built in SQL)
  with the shape's ``$n`` bound as parameters, and answers like ``lib/electric/shapes/api.ex`` and
  ``api/response.ex``: ``electric-offset: 0_inf``, no up-to-date (Electric never sets it on ``offset=-1``),
  ``cache-control: public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746``,
  ``electric-handle``, ``electric-schema`` (``lib/electric/schema.ex``), ``etag``, ``electric-has-data``.
  A later offset with the handle reads the changes since the snapshot from the logical slot (pgoutput
  protocol 1 via ``pg_logical_slot_peek_binary_changes``), keeps those whose row matches the where (evaluated
  by PostgreSQL over the replicated tuple) as insert/update/delete messages (``lib/electric/log_items.ex``
  headers), then an ``up-to-date`` control message and the ``electric-up-to-date`` header. A subset request
  runs ``query_subset``'s ``WHERE <shape where> AND (<subset where>)`` with ORDER BY/LIMIT/OFFSET.
- Every ``/v1/shape`` answer carries ``electric-standin-query``: the query it received, secret replaced by
  ``REDACTED``, so tests can check what the gateway pinned (an electric-* name, so the gateway passes it).

What it does NOT do: no live mode (``live=true`` answers at once, no long-poll, no SSE), no shape log or cache
on disk (every request queries PostgreSQL; the handle only encodes the shape's hash and the snapshot's WAL
position), offsets are WAL positions of the slot's transactions rather than Electric's log, snapshot/changes
boundary by WAL position (a commit racing the snapshot could be missed), no chunking, no 409 on schema changes,
no shape deletion, the slot is never advanced (the stand-in only peeks), no subqueries/functions in where.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import psycopg
from psycopg import pq

from electric_rules import (
    BadRequest,
    extract_subset,
    int_param,
    merge_body_params,
    order_by_sql,
    parse_body,
    parse_columns,
    plug_query,
    relation,
    string_map,
    where_sql,
)

PUBLICATION = "electric_publication_default"  # application.ex: "electric_publication_#{replication_stream_id}"
SLOT = "electric_slot_default"  # application.ex: "electric_slot_#{replication_stream_id}"
PG18 = 180_000
BEFORE_ALL = "-1"
SNAPSHOT_END = "0_inf"  # LogOffset.last_before_real_offsets()
INITIAL_CACHE = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
MAX_AGE, STALE_AGE = 60, 300  # config.ex: cache_max_age 60, cache_stale_age 60 * 5


class Fatal(Exception):
    """A configuration error no retry fixes: Electric stops."""


def log(message: str) -> None:
    print(f"electric-standin: {message}", file=sys.stderr, flush=True)


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class Standin:
    def __init__(self, url: str, secret: str | None) -> None:
        self.url = url
        self.secret = secret
        self.ready = False
        self.configured: set[tuple[str, str]] = set()
        self.slot_lock = threading.Lock()  # one peek at a time: a peek acquires the slot
        self.holder: psycopg.Connection | None = None  # the replication connection holds the advisory lock

    # --- start-up: connection_setup.ex ------------------------------------------------------------------

    def setup(self) -> None:
        try:
            conn = psycopg.connect(self.url, autocommit=True, replication="database", connect_timeout=5)
        except psycopg.OperationalError as err:
            text = str(err)
            if "REPLICATION attribute" in text or "must be superuser or replication role" in text:
                raise Fatal("User does not have the REPLICATION attribute. See "
                            "https://electric-sql.com/docs/guides/deployment#_1-running-postgres") from None
            if "password authentication failed" in text or "no pg_hba.conf entry" in text:
                raise Fatal(text.strip()) from None
            raise
        run = _simple(conn)
        run("IDENTIFY_SYSTEM")
        version = int(run("SELECT current_setting('server_version_num')")[0][0])
        run(f"SELECT pg_advisory_lock(hashtext('{SLOT}'))")
        query = f"CREATE PUBLICATION {quote_name(PUBLICATION)}"
        if version >= PG18:
            query += " WITH (publish_generated_columns = stored)"
        created = True
        try:
            run(query)
        except _SqlError as err:
            if err.sqlstate == "42710":  # already exists
                created = False
            elif err.sqlstate == "42501":  # insufficient_privilege: Electric then checks it exists
                created = False
                rows = run(f"SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication "
                           f"WHERE pubname = '{PUBLICATION}'")  # fmt: skip
                if not rows:
                    raise Fatal(f"Publication {PUBLICATION!r} not found in the database") from None
                if rows[0] != ("t", "t", "t", "t"):
                    raise Fatal(f"Publication {PUBLICATION!r} does not publish all operations") from None
            else:
                raise Fatal(err.message) from None
        if created:  # a new publication invalidates any old slot (electric-sql/electric#2692)
            exists = run(f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{SLOT}'")
            if exists:
                run(f"SELECT pg_drop_replication_slot('{SLOT}')")
        try:
            run(f"CREATE_REPLICATION_SLOT {quote_name(SLOT)} LOGICAL pgoutput NOEXPORT_SNAPSHOT")
        except _SqlError as err:
            if err.sqlstate != "42710":
                raise Fatal(err.message) from None
        self.holder = conn
        self.ready = True
        log(f"connected; publication {PUBLICATION} and slot {SLOT} (pgoutput) ready")

    def connect(self) -> psycopg.Connection:
        """A query connection; RawCursor: ``$n`` placeholders, bound server-side as Electric's where uses them."""
        return psycopg.connect(self.url, autocommit=True, connect_timeout=5, cursor_factory=psycopg.RawCursor)

    def healthy(self) -> bool:
        if not self.ready:
            return False
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    # --- shapes -------------------------------------------------------------------------------------

    def shape(self, method: str, query: list[tuple[str, str]], body: bytes) -> tuple[int, dict[str, str], Any]:
        plain = plug_query(query)
        if self.secret is not None and (plain.get("secret") or plain.get("api_secret")) != self.secret:
            return 401, {}, {"message": "Unauthorized - Invalid API secret"}
        if not self.ready:
            return 503, {"retry-after": "5"}, {"message": "Stack not ready"}
        params = merge_body_params(extract_subset(plain), parse_body(body) if method == "POST" else {})
        for name in ("offset", "table"):
            if not isinstance(params.get(name), str):
                raise BadRequest(f"{name}: can't be blank")
        schema, table = relation(params["table"])
        shape_params = string_map(params.get("params", {}), "params")
        with self.connect() as conn:
            columns = _columns(conn, schema, table)
            if not columns:
                raise BadRequest(f'table: Table "{schema}"."{table}" does not exist')
            selected = _select_columns(columns, parse_columns(params.get("columns")))
            where = params.get("where")
            where_text = where_sql(where, shape_params) if where is not None else None
            values = _positional(shape_params, where_text)
            self.configure(conn, schema, table)
            definition = json.dumps([schema, table, where_text, values, selected])
            shape_hash = int(hashlib.sha256(definition.encode()).hexdigest()[:8], 16) % 2**27
            if "subset" in params:
                return self.subset(conn, params["subset"], schema, table, columns, selected, where_text, values,
                                   shape_hash)  # fmt: skip
            offset = params["offset"]
            live = params.get("live", "false") != "false"
            headers = {"electric-has-data": "true"}
            if not live:
                headers["electric-schema"] = json.dumps(_schema(columns, selected), separators=(",", ":"))
            if offset == BEFORE_ALL:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    (lsn,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()  # type: ignore[misc]
                    rows = _json_rows(conn, schema, table, columns, selected, where_text, values, None)
                handle = f"{shape_hash}-{lsn_int(lsn)}"
                headers.update({"electric-handle": handle, "electric-offset": SNAPSHOT_END,
                                "cache-control": INITIAL_CACHE, "etag": f'"{handle}:{offset}:{SNAPSHOT_END}"'})
                return 200, headers, "[" + ",".join(rows) + "]"
            handle = params.get("handle")
            match = re.fullmatch(r"(\d+)-(\d+)", handle or "")
            parsed = re.fullmatch(r"(\d+)_(\d+|inf)", offset)
            if parsed is None:
                raise BadRequest("offset: has invalid format")
            if match is None or int(match.group(1)) != shape_hash:
                return 409, {"cache-control": "public, max-age=60, must-revalidate"}, [
                    {"headers": {"control": "must-refetch"}}]
            since = (int(parsed.group(1)), -1 if parsed.group(2) == "inf" else int(parsed.group(2)))
            if parsed.group(2) == "inf":
                since = (int(parsed.group(1)), 1 << 62)
            messages, end, last_seen = self.changes(conn, schema, table, columns, selected, where_text, values,
                                                    int(match.group(2)), since)  # fmt: skip
            response_offset = f"{end[0]}_{end[1]}" if end else offset
            messages.append({"headers": {"control": "up-to-date", "global_last_seen_lsn": str(last_seen)}})
            headers.update({
                "electric-handle": handle or "", "electric-offset": response_offset, "electric-up-to-date": "",
                "cache-control": ("public, max-age=5, stale-while-revalidate=5" if live
                                  else f"public, max-age={MAX_AGE}, stale-while-revalidate={STALE_AGE}"),
                "etag": f'"{handle}:{offset}:{response_offset}"',
            })
            if live:
                headers["electric-cursor"] = str(int(time.time()) // 20 * 20)
            return 200, headers, messages

    def configure(self, conn: psycopg.Connection, schema: str, table: str) -> None:
        """configuration.ex configure_table_for_replication: ADD TABLE, then REPLICA IDENTITY FULL."""
        if (schema, table) in self.configured:
            return
        name = f"{quote_name(schema)}.{quote_name(table)}"
        try:
            with conn.transaction():
                conn.execute("SAVEPOINT before_publication")
                try:
                    conn.execute(f"ALTER PUBLICATION {quote_name(PUBLICATION)} ADD TABLE {name}")
                    conn.execute("RELEASE SAVEPOINT before_publication")
                except psycopg.errors.DuplicateObject:
                    conn.execute("ROLLBACK TO SAVEPOINT before_publication")
                    conn.execute("RELEASE SAVEPOINT before_publication")
                conn.execute(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
        except psycopg.Error as err:
            log(f"cannot configure {name} for replication: {err}")
            raise Unavailable(f"Database configuration error: {err}") from None
        self.configured.add((schema, table))

    def changes(self, conn: psycopg.Connection, schema: str, table: str, columns: list[dict[str, Any]],
                selected: list[str], where_text: str | None, values: list[str], snapshot_lsn: int,
                since: tuple[int, int]) -> tuple[list[dict[str, Any]], tuple[int, int] | None, int]:
        with self.slot_lock:
            raw = conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', "
                "'publication_names', $2)", [SLOT, PUBLICATION]).fetchall()  # fmt: skip
        pks = [c["name"] for c in columns if c["pk_index"] is not None] or [c["name"] for c in columns]
        messages: list[dict[str, Any]] = []
        end: tuple[int, int] | None = None
        last_seen = snapshot_lsn
        for xid, commit_lsn, changes in decode_transactions([bytes(r[0]) for r in raw]):
            last_seen = max(last_seen, commit_lsn)
            if commit_lsn <= snapshot_lsn:
                continue
            kept = []
            for position, (rel, _op, old, new) in enumerate(changes):
                if rel != (schema, table) or (commit_lsn, position) <= since:
                    continue
                was = old is not None and self.matches(conn, schema, table, where_text, values, old)
                now = new is not None and self.matches(conn, schema, table, where_text, values, new)
                kind = {(False, True): "insert", (True, True): "update", (True, False): "delete"}.get((was, now))
                if kind is None:
                    continue
                row = new if kind != "delete" else old
                assert row is not None
                shown = selected if kind != "delete" else [c for c in selected if c in pks]
                kept.append({
                    "key": _key(schema, table, [row.get(c) for c in pks]),
                    "value": {c: row.get(c) for c in shown},
                    "headers": {"operation": kind, "txids": [xid], "relation": [schema, table],
                                "lsn": str(commit_lsn), "op_position": position},
                })
                end = (commit_lsn, position)
            if kept:
                kept[-1]["headers"]["last"] = True
                messages.extend(kept)
        return messages, end, last_seen

    def matches(self, conn: psycopg.Connection, schema: str, table: str, where_text: str | None,
                values: list[str], row: dict[str, str | None]) -> bool:
        """The shape's where, evaluated by PostgreSQL over the replicated tuple (text values cast to the table's
        column types by jsonb_populate_record)."""
        if where_text is None:
            return True
        name = f"{quote_name(schema)}.{quote_name(table)}"
        sql = (f"SELECT ({where_text}) IS TRUE FROM jsonb_populate_record(NULL::{name}, "
               f"${len(values) + 1}::jsonb) AS {quote_name(table)}")
        found = conn.execute(sql, [*values, json.dumps(row)], prepare=False).fetchone()  # type: ignore[call-overload]
        return bool(found and found[0])

    def subset(self, conn: psycopg.Connection, subset: Any, schema: str, table: str, columns: list[dict[str, Any]],
               selected: list[str], where_text: str | None, values: list[str],
               shape_hash: int) -> tuple[int, dict[str, str], Any]:
        """querying.ex query_subset: WHERE <shape where> AND (<subset where>) ORDER BY ... LIMIT ... OFFSET ..."""
        if not isinstance(subset, dict):
            raise BadRequest("subset: is invalid")
        limit, offset = int_param(subset.get("limit"), "limit", 1), int_param(subset.get("offset"), "offset", 0)
        if (limit is not None or offset is not None) and not subset.get("order_by"):
            raise BadRequest("subset: order_by is required when limit or offset is present")
        sub_params = string_map(subset.get("params", {}), "subset params")
        sub_where = where_sql(subset["where"], sub_params, shift=len(values)) if subset.get("where") else None
        sub_values = _positional(sub_params, sub_where, shift=len(values))
        clauses = [c for c in (where_text, f"({sub_where})" if sub_where else None) if c]
        tail = ""
        if subset.get("order_by"):
            tail += " ORDER BY " + order_by_sql(subset["order_by"])
        if limit is not None:
            tail += f" LIMIT {limit}"
        if offset is not None:
            tail += f" OFFSET {offset}"
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snap = conn.execute("SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text").fetchone()
            assert snap is not None
            rows = _json_rows(conn, schema, table, columns, selected, " AND ".join(clauses) or None,
                              [*values, *sub_values], tail)  # fmt: skip
        xmin, xmax, xip = snap[0].split(":")
        metadata = {"xmin": xmin, "xmax": xmax, "xip_list": [x for x in xip.split(",") if x],
                    "snapshot_mark": 1, "database_lsn": str(lsn_int(snap[1]))}  # fmt: skip
        body = '{"metadata":' + json.dumps(metadata) + ',"data":[' + ",".join(rows) + "]}"
        headers = {"cache-control": "no-cache", "electric-snapshot": "true",
                   "electric-handle": f"{shape_hash}-{lsn_int(snap[1])}", "electric-offset": SNAPSHOT_END,
                   "electric-schema": json.dumps(_schema(columns, selected), separators=(",", ":"))}  # fmt: skip
        return 200, headers, body


class Unavailable(Exception):
    """Answered 503, like Electric's database errors."""


class _SqlError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate, self.message = sqlstate, message


def _simple(conn: psycopg.Connection) -> Any:
    """Run a statement with the simple query protocol (the only one a walsender connection speaks)."""

    def run(query: str) -> list[tuple[str | None, ...]]:
        res = conn.pgconn.exec_(query.encode())
        if res.status == pq.ExecStatus.FATAL_ERROR:
            state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            raise _SqlError(state, (res.error_message or b"").decode().strip())
        return [tuple(None if res.get_value(r, c) is None else bytes(res.get_value(r, c) or b"").decode()
                      for c in range(res.nfields)) for r in range(res.ntuples)]  # fmt: skip

    return run


def _columns(conn: psycopg.Connection, schema: str, table: str) -> list[dict[str, Any]]:
    """Like Electric's Inspector.load_column_info: name, type, dims, not null, pk position, type modifier."""
    rows = conn.execute(
        """SELECT a.attname, format_type(CASE WHEN t.typelem <> 0 AND a.attndims > 0 THEN t.typelem
                                               ELSE a.atttypid END, NULL) AS typ,
                  t.typname, a.attndims, a.attnotnull, a.atttypmod,
                  array_position(i.indkey::int2[], a.attnum) AS pk  -- int2vector: 0-based
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
           WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        [f"{quote_name(schema)}.{quote_name(table)}"],
    ).fetchall()
    return [{"name": r[0], "type": r[2].lstrip("_") if r[3] else r[2], "dims": r[3], "not_null": r[4],
             "type_mod": r[5], "pk_index": r[6]} for r in rows]  # fmt: skip


def _select_columns(columns: list[dict[str, Any]], wanted: list[str] | None) -> list[str]:
    """Shape.new: columns must exist and include the primary key; the table's order."""
    names = [c["name"] for c in columns]
    if wanted is None:
        return names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise BadRequest(f"columns: The following columns could not be found: {', '.join(unknown)}")
    missing = [c["name"] for c in columns if c["pk_index"] is not None and c["name"] not in wanted]
    if missing:
        raise BadRequest(f"columns: Must include all primary key columns, missing: {', '.join(missing)}")
    return [n for n in names if n in wanted]


def _schema(columns: list[dict[str, Any]], selected: list[str]) -> dict[str, Any]:
    """schema.ex from_column_info (type, dims, pk_index, not_null, and the character length modifiers)."""
    out: dict[str, Any] = {}
    for col in columns:
        if col["name"] not in selected:
            continue
        entry: dict[str, Any] = {"type": col["type"]}
        if col["dims"]:
            entry["dims"] = col["dims"]
        if col["pk_index"] is not None:
            entry["pk_index"] = col["pk_index"]
        if col["not_null"]:
            entry["not_null"] = True
        if col["type_mod"] > 0 and col["type"] in ("varchar", "text"):
            entry["max_length"] = col["type_mod"] - 4
        elif col["type_mod"] > 0 and col["type"] == "bpchar":
            entry["length"] = col["type_mod"] - 4
        out[col["name"]] = entry
    return out


def _positional(params: dict[str, str], where_text: str | None, shift: int = 0) -> list[str]:
    """The $n values in order, for binding; every $1..$max the clause uses must have a value."""
    used = [int(n) - shift for n in re.findall(r"\$(\d+)", where_text or "")]
    count = max(used, default=0)
    missing = [str(n) for n in range(1, count + 1) if str(n) not in params]
    if missing:
        raise BadRequest(f"params: parameter ${missing[0]} has no value")
    return [params[str(n)] for n in range(1, count + 1)]


def _text(column: str) -> str:
    """querying.ex pg_cast_column_to_text."""
    col = quote_name(column)
    return (f"CASE WHEN {col} IS NULL THEN NULL::text WHEN pg_typeof({col}) = 'character'::regtype "
            f"THEN concat({col}, '') ELSE {col}::text END")


def _json_rows(conn: psycopg.Connection, schema: str, table: str, columns: list[dict[str, Any]],
               selected: list[str], where_text: str | None, values: list[str], tail: str | None) -> list[str]:
    """querying.ex json_like_select: each row as Electric's JSON line, built by PostgreSQL."""
    pks = [c["name"] for c in columns if c["pk_index"] is not None] or [c["name"] for c in columns]
    relation_sql = f"{quote_name(schema)}.{quote_name(table)}".replace("'", "''")
    key = f"'{relation_sql}' || '/' || " + " || '/' || ".join(
        f"""coalesce('"' || replace({_text(c)}, '/', '//') || '"', '_')""" for c in pks)
    value_parts = " || ',' || ".join(
        "'\"{}\":' || coalesce(coalesce(to_json({})::text , 'null') , 'null')".format(
            c.replace('"', '\\"').replace("'", "''"), _text(c)) for c in selected)
    headers = json.dumps({"operation": "insert", "relation": [schema, table]}, separators=(",", ":"))
    select = (f"""'{{' || '"key":' || to_json({key})::text || ',' || '"value":{{' || {value_parts} || '}}' """
              f"""|| ',' || '"headers":{headers.replace("'", "''")}' || '}}'""")
    sql = f"SELECT {select} FROM {quote_name(schema)}.{quote_name(table)}"
    if where_text:
        sql += f" WHERE {where_text}"
    sql += tail or ""
    return [r[0] for r in conn.execute(sql, values, prepare=False).fetchall()]  # type: ignore[call-overload]


def _key(schema: str, table: str, pk_values: list[str | None]) -> str:
    parts = ['"' + v.replace("/", "//") + '"' if v is not None else "_" for v in pk_values]
    return f"{quote_name(schema)}.{quote_name(table)}/" + "/".join(parts)


# --- pgoutput protocol 1 (PostgreSQL docs, "Logical Replication Message Formats") ---------------------------

def decode_transactions(messages: list[bytes]) -> list[tuple[int, int, list[Any]]]:
    """(xid, commit lsn, [(relation, op, old row, new row)]) per committed transaction, in commit order."""
    relations: dict[int, tuple[tuple[str, str], list[str]]] = {}
    out: list[tuple[int, int, list[Any]]] = []
    xid, changes = 0, []  # type: ignore[var-annotated]
    for data in messages:
        kind, body = chr(data[0]), data[1:]
        if kind == "B":
            xid = int.from_bytes(body[16:20], "big")
            changes = []
        elif kind == "C":
            out.append((xid, int.from_bytes(body[1:9], "big"), changes))
        elif kind == "R":
            relid = int.from_bytes(body[0:4], "big")
            pos = 4
            namespace, pos = _cstring(body, pos)
            name, pos = _cstring(body, pos)
            pos += 1  # replica identity
            count = int.from_bytes(body[pos:pos + 2], "big")
            pos += 2
            names = []
            for _ in range(count):
                pos += 1  # flags
                column, pos = _cstring(body, pos)
                names.append(column)
                pos += 8  # type oid, type modifier
            relations[relid] = ((namespace or "public", name), names)
        elif kind in "IUD":
            relid = int.from_bytes(body[0:4], "big")
            rel, names = relations[relid]
            pos, old, new = 4, None, None
            while pos < len(body):
                tag = chr(body[pos])
                row, pos = _tuple(body, pos + 1, names)
                if tag == "N":
                    new = row
                else:  # K (key) or O (old)
                    old = row
            changes.append((rel, kind, old, new))
    return out


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int, names: list[str]) -> tuple[dict[str, str | None], int]:
    count = int.from_bytes(data[pos:pos + 2], "big")
    pos += 2
    row: dict[str, str | None] = {}
    for index in range(count):
        kind = chr(data[pos])
        pos += 1
        if kind == "t":
            size = int.from_bytes(data[pos:pos + 4], "big")
            row[names[index]] = data[pos + 4:pos + 4 + size].decode()
            pos += 4 + size
        elif kind == "n":
            row[names[index]] = None
        # "u": an unchanged TOASTed value, not sent
    return row, pos


# --- HTTP ---------------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    standin: Standin
    protocol_version = "HTTP/1.1"
    server_version = "electric-standin"

    def log_message(self, format: str, *args: Any) -> None:
        log(format % args)

    def do_GET(self) -> None:
        self.handle_any("GET")

    def do_POST(self) -> None:
        self.handle_any("POST")

    def handle_any(self, method: str) -> None:
        url = urlsplit(self.path)
        size = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(size) if size else b""
        if url.path == "/v1/health" and method == "GET":
            ok = self.standin.healthy()
            self.reply(200 if ok else 202, {}, {"status": "active" if ok else "waiting"})
            return
        if url.path != "/v1/shape":
            self.reply(404, {}, {"message": "Not found"})
            return
        query = parse_qsl(url.query, keep_blank_values=True)
        seen = "&".join(f"{quote(k, safe='[]')}={'REDACTED' if k in ('secret', 'api_secret') else quote(v, safe='')}"
                        for k, v in query)
        extra = {"electric-standin-query": seen}
        try:
            status, headers, payload = self.standin.shape(method, query, body)
        except BadRequest as err:
            status, headers, payload = 400, {}, {"message": "Invalid request", "errors": str(err)}
        except (Unavailable, psycopg.OperationalError) as err:
            status, headers, payload = 503, {"retry-after": "5"}, {"message": str(err)}
        except psycopg.Error as err:  # e.g. a where comparing a uuid column with a non-uuid value
            status, headers, payload = 400, {}, {"message": "Invalid request", "errors": str(err).strip()}
        if status >= 400:
            headers = {"cache-control": "no-store", "surrogate-control": "no-store", **headers}
        self.reply(status, {**headers, **extra}, payload)

    def reply(self, status: int, headers: dict[str, str], payload: Any) -> None:
        # Compact, as Electric's Jason encodes its bodies ({"status":"active"}).
        data = (payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def main() -> int:
    url = os.environ.get("DATABASE_URL")
    if not url:
        log("DATABASE_URL is not set")
        return 1
    standin = Standin(url, os.environ.get("ELECTRIC_SECRET") or None)
    Handler.standin = standin
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("ELECTRIC_PORT", "3000"))), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in the container: `docker stop` sends TERM
    while True:
        try:
            standin.setup()
            break
        except Fatal as err:
            log(f"fatal: {err}")
            server.shutdown()
            return 1
        except psycopg.Error as err:
            log(f"cannot reach PostgreSQL yet, retrying: {str(err).strip()}")
            time.sleep(2)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
