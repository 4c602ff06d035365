"""The auth gateway: verifies the caller's Supabase token and pins each shape request to their rows.

Routes: ``GET|POST /v1/shape/{table}`` and Electric's own form ``GET|POST /v1/shape?table={table}`` (the
table must be in ``[[sync.tables]]``), ``OPTIONS`` on both (CORS preflight), ``GET /health`` (liveness) and
``GET /ready`` (Electric's ``/v1/health`` is 200 too). Responses from Electric are streamed through chunk by
chunk (long-poll and SSE), with an allow-list of headers.

What is pinned on which channel (see ``params`` for Electric 1.7.12's merge rules):
- query: ``table``, ``where``, ``params[1]``, ``columns``/``queryable_columns`` and ``secret`` are the gateway's;
  the client may send Electric's protocol params and ``subset__where|params|limit|offset|order_by``.
- POST body: only a subset (``{"subset": {...}}`` or those keys at the top level); the gateway forwards its own
  ``{"subset": {...}}``. A subset is ANDed with the pinned where by Electric and binds its own ``$n``.
- headers: only Accept, If-None-Match and Content-Type go upstream (never Authorization or cookies).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from postgressor.gateway.params import FORWARDED, ParamError, TableRule, subset_body, upstream_params
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import Claims, ClaimsCache, KeySourceError, TokenError, Verifier

log = logging.getLogger("postgressor.gateway")
access_log = logging.getLogger("postgressor.gateway.access")

SHAPE_PATH = "/v1/shape"
HEALTH_PATH = "/v1/health"
# Response headers copied from Electric (besides electric-*); everything else is dropped. Content-Encoding
# and -Length are not copied: the body is decompressed and re-streamed.
KEPT_RESPONSE_HEADERS = frozenset({"etag", "cache-control", "content-type", "retry-after", "vary"})
ELECTRIC_HEADER_PREFIX = "electric-"
# The response headers @electric-sql/client 1.5.28 reads (src/constants.ts), exposed to browser scripts.
EXPOSED_HEADERS = (
    "electric-cursor",
    "electric-handle",
    "electric-offset",
    "electric-schema",
    "electric-snapshot",
    "electric-up-to-date",
    "retry-after",
)
CORS_ALLOWED_HEADERS = "authorization, content-type"
CORS_ALLOWED_METHODS = "GET, POST"
CORS_MAX_AGE = "600"
# The only request headers sent upstream (never Authorization or cookies).
FORWARDED_REQUEST_HEADERS = ("accept", "if-none-match")
READY_TIMEOUT = 2.0
TABLE = web.RequestKey("table", str)  # the configured table (for the log line)
USER = web.RequestKey("user", str)  # the caller's user_label
CODE = web.ResponseKey("code", str)  # the gateway's error code


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The gateway's JSON error: ``{"error": {"code": ..., "message": ...}}``, never cached."""
    body = json.dumps({"error": {"code": code, "message": message}})
    hdrs = {"Cache-Control": "no-store", "Vary": "Authorization", **(headers or {})}
    response = web.Response(status=status, text=body, content_type="application/json", headers=hdrs)
    response[CODE] = code
    return response


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


def user_label(sub: str) -> str:
    """A short, non-reversible label for a user id in logs."""
    return hashlib.sha256(sub.encode()).hexdigest()[:10]


