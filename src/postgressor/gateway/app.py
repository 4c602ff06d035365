"""The auth gateway: verifies the caller's Supabase token and pins each shape request to their rows.

Routes: ``GET|POST /v1/shape/{table}`` (the table named in the path must be in ``[[sync.tables]]``) and
``GET /health``. Responses from Electric are streamed through chunk by chunk (long-poll and SSE).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web
from yarl import URL

from postgressor.gateway.params import ParamError, TableRule, upstream_params
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import Claims, ClaimsCache, KeySourceError, TokenError, Verifier

log = logging.getLogger("postgressor.gateway")

SHAPE_PATH = "/v1/shape"
# Never copied from Electric's response: hop-by-hop headers, and the framing of a body we re-stream.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-encoding",
        "content-length",
        "set-cookie",
        "server",
        "date",
    }
)
# The only request headers sent upstream (never Authorization or cookies).
FORWARDED_REQUEST_HEADERS = ("accept", "if-none-match", "content-type")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    hdrs = {"Cache-Control": "no-store", "Vary": "Authorization", **(headers or {})}
    return web.Response(status=status, text=body, content_type="application/json", headers=hdrs)


def auth_error(code: str, message: str) -> web.Response:
    # RFC 6750: no error attribute when the request carried no token at all.
    challenge = 'Bearer realm="postgressor"'
    if code != "token_missing":
        challenge += ', error="invalid_token"'
    return error_response(401, code, message, {"WWW-Authenticate": challenge})


def bearer_token(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Gateway:
    def __init__(
        self, settings: GatewaySettings, *, verifier: Verifier | None = None, cache: ClaimsCache | None = None
    ) -> None:
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.verifier = verifier or Verifier(settings.verifier, afetch=self._fetch_jwks)
        if self.verifier.afetch is None:
            self.verifier.afetch = self._fetch_jwks
        self.cache = cache if cache is not None else ClaimsCache()
        self.shape_url = settings.upstream + SHAPE_PATH

    # --- lifecycle ---------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body)
        app.router.add_get("/health", self.health)
        app.router.add_route("*", SHAPE_PATH + "/{table}", self.shape)
        app.router.add_route("*", SHAPE_PATH, self.no_table)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)

    async def _close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def _fetch_jwks(self, url: str) -> Any:
        assert self.session is not None
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5), allow_redirects=False) as r:
            if r.status != 200:
                raise KeySourceError(f"the JWKS URL answered HTTP {r.status}")
            return await r.json(content_type=None)

    # --- routes ------------------------------------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def not_found(self, request: web.Request) -> web.Response:
        return self._logged(request, error_response(404, "not_found", f"use {SHAPE_PATH}/<table> or /health"))

    async def no_table(self, request: web.Request) -> web.Response:
        return self._logged(
            request,
            error_response(400, "table_not_allowed", f"name the table in the path: {SHAPE_PATH}/<table>"),
        )

    async def shape(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        if request.method not in ("GET", "POST"):
            return self._logged(
                request,
                error_response(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed; use GET (or POST for a subset)",
                    {"Allow": "GET, POST"},
                ),
            )
        token = bearer_token(request)
        if token is None:
            return self._logged(
                request, auth_error("token_missing", "send 'Authorization: Bearer <access token>'")
            )
        try:
            claims = await self._claims(token)
        except TokenError as err:
            return self._logged(request, auth_error(err.code, err.reason))
        except KeySourceError as err:
            log.warning("token keys unavailable: %s", err)
            return self._logged(
                request,
                error_response(
                    503,
                    "auth_unavailable",
                    "cannot load the signing keys; try again shortly",
                    {"Retry-After": "5"},
                ),
            )
        rule = self.settings.tables.get(request.match_info["table"])
        if rule is None:
            return self._logged(request, error_response(404, "table_not_allowed", "this table is not synced"))
        try:
            query = list(request.rel_url.query.items())
            params = upstream_params(query, rule, claims.sub, self.settings.secret)
        except ParamError as err:
            return self._logged(request, error_response(400, err.code, err.message))
        return await self._forward(request, rule, params, started)

    async def _claims(self, token: str) -> Claims:
        claims = self.cache.get(token)
        if claims is None:
            claims = await self.verifier.averify(token)
            self.cache.put(token, claims)
        return claims

    # --- forwarding --------------------------------------------------------------------------

    async def _forward(
        self, request: web.Request, rule: TableRule, params: list[tuple[str, str]], started: float
    ) -> web.StreamResponse:
        headers = {name: value for name in FORWARDED_REQUEST_HEADERS if (value := request.headers.get(name))}
        body: bytes | None = None
        if request.method == "POST":
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._logged(
                    request, error_response(413, "body_too_large", "the subset body is too large")
                )
            problem = _subset_body_problem(body)
            if problem:
                return self._logged(request, error_response(400, "body_invalid", problem))
            headers["content-type"] = "application/json"
        url = URL(self.shape_url + "?" + urlencode(params, quote_via=quote), encoded=True)
        assert self.session is not None
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("upstream request failed: %s", type(err).__name__)
            return self._logged(
                request,
                error_response(
                    502,
                    "upstream_unavailable",
                    "the sync service is not reachable; try again shortly",
                    {"Retry-After": "5"},
                ),
            )
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in DROPPED_RESPONSE_HEADERS:
                    response.headers.add(name, value)
            _add_vary(response)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError) as err:
                # Headers are already sent: all we can do is cut the stream so the client retries.
                log.warning("upstream stream broke for %s: %s", rule.name, type(err).__name__)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        self._log(request, upstream.status, "", started)
        return response

    # --- logging (never tokens, secrets or query strings) -----------------------------------

    def _logged(self, request: web.Request, response: web.Response) -> web.Response:
        code = ""
        if response.status >= 400 and response.text:
            code = json.loads(response.text)["error"]["code"]
        self._log(request, response.status, code, None)
        return response

    @staticmethod
    def _log(request: web.Request, status: int, code: str, started: float | None) -> None:
        took = f" {1000 * (time.perf_counter() - started):.1f}ms" if started is not None else ""
        # Refusals and failures at INFO; served requests at DEBUG (a line per poll is costly at scale).
        level = logging.INFO if status >= 400 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s %s %d%s%s", request.method, request.path, status, f" {code}" if code else "", took)


def _add_vary(response: web.StreamResponse) -> None:
    vary = response.headers.get("Vary", "")
    names = [v.strip() for v in vary.split(",") if v.strip()]
    if not any(n.lower() == "authorization" for n in names):
        names.append("Authorization")
    response.headers["Vary"] = ", ".join(names)


def _subset_body_problem(body: bytes) -> str | None:
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "the subset body is not JSON"
    if not isinstance(data, dict):
        return "the subset body must be a JSON object (where, params, limit, offset, order_by)"
    return None


async def serve(
    settings: GatewaySettings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the gateway until ``stop`` is set (or forever)."""
    runner = web.AppRunner(Gateway(settings).make_app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    log.info(
        "gateway listening on http://%s:%d, upstream %s", settings.host, settings.port, settings.upstream
    )
    if ready is not None:
        ready.set()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
