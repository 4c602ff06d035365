"""A stand-in for Electric's shape API (NOT Electric): enough protocol for the gateway tests, the
official TypeScript client and the benchmark. It records every request it receives.

- ``GET /v1/shape`` offset=-1: the caller's rows (owner column from the pinned ``where``, value from
  ``params[1]``) as insert messages + up-to-date, with the headers Electric sends.
- ``live=true``: waits (bounded) for rows added with ``insert``; ``live_sse=true`` streams them as SSE.
- ``override``: a test may answer any request itself (statuses, slow streams, gzip).
Also serves a JWKS document at ``/auth/v1/.well-known/jwks.json`` when given one.
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

from aiohttp import web

OWNER_WHERE = re.compile(r'^"((?:[^"]|"")+)" = \$1')
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
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by the `table` param as sent
    jwks: dict[str, Any] | None = None
    override: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None
    record: bool = True
    received: list[Received] = field(default_factory=list)
    handle: str = "standin-handle-1"
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
        return web.json_response({"status": "active"})

    async def _jwks(self, _request: web.Request) -> web.Response:
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
        query = request.query
        table = query.get("table", "")
        match = OWNER_WHERE.match(query.get("where", ""))
        owner = match.group(1).replace('""', '"') if match else None
        user = query.get("params[1]")

        def mine(since: int) -> list[dict[str, Any]]:
            return [r for r in self.rows.get(table, [])
                    if r["_version"] > since and owner and r.get(owner) == user]

        offset = query.get("offset", "-1")
        since = 0 if offset == "-1" else int(offset.split("_")[0])
        if query.get("live") == "true":
            if self._news is None:
                self._news = asyncio.Event()
            if not mine(since):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news.wait(), LIVE_WAIT)
        rows = mine(since)
        latest = max([since, *(r["_version"] for r in rows)])
        messages: list[dict[str, Any]] = [
            {"key": f'"public"."t"/"{r["id"]}"', "value": _public(r), "headers": {"operation": "insert"}}
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
        if query.get("live") != "true":
            headers["electric-schema"] = json.dumps(_schema(rows))
        if query.get("live_sse") == "true" or query.get("experimental_live_sse") == "true":
            response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
            await response.prepare(request)
            for message in messages:
                await response.write(f"data: {json.dumps(message)}\n\n".encode())
            await response.write_eof()
            return response
        return web.json_response(messages, headers=headers)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _schema(rows: list[dict[str, Any]]) -> dict[str, Any]:
    columns = sorted({k for r in rows for k in _public(r)}) or ["id"]
    return {c: {"type": "text", **({"pk_index": 0} if c == "id" else {})} for c in columns}


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