def escape(text: str, limit: int = 80) -> str:
    """``text`` with control and non-ASCII characters escaped (a log line stays one line), truncated."""
    return text[:limit].encode("unicode_escape").decode("ascii")


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
        self.origins = frozenset(settings.cors_origins)
        self.active: dict[str, int] = {}  # requests in flight per user (sub)

    # --- lifecycle ---------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body, middlewares=[self._access])
        app.router.add_get("/health", self.health, allow_head=False)
        app.router.add_get("/ready", self.ready, allow_head=False)
        app.router.add_route("*", SHAPE_PATH + "/{table}", self.shape)
        app.router.add_route("*", SHAPE_PATH, self.shape)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        app.on_response_prepare.append(self._finish_headers)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    @staticmethod
    def runner_options() -> dict[str, Any]:
        """AppRunner arguments: no aiohttp access log, and its protocol errors (malformed requests) logged
        by the gateway as one line without any of the request's bytes."""
        return {"access_log": None, "handler_cancellation": True, "logger": ProtocolLog()}

    async def _open(self, _app: web.Application) -> None:
        s = self.settings
        # No shared cap one user could exhaust: each user is capped (max_requests_per_user) instead.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=s.upstream_connect_timeout,
            sock_connect=s.upstream_connect_timeout,
            sock_read=s.upstream_read_timeout,
        )
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)

    async def _close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def _fetch_jwks(self, url: str) -> Any:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.settings.jwks_timeout)
        async with self.session.get(url, timeout=timeout, allow_redirects=False) as r:
            if r.status != 200:
                raise KeySourceError(f"the JWKS URL answered HTTP {r.status}")
            return await r.json(content_type=None)

    # --- every response: CORS, no Server banner -----------------------------------------------

    async def _finish_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.popall("Server", None)
        if not self.origins:
            return
        _add_vary(response, "Origin")
        origin = request.headers.get("Origin")
        if origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)

    # --- logging: one line per request, nothing the client chose verbatim ----------------------

    @web.middleware
    async def _access(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        status, code = 500, ""
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            code = response.get(CODE, "")
            return response
        except web.HTTPException as err:
            status = err.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            took = 1000 * (time.perf_counter() - started)
            table = request.get(TABLE) or escape(request.match_info.get("table", "-"), 64)
            access_log.info(
                "%s %s %d %.1fms user=%s%s",
                escape(request.method, 16),
                table,
                status,
                took,
                request.get(USER, "-"),
                f" {code}" if code else "",
            )

    # --- routes ------------------------------------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def ready(self, _request: web.Request) -> web.Response:
        """200 only when Electric's /v1/health answers 200 (it says 202 while starting)."""
        assert self.session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=READY_TIMEOUT)
            async with self.session.get(self.settings.upstream + HEALTH_PATH, timeout=timeout) as r:
                status = r.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            status = 0
        if status == 200:
            return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})
        what = f"answered HTTP {status}" if status else "is not reachable"
        return error_response(503, "upstream_not_ready", f"the sync service {what}", {"Retry-After": "5"})

    async def not_found(self, request: web.Request) -> web.Response:
        return error_response(404, "not_found", f"use {SHAPE_PATH}/<table>, /health or /ready")

    async def shape(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return self._preflight(request)
        if request.method not in ("GET", "POST"):
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed; use GET (or POST for a subset)",
                {"Allow": "GET, POST, OPTIONS"},
            )
        query = list(request.rel_url.query.items())
        if "table" in request.match_info:
            name = request.match_info["table"]
        else:
            # Electric's own form, /v1/shape?table=<name>, so the official client works with its url changed.
            names = [v for k, v in query if k == "table"]
            if len(names) != 1:
                return error_response(
                    400, "table_not_allowed", f"name one table: {SHAPE_PATH}/<table> or {SHAPE_PATH}?table=<table>"
                )
            name = names[0]
            query = [(k, v) for k, v in query if k != "table"]
        rule = self.settings.tables.get(name)
        if rule is not None:
            request[TABLE] = escape(rule.name, 64)
        token = bearer_token(request)
        if token is None:
            return auth_error("token_missing", "send 'Authorization: Bearer <access token>'")
        try:
            claims = await self._claims(token)
        except TokenError as err:
            return auth_error(err.code, err.reason)
        except KeySourceError as err:
            log.warning("token keys unavailable: %s", escape(str(err), 300))
            retry = getattr(err, "retry_after", 5)
            return error_response(
                503, "auth_unavailable", "cannot check the token's signing key now; try again shortly",
                {"Retry-After": str(retry)},
            )
        request[USER] = user_label(claims.sub)
        if rule is None:
            return error_response(404, "table_not_allowed", "this table is not synced")
        try:
            params = upstream_params(query, rule, claims.sub, self.settings.secret)
        except ParamError as err:
            return error_response(400, err.code, err.message)
        held = self.active.get(claims.sub, 0)
        if held >= self.settings.max_requests_per_user:
            return error_response(
                429, "too_many_requests",
                f"at most {self.settings.max_requests_per_user} requests at a time per user",
                {"Retry-After": "1"},
            )
        self.active[claims.sub] = held + 1
        try:
            return await self._forward(request, rule, params)
        finally:
            left = self.active[claims.sub] - 1
            if left:
                self.active[claims.sub] = left
            else:
                del self.active[claims.sub]

    def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None:
            return web.Response(status=204, headers={"Allow": "GET, POST, OPTIONS"})
        if origin not in self.origins:
            return error_response(403, "origin_not_allowed", "this origin is not in [gateway] cors_origins")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": CORS_ALLOWED_METHODS,
                "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
                "Cache-Control": "no-store",
            },
        )

    async def _claims(self, token: str) -> Claims:
        claims = self.cache.get(token)
        if claims is None:
            claims = await self.verifier.averify(token)
            self.cache.put(token, claims)
        return claims

    # --- forwarding --------------------------------------------------------------------------

    async def _forward(
        self, request: web.Request, rule: TableRule, params: list[tuple[str, str]]
    ) -> web.StreamResponse:
        headers = {name: value for name in FORWARDED_REQUEST_HEADERS if (value := request.headers.get(name))}
        body: bytes | None = None
        if request.method == "POST":
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return error_response(413, "body_too_large", "the subset body is too large")
            try:
                body = subset_body(raw)
            except ParamError as err:
                return error_response(400, err.code, err.message)
            if body is not None:
                headers["content-type"] = "application/json"
        url = URL(self.shape_url + "?" + urlencode(params, quote_via=quote), encoded=True)
        assert self.session is not None
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as err:
            log.warning("upstream request timed out: %s", type(err).__name__)
            return error_response(
                504, "upstream_timeout", "the sync service did not answer in time; try again", {"Retry-After": "1"}
            )
        except (aiohttp.ClientError, OSError) as err:
            log.warning("upstream request failed: %s", type(err).__name__)
            return error_response(
                502, "upstream_unavailable", "the sync service is not reachable; try again shortly",
                {"Retry-After": "5"},
            )
        async with upstream:
            if upstream.status in (401, 403):
                # Electric refused the gateway's secret: a deploy problem, never the user's token.
                log.error("the sync service refused the gateway (HTTP %d): check ELECTRIC_SECRET", upstream.status)
                return error_response(502, "upstream_error", "the sync service refused the gateway; try later")
            if upstream.status >= 500:
                retry = upstream.headers.get("Retry-After", "5")
                return error_response(
                    upstream.status if upstream.status in (503, 504) else 502,
                    "upstream_error",
                    f"the sync service failed (HTTP {upstream.status}); try again shortly",
                    {"Retry-After": retry if retry.isdigit() else "5"},
                )
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in self._response_headers(upstream.headers, rule):
                response.headers.add(name, value)
            _add_vary(response, "Authorization")
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
        return response

    def _response_headers(self, upstream: Any, rule: TableRule) -> list[tuple[str, str]]:
        """The allow-listed headers of Electric's response, with cache-control made private per user (unless
        ``shared_cache``) and Location rewritten to the gateway's own path (or dropped)."""
        kept: list[tuple[str, str]] = []
        for name, value in upstream.items():
            lower = name.lower()
            if lower.startswith(ELECTRIC_HEADER_PREFIX) or lower in KEPT_RESPONSE_HEADERS:
                if lower == "cache-control" and not self.settings.shared_cache:
                    value = private_cache_control(value)
                kept.append((name, value))
            elif lower == "location":
                rewritten = self._location(value, rule)
                if rewritten:
                    kept.append(("Location", rewritten))
        return kept

    @staticmethod
    def _location(value: str, rule: TableRule) -> str | None:
        """Electric's Location as the gateway's own path, keeping only protocol params (never the shape or
        the secret), or None when it does not point at the shape API."""
        try:
            parts = urlsplit(value)
        except ValueError:
            return None
        if parts.path.rstrip("/") != SHAPE_PATH:
            return None
        params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in FORWARDED]
        path = f"{SHAPE_PATH}/{quote(rule.name, safe='')}"
        return path + ("?" + urlencode(params, quote_via=quote) if params else "")


