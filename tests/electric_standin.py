"""A stand-in for Electric's shape API (NOT Electric): its request rules ported from Electric 1.7.12 (the
version postgressor pins), so a gateway that lets a client change the shape shows up as a leaked row.

Ported from github.com/electric-sql/electric at tag ``@core/sync-service@1.7.12``:
- ``packages/sync-service/lib/electric/plug/router.ex``: the ``secret`` (or ``api_secret``) query param must
  equal the configured secret, else 401 ``{"message": "Unauthorized - Invalid API secret"}``.
- ``lib/electric/plug/serve_shape_plug.ex`` ``parse_body``/``validate_request``/``merge_body_params``:
  a POST body must be a JSON object (else 400); ``subset__<key>`` query params become a ``subset`` map; the
  body is merged over the query (with a ``subset`` key every body key wins; without it the subset keys
  ``where order_by limit offset params where_expr order_by_expr`` go under ``subset`` and the rest win).
- ``lib/electric/shapes/api/params.ex``: ``offset`` and ``table`` required; ``params`` is the shape's
  ``$n`` map; ``columns`` selects the columns; ``SubsetParams`` casts where/order_by/limit/offset/params,
  limit > 0, offset >= 0, order_by required with limit or offset.
- ``lib/electric/shapes/shape/subset.ex``: the subset ``where`` is parsed with the subset's own params;
  ``lib/electric/shapes/querying.ex`` ``query_subset``: ``WHERE <shape where> AND (<subset where>)``.
- Query params are parsed as Plug does: ``params[1]=x`` is ``{"params": {"1": "x"}}``, the last repeat wins.

Where clauses are parsed with PostgreSQL's own grammar (pglast) and evaluated over the rows in Python for the
node kinds used here (AND/OR/NOT, comparisons, IN, IS [NOT] NULL, casts, constants, columns, $n); anything
else is a 400, never a silent match. Rows live in ``rows`` keyed by table name (``items``, ``OR``, quoted or
not). A test may also answer any request itself with ``override``. It records every request it receives, and
serves a JWKS document at ``/auth/v1/.well-known/jwks.json`` when given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pglast
from aiohttp import web

LIVE_WAIT = 2.0  # seconds a live request waits for news before answering up-to-date
SUBSET_KEYS = ("where", "order_by", "limit", "offset", "params", "where_expr", "order_by_expr")


class BadRequest(Exception):
    """Electric answers 400 with {"message": ..., "errors": ...}."""


@dataclass
class Received:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        values = [v for k, v in self.query if k == name]
        return values[0] if values else None


@dataclass
class ElectricStandin:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by table name
    jwks: dict[str, Any] | None = None
    override: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None
    record: bool = True
    received: list[Received] = field(default_factory=list)
    handle: str = "standin-handle-1"
    secret: str | None = None  # like ELECTRIC_SECRET: None means Electric runs without one (no check)
    health_status: int = 200
    jwks_delay: float = 0.0  # seconds the JWKS endpoint waits before answering (a hanging endpoint)
    jwks_hits: int = 0
    _version: int = 0
    _news: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/auth/v1/.well-known/jwks.json", self._jwks)
        app.router.add_route("*", "/v1/shape", self._shape)
        app.router.add_get("/v1/health", self._health)
        return app

    def insert(self, table: str, row: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        """Add a row from another thread; live requests waiting on ``loop`` wake up."""
        def add() -> None:
            self.rows.setdefault(table, []).append({**row, "_version": self._version + 1})
            self._version += 1
            if self._news is not None:
                self._news.set()
                self._news = asyncio.Event()
        loop.call_soon_threadsafe(add)

    async def _health(self, _request: web.Request) -> web.Response:
        status = "active" if self.health_status == 200 else "starting"
        return web.json_response({"status": status}, status=self.health_status)

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.jwks_hits += 1
        if self.jwks_delay:
            await asyncio.sleep(self.jwks_delay)
        if self.jwks is None:
            return web.Response(status=404)
        return web.json_response(self.jwks)

    async def _shape(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.record:
            self.received.append(Received(request.method, request.path, list(request.query.items()),
                                          dict(request.headers), body))
        if self.override is not None:
            answer = await self.override(request)
            if answer is not None:
                return answer
        query = plug_query(list(request.query.items()))
        if self.secret is not None and (query.get("secret") or query.get("api_secret")) != self.secret:
            return web.json_response({"message": "Unauthorized - Invalid API secret"}, status=401)
        try:
            body_params = parse_body(body) if request.method == "POST" else {}
            params = merge_body_params(extract_subset(query), body_params)
            return await self._serve(request, params)
        except BadRequest as err:
            return web.json_response({"message": "Invalid request", "errors": str(err)}, status=400)

    async def _serve(self, request: web.Request, params: dict[str, Any]) -> web.StreamResponse:
        for name in ("offset", "table"):
            if not isinstance(params.get(name), str):
                raise BadRequest(f"{name}: can't be blank")
        table = relation_name(params["table"])
        shape_where = compile_where(params.get("where"), _string_map(params.get("params", {}), "params"))
        columns = parse_columns(params.get("columns"))
        known = {k for r in self._table(table) for k in _public(r)}
        missing = sorted(set(columns or ()) - known) if known else []
        if missing:  # Shape.new checks the columns against the table's schema
            raise BadRequest(f"columns: unknown column {missing[0]!r}")
        rows = [r for r in self._table(table) if shape_where(r)]
        if "subset" in params:
            return self._subset(params["subset"], rows, columns)

        def mine(since: int) -> list[dict[str, Any]]:
            return [r for r in self._table(table) if r["_version"] > since and shape_where(r)]

        offset = params["offset"]
        since = 0 if offset == "-1" else int(offset.split("_")[0])
        live = params.get("live", "false") != "false"
        if live:
            if self._news is None:
                self._news = asyncio.Event()
            if not mine(since):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news.wait(), LIVE_WAIT)
        rows = mine(since)
        latest = max([since, *(r["_version"] for r in rows)])
        messages: list[dict[str, Any]] = [
            {"key": f'"public"."{table}"/"{r.get("id")}"', "value": _public(r, columns),
             "headers": {"operation": "insert"}}
            for r in rows
        ]
        messages.append({"headers": {"control": "up-to-date"}})
        headers = {
            "electric-handle": self.handle,
            "electric-offset": f"{latest}_0",
            "electric-up-to-date": "",
            "electric-cursor": str(1000 + latest),
            "etag": f'"{self.handle}:{since}:{latest}"',
            "cache-control": "public, max-age=60, stale-while-revalidate=300",
        }
        if not live:
            headers["electric-schema"] = json.dumps(_schema(rows, columns))
        sse = params.get("live_sse", params.get("experimental_live_sse", "false")) != "false"
        if sse:
            response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
            await response.prepare(request)
            for message in messages:
                await response.write(f"data: {json.dumps(message)}\n\n".encode())
            await response.write_eof()
            return response
        return web.json_response(messages, headers=headers)

    def _table(self, name: str) -> list[dict[str, Any]]:
        return [r for key, rows in self.rows.items() if relation_name(key) == name for r in rows]

    def _subset(self, subset: Any, rows: list[dict[str, Any]], columns: list[str] | None) -> web.Response:
        if not isinstance(subset, dict):
            raise BadRequest("subset: is invalid")
        limit, offset = _int(subset.get("limit"), "limit", 1), _int(subset.get("offset"), "offset", 0)
        if (limit is not None or offset is not None) and not subset.get("order_by"):
            raise BadRequest("subset: order_by is required when limit or offset is present")
        where = compile_where(subset.get("where"), _string_map(subset.get("params", {}), "subset params"))
        picked = [r for r in rows if where(r)]
        if subset.get("order_by"):
            picked = order_rows(picked, subset["order_by"])
        picked = picked[offset or 0:][:limit]
        data = [{"key": f'"{r.get("id")}"', "value": _public(r, columns), "headers": {"operation": "insert"}}
                for r in picked]
        return web.json_response({"metadata": {"snapshot_mark": 1}, "data": data},
                                 headers={"electric-handle": self.handle, "electric-offset": "0_0",
                                          "electric-snapshot": "true"})  # response.ex, :subset


# --- Plug / ServeShapePlug / Api.Params rules -------------------------------------------------------------


def plug_query(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Plug.Conn.Query.decode: ``a[b]=c`` nests, a repeated key keeps the last value."""
    out: dict[str, Any] = {}
    for key, value in items:
        match = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", key)
        if match:
            inner = out.get(match.group(1))
            if not isinstance(inner, dict):
                inner = out[match.group(1)] = {}
            inner[match.group(2)] = value
        else:
            out[key] = value
    return out


