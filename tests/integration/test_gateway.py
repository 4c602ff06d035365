"""The gateway over real HTTP on 127.0.0.1, in front of a recording Electric stand-in."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from postgressor.gateway.app import Gateway
from postgressor.gateway.params import TableRule
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import VerifierConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from electric_standin import ElectricStandin, ServerThread
from jwt_keys import ISSUER, OTHER_USER, SECRET, USER, es256, hs256, keys, user_claims

ELECTRIC_SECRET = "electric-shared-secret-for-tests-0123456789"
TABLES = {
    "items": TableRule("items", "user_id"),
    "OR": TableRule("OR", "Owner", ("id", "Owner", "title"), "archived = false"),
}


class Stack:
    def __init__(self, servers: ServerThread, standin: ElectricStandin, gateway: str, upstream: str,
                 app: Gateway | None = None) -> None:
        self.servers, self.standin, self.url, self.upstream = servers, standin, gateway, upstream
        self.gateway = app

    def get(self, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        return self.request("GET", path, token, **kwargs)

    def request(self, method: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, self.url + path, headers=headers, timeout=20, **kwargs)


@contextlib.contextmanager
def make_stack(**options: Any) -> Iterator[Stack]:
    """The stand-in (checking the Electric secret) and a gateway in front of it; ``options`` go to
    GatewaySettings."""
    servers = ServerThread()
    standin = ElectricStandin(jwks=keys().jwks(), secret=ELECTRIC_SECRET)
    try:
        # The stand-in plays a separate process (Electric): its own access log is not the gateway's.
        upstream = servers.serve(standin.app(), access_log=None)
        settings = GatewaySettings(
            upstream=upstream, secret=ELECTRIC_SECRET, tables=TABLES,
            verifier=VerifierConfig(jwt_secret=SECRET, jwks_url=upstream + "/auth/v1/.well-known/jwks.json",
                                    issuer=ISSUER), **options)
        gateway = Gateway(settings)
        url = servers.serve(gateway.make_app(), **Gateway.runner_options())
        yield Stack(servers, standin, url, upstream, gateway)
    finally:
        servers.close()


@pytest.fixture
def stack() -> Iterator[Stack]:
    with make_stack() as s:
        yield s


def token(sub: str = USER) -> str:
    return hs256(user_claims(sub=sub))


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# --- pinning and forwarding ---------------------------------------------------------------------


def test_pins_table_where_params_and_secret(stack: Stack) -> None:
    response = stack.get("/v1/shape/items?offset=-1", token())
    assert response.status_code == 200
    (got,) = stack.standin.received
    assert got.path == "/v1/shape" and got.method == "GET"
    assert got.param("table") == '"items"'
    assert got.param("where") == '"user_id" = $1'
    assert got.param("params[1]") == USER
    assert got.param("secret") == ELECTRIC_SECRET
    assert got.param("columns") is None and got.param("offset") == "-1"


def test_quoted_reserved_table_with_columns_and_configured_where(stack: Stack) -> None:
    assert stack.get("/v1/shape/OR?offset=-1", token(OTHER_USER)).status_code == 200
    (got,) = stack.standin.received
    assert got.param("table") == '"OR"'
    assert got.param("where") == '"Owner" = $1 AND (archived = false)'
    assert got.param("params[1]") == OTHER_USER
    assert got.param("columns") == '"id","Owner","title"'
    assert got.param("queryable_columns") == '"id","Owner","title"'


def test_forwards_protocol_params_unchanged(stack: Stack) -> None:
    params = {"offset": "12_3", "handle": "h-9", "live": "true", "cursor": "77", "log": "changes_only",
              "cache-buster": "xyz", "expired_handle": "h-8", "subset__where": "title = $1",
              "subset__params": '{"1":"a"}', "subset__limit": "5", "subset__order_by": "id"}
    stack.standin.override = _answer(200, b"[]")
    assert stack.get("/v1/shape/items", token(), params=params).status_code == 200
    (got,) = stack.standin.received
    for name, value in params.items():
        assert got.param(name) == value
    sent = {k for k, _ in got.query}
    assert sent == set(params) | {"table", "where", "params[1]", "secret"}


def test_rows_of_other_users_never_arrive(stack: Stack) -> None:
    stack.standin.rows['"items"'] = [{"id": "1", "user_id": USER, "_version": 1},
                                     {"id": "2", "user_id": OTHER_USER, "_version": 2}]
    rows = [m["value"] for m in stack.get("/v1/shape/items?offset=-1", token()).json() if "value" in m]
    assert rows == [{"id": "1", "user_id": USER}]


def test_es256_token_verified_through_jwks_served_on_loopback(stack: Stack) -> None:
    assert stack.get("/v1/shape/items?offset=-1", es256(user_claims())).status_code == 200
    assert stack.standin.received[0].param("params[1]") == USER


def test_post_subset_snapshot_is_pinned_and_body_forwarded(stack: Stack) -> None:
    body = {"where": "title = $1", "params": {"1": "x"}, "limit": 10, "order_by": "id"}
    stack.standin.override = _answer(200, b'{"metadata":{},"data":[]}')
    response = stack.request("POST", "/v1/shape/items?offset=-1", token(), json=body)
    assert response.status_code == 200
    (got,) = stack.standin.received
    assert got.method == "POST" and json.loads(got.body) == {"subset": body}
    assert got.param("where") == '"user_id" = $1' and got.param("secret") == ELECTRIC_SECRET


def test_post_with_a_non_json_body_is_refused(stack: Stack) -> None:
    response = stack.request("POST", "/v1/shape/items?offset=-1", token(), content=b"where=1")
    assert response.status_code == 400 and error_code(response) == "body_invalid"
    assert stack.standin.received == []


def test_authorization_and_cookies_never_forwarded(stack: Stack) -> None:
    stack.get("/v1/shape/items?offset=-1", token(), headers={"Cookie": "sb=1", "If-None-Match": '"e1"'})
    headers = {k.lower(): v for k, v in stack.standin.received[0].headers.items()}
    assert "authorization" not in headers and "cookie" not in headers
    assert headers["if-none-match"] == '"e1"'


# --- responses ------------------------------------------------------------------------------------


def test_electric_headers_kept_and_vary_authorization_added(stack: Stack) -> None:
    response = stack.get("/v1/shape/items?offset=-1", token())
    for name in ("electric-handle", "electric-offset", "electric-schema", "electric-up-to-date",
                 "electric-cursor", "etag", "cache-control"):
        assert name in response.headers, name
    assert response.headers["electric-handle"] == stack.standin.handle
    assert "Authorization" in response.headers["vary"]
    assert response.headers["cache-control"] == "private, max-age=60, stale-while-revalidate=300"


def test_gzip_from_upstream_is_decoded_and_its_framing_dropped(stack: Stack) -> None:
    payload = json.dumps([{"headers": {"control": "up-to-date"}}]).encode()

    async def gz(_request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(payload), headers={
            "Content-Encoding": "gzip", "Content-Type": "application/json", "electric-handle": "h",
            "electric-offset": "0_0", "Vary": "Accept-Encoding"})

    stack.standin.override = gz
    with httpx.stream("GET", stack.url + "/v1/shape/items?offset=-1",
                      headers={"Authorization": f"Bearer {token()}", "Accept-Encoding": "identity"}) as r:
        raw = b"".join(r.iter_raw())
        assert "content-encoding" not in r.headers and "content-length" not in r.headers
        assert r.headers["vary"] == "Accept-Encoding, Authorization"
    assert raw == payload


@pytest.mark.parametrize("status", [409, 429])
def test_error_statuses_pass_through_with_retry_after(stack: Stack, status: int) -> None:
    stack.standin.override = _answer(status, b'{"message":"later"}',
                                     {"Retry-After": "7", "electric-handle": "n"})
    response = stack.get("/v1/shape/items?offset=-1", token())
    assert response.status_code == status
    assert response.headers["retry-after"] == "7" and response.json() == {"message": "later"}
    assert response.headers["electric-handle"] == "n"


def test_first_chunk_reaches_the_client_before_upstream_finishes(stack: Stack) -> None:
    release = threading.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"electric-handle": "h", "electric-offset": "0_0"})
        await response.prepare(request)
        await response.write(b'[{"first":1}')
        # Finish only once the test has seen the first chunk (bounded, so a buffering gateway fails).
        waited = await stack.servers.loop.run_in_executor(None, release.wait, 15)
        await response.write(b',{"second":%d}]' % int(waited))
        await response.write_eof()
        return response

    stack.standin.override = slow
    with httpx.stream("GET", stack.url + "/v1/shape/items?offset=-1",
                      headers={"Authorization": f"Bearer {token()}"}, timeout=30) as r:
        chunks = r.iter_raw()
        first = next(chunks)
        assert first == b'[{"first":1}'
        release.set()
        rest = b"".join(chunks)
    assert json.loads(first + rest) == [{"first": 1}, {"second": 1}]


def test_sse_events_are_flushed_one_by_one(stack: Stack) -> None:
    release = threading.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "electric-handle": "h",
                                               "electric-offset": "0_0", "electric-cursor": "1"})
        await response.prepare(request)
        await response.write(b'data: {"n":1}\n\n')
        await stack.servers.loop.run_in_executor(None, release.wait, 15)
        await response.write(b'data: {"headers":{"control":"up-to-date"}}\n\n')
        await response.write_eof()
        return response

    stack.standin.override = sse
    url = stack.url + "/v1/shape/items?offset=0_0&handle=h&live=true&live_sse=true"
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == 'data: {"n":1}'
        release.set()
        rest = [line for line in lines if line]
    assert rest == ['data: {"headers":{"control":"up-to-date"}}']
    assert stack.standin.received[0].param("live_sse") == "true"


def test_live_request_delivers_a_row_inserted_meanwhile(stack: Stack) -> None:
    first = stack.get("/v1/shape/items?offset=-1", token())
    offset, handle = first.headers["electric-offset"], first.headers["electric-handle"]
    stack.standin.insert('"items"', {"id": "9", "user_id": USER}, stack.servers.loop)
    live = stack.get(f"/v1/shape/items?offset={offset}&handle={handle}&live=true", token())
    assert [m["value"]["id"] for m in live.json() if "value" in m] == ["9"]


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["table", "where", "columns", "queryable_columns", "secret", "params[1]",
                                   "params", "replica"])
def test_pinned_params_from_the_client_are_refused(stack: Stack, param: str) -> None:
    response = stack.get("/v1/shape/items", token(), params={"offset": "-1", param: "x"})
    assert response.status_code == 400 and error_code(response) == "param_not_allowed"
    assert param in response.json()["error"]["message"]
    assert stack.standin.received == []


@pytest.mark.parametrize("query", ["offset=-1&foo=1", "offset=-1&offset=5", "Table=items"])
def test_unknown_or_repeated_params_are_refused(stack: Stack, query: str) -> None:
    response = stack.get(f"/v1/shape/items?{query}", token())
    assert response.status_code == 400 and error_code(response) == "param_not_allowed"
    assert stack.standin.received == []


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_other_methods_are_refused(stack: Stack, method: str) -> None:
    response = stack.request(method, "/v1/shape/items?offset=-1", token())
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST, OPTIONS"
    assert stack.standin.received == []


@pytest.mark.parametrize("path", ["/v1/shape/secrets", "/v1/shape/%22OR%22", "/v1/shape/ITEMS"])
def test_tables_not_configured_are_refused(stack: Stack, path: str) -> None:
    response = stack.get(path + "?offset=-1", token())
    assert response.status_code == 404 and error_code(response) == "table_not_allowed"
    assert stack.standin.received == []


def test_shape_without_table_and_unknown_paths(stack: Stack) -> None:
    assert error_code(stack.get("/v1/shape?offset=-1", token())) == "table_not_allowed"
    assert error_code(stack.get("/v1/shape?table=items&table=OR&offset=-1", token())) == "table_not_allowed"
    assert error_code(stack.get("/v1/shape?table=secrets&offset=-1", token())) == "table_not_allowed"
    assert stack.get("/v1/shapes/items", token()).status_code == 404
    assert stack.standin.received == []


def test_missing_token(stack: Stack) -> None:
    response = stack.get("/v1/shape/items?offset=-1")
    assert response.status_code == 401 and error_code(response) == "token_missing"
    assert response.headers["www-authenticate"].startswith("Bearer")
    basic = stack.get("/v1/shape/items?offset=-1", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert error_code(basic) == "token_missing"


@pytest.mark.parametrize(("bad", "code"), [
    (lambda: hs256(user_claims(), secret="wrong-secret-wrong-secret-wrong-secret"), "token_invalid"),
    (lambda: hs256(user_claims(now=time.time() - 7200)), "token_expired"),
    (lambda: hs256({"iss": "supabase", "ref": "x", "role": "anon", "iat": int(time.time()),
                    "exp": int(time.time()) + 60}), "token_not_user"),
    (lambda: hs256(user_claims(aud="anon")), "token_invalid"),
    (lambda: "not-a-jwt", "token_invalid"),
])
def test_bad_tokens_get_401_invalid_token(stack: Stack, bad, code: str) -> None:
    response = stack.get("/v1/shape/items?offset=-1", bad())
    assert response.status_code == 401 and error_code(response) == code
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert stack.standin.received == []


def test_upstream_down_is_502(stack: Stack) -> None:
    settings = GatewaySettings(upstream="http://127.0.0.1:9", secret=ELECTRIC_SECRET, tables=TABLES,
                               verifier=VerifierConfig(jwt_secret=SECRET, issuer=ISSUER))
    url = stack.servers.serve(Gateway(settings).make_app())
    response = httpx.get(url + "/v1/shape/items?offset=-1", headers={"Authorization": f"Bearer {token()}"})
    assert response.status_code == 502 and error_code(response) == "upstream_unavailable"


def test_health(stack: Stack) -> None:
    response = stack.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert stack.standin.received == []


def test_no_token_or_secret_in_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good, expired = token(), hs256(user_claims(now=time.time() - 7200))
    stack.get("/v1/shape/items?offset=-1", good)
    stack.get("/v1/shape/items?offset=-1&secret=x", good)
    stack.get("/v1/shape/items?offset=-1", expired)
    stack.get("/v1/shape/items?offset=-1", es256(user_claims()))
    stack.standin.override = _answer(503, b"{}", {"Retry-After": "1"})
    stack.get("/v1/shape/items?offset=-1", good)
    # Everything logged in this process except the test's own HTTP client (httpx/httpcore).
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in server_side)
    assert "postgressor.gateway" in text  # the gateway did log these requests
    for needle in (good, good.split(".")[2], expired.split(".")[2], ELECTRIC_SECRET, SECRET, "secret="):
        assert needle not in text


def _answer(status: int, body: bytes, headers: dict[str, str] | None = None):
    async def respond(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json",
                            headers={"electric-handle": "h", "electric-offset": "0_0", **(headers or {})})
    return respond