def private_cache_control(value: str) -> str:
    """Electric's cache-control for one user's rows: ``private`` instead of ``public``, no ``s-maxage``;
    max-age and stale-while-revalidate kept."""
    directives = [d.strip() for d in value.split(",") if d.strip()]
    kept = [d for d in directives if d.split("=", 1)[0].strip().lower() not in ("public", "private", "s-maxage")]
    if any(d.lower() == "no-store" for d in kept):
        return ", ".join(kept)
    return ", ".join(["private", *kept])


def _add_vary(response: web.StreamResponse, header: str) -> None:
    vary = response.headers.get("Vary", "")
    names = [v.strip() for v in vary.split(",") if v.strip()]
    if not any(n.lower() == header.lower() for n in names):
        names.append(header)
    response.headers["Vary"] = ", ".join(names)


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, replaced: a malformed request (bad request line, NUL, CR, obs-fold, bare LF)
    becomes one line naming the error class, never the request's bytes, headers or a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("postgressor.gateway.access"), {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        if not isinstance(exc, BaseException):
            # aiohttp's own notes (e.g. a client that went away): its fixed text only, never the arguments.
            self.logger.debug("aiohttp: %s", escape(str(msg), 120))
            return
        status = getattr(exc, "code", None) or getattr(exc, "status", None)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status < 600:
            status = 400 if level < logging.ERROR or "Http" in type(exc).__name__ else 500
        line = "- - %d 0.0ms user=- %s"
        if status >= 500:
            self.logger.error(line, status, f"internal_error {type(exc).__name__}")
        else:
            self.logger.info(line, status, f"bad_request {type(exc).__name__}")


async def serve(
    settings: GatewaySettings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the gateway until ``stop`` is set (or forever)."""
    runner = web.AppRunner(Gateway(settings).make_app(), **Gateway.runner_options())
    await runner.setup()
    try:  # cleaned up even when the port cannot be bound, so the last log line is that error
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        await site.start()
        log.info(
            "gateway listening on http://%s:%d, upstream %s", settings.host, settings.port, settings.upstream
        )
        if ready is not None:
            ready.set()
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