def extract_subset(query: dict[str, Any]) -> dict[str, Any]:
    """Electric.Utils.extract_prefixed_keys_into_map(query, "subset", "__")."""
    prefixed = {k.removeprefix("subset__"): v for k, v in query.items() if k.startswith("subset__")}
    if not prefixed:
        return query
    rest = {k: v for k, v in query.items() if not k.startswith("subset__")}
    return {"subset": prefixed, **rest} if "subset" in rest else {**rest, "subset": prefixed}


def parse_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("Invalid JSON in request body") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def merge_body_params(query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """ServeShapePlug.merge_body_params, clause by clause."""
    if not body:
        return query
    if isinstance(body.get("subset"), dict):
        existing = query.get("subset", {})
        return {**query, **body, "subset": {**existing, **body["subset"]}}
    subset = {k: v for k, v in body.items() if k in SUBSET_KEYS}
    other = {k: v for k, v in body.items() if k not in SUBSET_KEYS}
    if subset:
        existing = query.get("subset", {})
        return {**query, **other, "subset": {**existing, **subset}}
    return {**query, **body}


def _string_map(value: Any, name: str) -> dict[str, str]:
    """Api.Params.JsonOrMapStringParams: a JSON string or a map; values to_string'd."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest(f"{name}: params must be valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: params must be a JSON object")
    return {str(k): (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in value.items()}


def _int(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"subset {name}: is invalid") from None
    if number < minimum:
        raise BadRequest(f"subset {name}: must be greater than or equal to {minimum}")
    return number


def relation_name(table: str) -> str:
    """The table's name as PostgreSQL resolves it (unquoted names fold to lower case; public schema)."""
    try:
        (stmt,) = pglast.parse_sql(f"SELECT * FROM {table}")
        (rel,) = stmt.stmt.fromClause
        return str(rel.relname)
    except Exception:
        return table


def parse_columns(columns: str | None) -> list[str] | None:
    if columns is None:
        return None
    try:
        (stmt,) = pglast.parse_sql(f"SELECT {columns}")
        return [t.val.fields[-1].sval for t in stmt.stmt.targetList]
    except Exception:
        raise BadRequest("columns: invalid") from None


# --- where clauses, over Python rows ------------------------------------------------------------------------

Row = dict[str, Any]


def compile_where(where: Any, params: dict[str, str]) -> Callable[[Row], bool]:
    if where is None:
        return lambda _row: True
    if not isinstance(where, str):
        raise BadRequest("where: is invalid")
    try:
        (stmt,) = pglast.parse_sql(f"SELECT 1 WHERE {where}")
    except Exception as err:
        raise BadRequest(f"where: {err}") from None
    tree = stmt.stmt(skip_none=True)["whereClause"]
    _check_params(tree, params)
    return lambda row: _evaluate(tree, row, params) is True


def _check_params(node: Any, params: dict[str, str]) -> None:
    if isinstance(node, dict):
        if node.get("@") == "ParamRef" and str(node["number"]) not in params:
            raise BadRequest(f"where: parameter ${node['number']} has no value")
        for value in node.values():
            _check_params(value, params)
    elif isinstance(node, tuple | list):
        for value in node:
            _check_params(value, params)


def _evaluate(node: dict[str, Any], row: Row, params: dict[str, str]) -> Any:
    kind = node["@"]
    if kind == "BoolExpr":
        op = node["boolop"]["name"]
        values = [_evaluate(a, row, params) for a in node["args"]]
        if op == "NOT_EXPR":
            return None if values[0] is None else not values[0]
        if op == "AND_EXPR":
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    if kind == "A_Const":
        if node.get("isnull"):
            return None
        val = node["val"]
        return val.get("ival", val.get("sval", val.get("boolval", val.get("fval", 0))))
    if kind == "ColumnRef":
        name = node["fields"][-1]["sval"]
        return row.get(name)
    if kind == "ParamRef":
        return _Unknown(params[str(node["number"])])
    if kind == "TypeCast":
        return _evaluate(node["arg"], row, params)
    if kind == "NullTest":
        value = _evaluate(node["arg"], row, params)
        return (value is None) == (node["nulltesttype"]["name"] == "IS_NULL")
    if kind == "A_Expr":
        op = node["name"][-1]["sval"]
        left = _evaluate(node["lexpr"], row, params)
        if node["kind"]["name"] == "AEXPR_IN":
            values = [_compare("=", left, _evaluate(v, row, params)) for v in node["rexpr"]]
            found = True if True in values else (None if None in values else False)
            return found if op == "=" else (None if found is None else not found)
        if node["kind"]["name"] == "AEXPR_OP":
            return _compare(op, left, _evaluate(node["rexpr"], row, params))
    raise BadRequest(f"where: the stand-in cannot evaluate {kind}")


@dataclass(frozen=True)
class _Unknown:
    """A $n value: text of unknown type, coerced to the other side's type as PostgreSQL does."""

    text: str


def _compare(op: str, left: Any, right: Any) -> bool | None:
    left, right = _coerce(left, right), _coerce(right, left)
    if left is None or right is None:
        return None
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "<>": lambda a, b: a != b, "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}
    if op not in ops:
        raise BadRequest(f"where: the stand-in cannot evaluate operator {op}")
    return ops[op](left, right)


def _coerce(value: Any, other: Any) -> Any:
    if not isinstance(value, _Unknown):
        return value
    if isinstance(other, bool):
        return value.text.lower() in ("t", "true", "1", "yes", "on")
    if isinstance(other, int):
        return int(value.text)
    if isinstance(other, float):
        return float(value.text)
    return value.text


def order_rows(rows: list[Row], order_by: str) -> list[Row]:
    try:
        (stmt,) = pglast.parse_sql(f"SELECT 1 ORDER BY {order_by}")
    except Exception:
        raise BadRequest("subset order_by: invalid") from None
    for sort in reversed(stmt.stmt(skip_none=True)["sortClause"]):
        name = sort["node"]["fields"][-1]["sval"]
        desc = sort["sortby_dir"]["name"] == "SORTBY_DESC"
        rows = sorted(rows, key=lambda r, n=name: (r.get(n) is None, r.get(n)), reverse=desc)
    return rows


def _public(row: Row, columns: list[str] | None = None) -> Row:
    return {k: v for k, v in row.items() if not k.startswith("_") and (columns is None or k in columns)}


def _schema(rows: list[Row], columns: list[str] | None = None) -> dict[str, Any]:
    names = sorted({k for r in rows for k in _public(r, columns)}) or ["id"]
    return {c: {"type": "text", **({"pk_index": 0} if c == "id" else {})} for c in names}


class ServerThread:
    """An asyncio loop in a background thread serving aiohttp apps on 127.0.0.1 (free ports)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def run(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def serve(self, app: web.Application, **runner_kwargs: Any) -> str:
        async def start() -> int:
            runner = web.AppRunner(app, **runner_kwargs)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            return int(runner.addresses[0][1])

        return f"http://127.0.0.1:{self.run(start())}"

    def close(self) -> None:
        async def stop() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def or_table_standin(owner: str, other: str) -> ElectricStandin:
    """The client tests' stand-in: the README's ``"OR"`` table, rows a and c owned by ``owner``, b by ``other``
    (owner column ``Owner``, mixed case on purpose)."""
    standin = ElectricStandin()
    standin.rows['"OR"'] = [
        {"id": "a", "Owner": owner, "title": "mine", "_version": 1},
        {"id": "b", "Owner": other, "title": "theirs", "_version": 2},
        {"id": "c", "Owner": owner, "title": "also mine", "_version": 3},
    ]
    standin._version = 3
    return standin
