"""A stand-in for Electric's shape API (NOT Electric): its request rules ported from Electric 1.7.12 (the
version postgressor pins), so a gateway that lets a client change the shape shows up as a leaked row.

Ported from github.com/electric-sql/electric at tag ``@core/sync-service@1.7.12``:
- ``packages/sync-service/lib/electric/plug/router.ex``: the ``secret`` (or ``api_secret``) query param must
  equal the configured secret, else 401 ``{"message": "Unauthorized - Invalid API secret"}``.
- the request rules (``serve_shape_plug.ex`` body merge, ``shapes/api/params.ex``, ``shapes/shape/subset.ex``):
  ``tests/electric_rules.py``, shared with the VM image's stand-in;
- ``lib/electric/shapes/querying.ex`` ``query_subset``: ``WHERE <shape where> AND (<subset where>)``.
- Query params are parsed as Plug does: ``params[1]=x`` is ``{"params": {"1": "x"}}``, the last repeat wins.

The rules live in ``electric_rules.py`` (shared with the VM image's stand-in). Where clauses are parsed with
PostgreSQL's own grammar (pglast) and evaluated over the rows in Python for the node kinds used here (AND/OR/NOT,
comparisons, IN, IS [NOT] NULL, casts, constants, columns, $n); anything else is a 400, never a silent match.
Rows live in ``rows`` keyed by table name (``items``, ``OR``, quoted or not). A test may also answer any
request itself with ``override``. It records every request it receives, and serves a JWKS document at
``/auth/v1/.well-known/jwks.json`` when given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from electric_rules import (
    SUBSET_KEYS,
    BadRequest,
    Row,
    compile_where,
    extract_subset,
    merge_body_params,
    order_rows,
    parse_body,
    parse_columns,
    plug_query,
    relation_name,
)
from electric_rules import int_param as _int
from electric_rules import string_map as _string_map

__all__ = ["SUBSET_KEYS", "BadRequest", "ElectricStandin", "ServerThread", "extract_subset", "merge_body_params",
           "or_table_standin", "plug_query"]

LIVE_WAIT = 2.0  # seconds a live request waits for news before answering up-to-date


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
