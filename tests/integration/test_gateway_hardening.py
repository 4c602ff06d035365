"""Issue #18, items 2-6 over real HTTP: CORS, load and faults, JWKS outages, logs, filtered responses."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from postgressor.config import GatewayConfig
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import VerifierConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_gateway import ELECTRIC_SECRET, TABLES, Stack, error_code, make_stack, token

from jwt_keys import OTHER_USER, SECRET, USER, es256, hs256, keys, user_claims

APP = "http://127.0.0.1:5173"
EVIL = "https://evil.example"
ELECTRIC_HEADERS = ("electric-cursor", "electric-handle", "electric-offset", "electric-schema",
                    "electric-snapshot", "electric-up-to-date")  # @electric-sql/client 1.5.28 constants.ts


@pytest.fixture
def cors() -> Iterator[Stack]:
    with make_stack(cors_origins=(APP,)) as stack:
        yield stack


# --- CORS ---------------------------------------------------------------------------------------------


def test_preflight_from_an_allowed_origin(cors: Stack) -> None:
    response = cors.request("OPTIONS", "/v1/shape/OR", headers={
        "Origin": APP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert response.status_code == 204
    h = response.headers
    assert h["access-control-allow-origin"] == APP and "Origin" in h["vary"]
    assert h["access-control-allow-headers"] == "authorization, content-type"
    assert h["access-control-allow-methods"] == "GET, POST"
    assert int(h["access-control-max-age"]) > 0
    assert cors.standin.received == []


@pytest.mark.parametrize(("method", "path", "tok", "status"), [
    ("GET", "/v1/shape/OR?offset=-1", "good", 200),
    ("GET", "/v1/shape/OR?offset=-1", None, 401),
    ("GET", "/v1/shape/OR?offset=-1", "bad", 401),
    ("GET", "/v1/shape/OR?offset=-1&table=x", "good", 400),
    ("GET", "/v1/shape/nope?offset=-1", "good", 404),
    ("DELETE", "/v1/shape/OR?offset=-1", "good", 405),
    ("GET", "/elsewhere", None, 404),
])
def test_every_answer_to_an_allowed_origin_carries_cors_headers(cors: Stack, method: str, path: str,
                                                                tok: str | None, status: int) -> None:
    bearer = {"good": token(), "bad": "x.y.z", None: None}[tok]
    response = cors.request(method, path, bearer, headers={"Origin": APP})
    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == APP
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert set(ELECTRIC_HEADERS) <= exposed
    assert "Origin" in response.headers["vary"]


def test_other_origins_get_no_cors_headers(cors: Stack) -> None:
    preflight = cors.request("OPTIONS", "/v1/shape/OR", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 403
    response = cors.get("/v1/shape/OR?offset=-1", token(), headers={"Origin": EVIL})
    for r in (preflight, response):
        assert not any(k.lower().startswith("access-control-") for k in r.headers)


def test_wildcard_origin_is_refused_at_config_load() -> None:
    with pytest.raises(ValueError, match=r"'\*' is refused"):
        GatewayConfig(cors_origins=["*"])
    with pytest.raises(ValueError, match="exact origin"):
        GatewayConfig(cors_origins=["https://app.example.com/"])
    with pytest.raises(ValueError, match=r"'\*' is refused"):
        GatewaySettings(upstream="http://127.0.0.1:3000", secret="s", tables=TABLES,
                        verifier=VerifierConfig(jwt_secret=SECRET), cors_origins=("*",))


def test_no_server_banner(cors: Stack) -> None:
    for response in (cors.get("/health"), cors.get("/v1/shape/OR?offset=-1", token()), cors.get("/x")):
        assert "server" not in response.headers


# --- responses filtered ---------------------------------------------------------------------------------


def test_only_allow_listed_headers_and_location_rewritten(cors: Stack) -> None:
    async def redirect(_request: web.Request) -> web.Response:
        return web.Response(status=307, headers={
            "Location": f"{cors.upstream}/v1/shape?table=%22OR%22&secret={ELECTRIC_SECRET}&handle=h2&offset=-1",
            "electric-handle": "h2", "X-Debug": "internal", "Set-Cookie": "a=1", "Server": "Cowboy"})

    cors.standin.override = redirect
    with httpx.Client(follow_redirects=False) as client:
        response = client.get(cors.url + "/v1/shape/OR?offset=-1", headers={"Authorization": f"Bearer {token()}"})
    assert response.status_code == 307
    assert response.headers["location"] == "/v1/shape/OR?handle=h2&offset=-1"
    assert response.headers["electric-handle"] == "h2"
    for name in ("x-debug", "set-cookie", "server"):
        assert name not in response.headers
    assert ELECTRIC_SECRET not in str(response.headers)


def test_location_elsewhere_is_dropped(stack_factory=make_stack) -> None:
    with stack_factory() as s:
        async def away(_request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": f"http://internal:3000/admin?secret={ELECTRIC_SECRET}"})
        s.standin.override = away
        response = httpx.get(s.url + "/v1/shape/OR?offset=-1", headers={"Authorization": f"Bearer {token()}"})
        assert response.status_code == 302 and "location" not in response.headers


@pytest.mark.parametrize("status", [500, 502, 503])
def test_upstream_5xx_bodies_are_replaced(cors: Stack, status: int) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"crash at {request.url} secret={ELECTRIC_SECRET}",
                            headers={"Retry-After": "3"})

    cors.standin.override = fail
    response = cors.get("/v1/shape/OR?offset=-1", token())
    assert response.status_code >= 500 and error_code(response) == "upstream_error"
    assert ELECTRIC_SECRET not in response.text and "crash" not in response.text
    assert response.headers["retry-after"] == "3"


def test_electric_refusing_the_secret_is_not_a_401_for_the_user(cors: Stack) -> None:
    cors.standin.secret = "rotated-elsewhere"
    response = cors.get("/v1/shape/OR?offset=-1", token())
    assert response.status_code == 502 and error_code(response) == "upstream_error"


def test_per_user_rows_are_private_unless_shared_cache() -> None:
    with make_stack() as private:
        assert private.get("/v1/shape/OR?offset=-1", token()).headers["cache-control"].startswith("private, ")
    with make_stack(shared_cache=True) as shared:
        assert shared.get("/v1/shape/OR?offset=-1", token()).headers["cache-control"].startswith("public, ")


# --- /ready ---------------------------------------------------------------------------------------------------


def test_ready_follows_electrics_health(cors: Stack) -> None:
    assert cors.get("/ready").status_code == 200
    cors.standin.health_status = 202  # Electric says 202 while it is starting
    response = cors.get("/ready")
    assert response.status_code == 503 and error_code(response) == "upstream_not_ready"
    assert cors.get("/health").status_code == 200  # liveness only


# --- load -----------------------------------------------------------------------------------------------------


def _hold_user_a(stack: Stack, release: asyncio.Event, held: list[int]) -> None:
    async def hold(request: web.Request) -> web.Response | None:
        if request.query.get("params[1]") == USER:
            held[0] += 1
            await release.wait()
        return None

    stack.standin.override = hold


def _held_then_fresh(stack: Stack, count: int) -> tuple[list[int], float, int]:
    """``count`` requests of user A held upstream, then one of user B: A's statuses, B's time and status."""
    async def run() -> tuple[list[int], float, int]:
        release, upstream_held = asyncio.Event(), [0]
        _hold_user_a(stack, release, upstream_held)
        stack.standin.record = False
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def get(tok: str) -> int:
                async with session.get(stack.url + "/v1/shape/OR?offset=-1",
                                       headers={"Authorization": f"Bearer {tok}"}) as r:
                    await r.read()
                    return r.status
            held = [asyncio.ensure_future(get(token())) for _ in range(count)]
            for _ in range(100):  # until Electric holds them all (or as many as the gateway lets through)
                await asyncio.sleep(0.1)
                if upstream_held[0] >= min(count, 256, stack_cap(stack)):
                    break
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            try:
                fresh = await asyncio.wait_for(get(token(OTHER_USER)), 10)
            except TimeoutError:
                fresh = 0
            took = time.perf_counter() - started
            release.set()
            return [await h for h in held], took, fresh

    return stack.servers.run(run(), timeout=60)


def stack_cap(stack: Stack) -> int:
    return getattr(stack.gateway.settings, "max_requests_per_user", 10**6) if stack.gateway else 10**6


def test_260_held_requests_do_not_stall_another_user() -> None:
    with make_stack(max_requests_per_user=300) as stack:
        statuses, took, fresh = _held_then_fresh(stack, 260)
    assert fresh == 200 and took < 2.0, f"user B waited {took:.1f} s (status {fresh})"
    assert statuses == [200] * 260


def test_per_user_cap_answers_429() -> None:
    with make_stack(max_requests_per_user=4) as stack:
        statuses, took, fresh = _held_then_fresh(stack, 7)
    assert fresh == 200 and took < 2.0
    assert sorted(statuses) == [200] * 4 + [429] * 3


def test_read_timeout_is_a_504() -> None:
    with make_stack(upstream_read_timeout=0.5) as stack:
        async def silent(_request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(text="late")
        stack.standin.override = silent
        started = time.perf_counter()
        response = stack.get("/v1/shape/OR?offset=-1", token())
        took = time.perf_counter() - started
    assert response.status_code == 504 and error_code(response) == "upstream_timeout"
    assert took < 3


# --- JWKS outages -----------------------------------------------------------------------------------------------


def _concurrent(stack: Stack, tokens: list[str]) -> tuple[list[httpx.Response], float]:
    results: list[httpx.Response] = []

    def one(t: str) -> None:
        results.append(stack.get("/v1/shape/OR?offset=-1", t))

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, time.perf_counter() - started


def test_hanging_jwks_with_an_empty_cache_fails_fast_with_one_fetch() -> None:
    with make_stack(jwks_timeout=1.0) as stack:
        stack.standin.jwks_delay = 6  # longer than any fetch timeout
        results, took = _concurrent(stack, [es256(user_claims()) for _ in range(8)])
        assert {r.status_code for r in results} == {503}
        assert all(error_code(r) == "auth_unavailable" and "retry-after" in r.headers for r in results)
        assert took < 3.0, f"8 requests took {took:.1f} s (fetches queued?)"
        assert stack.standin.jwks_hits == 1
        again, took_again = _concurrent(stack, [es256(user_claims())])  # failure remembered: no new fetch
        assert again[0].status_code == 503 and took_again < 0.5 and stack.standin.jwks_hits == 1


def test_hanging_jwks_serves_the_last_good_keys_stale() -> None:
    with make_stack(jwks_timeout=1.0) as stack:
        assert stack.get("/v1/shape/OR?offset=-1", es256(user_claims())).status_code == 200
        assert stack.gateway is not None and stack.gateway.verifier.jwks is not None
        stack.gateway.verifier.jwks.fetched_at -= 1200  # past max_age (600 s), within the stale hour
        stack.standin.jwks_delay = 4
        results, took = _concurrent(stack, [es256(user_claims(session_id=str(i))) for i in range(8)])
        assert [r.status_code for r in results] == [200] * 8
        assert took < 1.5, f"8 requests took {took:.1f} s"


def test_rotated_kid_inside_the_refetch_throttle_is_503_not_401() -> None:
    rotated = ec.generate_private_key(ec.SECP256R1())
    with make_stack() as stack:
        assert stack.get("/v1/shape/OR?offset=-1", es256(user_claims())).status_code == 200
        new_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(rotated.public_key(), as_dict=True), "kid": "ec-key-2",
                   "alg": "ES256", "use": "sig"}
        stack.standin.jwks = {"keys": [*keys().jwks()["keys"], new_jwk]}
        response = stack.get("/v1/shape/OR?offset=-1", es256(user_claims(), kid="ec-key-2", key=rotated))
        assert response.status_code == 503 and error_code(response) == "auth_unavailable"
        assert 1 <= int(response.headers["retry-after"]) <= 30


def test_nan_and_infinite_times_are_401_not_500(cors: Stack) -> None:
    for claim, value in (("exp", float("nan")), ("exp", float("inf")), ("iat", float("nan")),
                         ("nbf", float("-inf"))):
        response = cors.get("/v1/shape/OR?offset=-1", hs256(user_claims(**{claim: value})))
        assert response.status_code == 401 and error_code(response) == "token_invalid", (claim, value)


# --- logs -------------------------------------------------------------------------------------------------------

MARK = "MARK-7f3a"
MALFORMED = [
    b"GET /v1/shape/OR?offset=-1&t=%(mark)s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %(tok)s\r\n"
    b"X-Folded: a\r\n  %(mark)s\r\n\r\n",  # obs-fold
    b"GET /v1/shape/OR?offset=-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %(tok)s\r\nX-Nul: a\x00%(mark)s\r\n\r\n",
    b"GET /v1/shape/OR?offset=-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %(tok)s\r\nX-Cr: a\r%(mark)s\r\n\r\n",
    b"GET /v1/shape/OR?offset=-1 HTTP/1.1\nHost: x\nAuthorization: Bearer %(tok)s\nX-Lf: %(mark)s\n\n",  # bare LF
    b"GET /v1/shape/OR?x=%(mark)s HTTP/1.1 %(tok)s\r\nHost: x\r\n\r\n",  # bad request line
    b"G\x01T /%(mark)s HTTP/1.1\r\nAuthorization: Bearer %(tok)s\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_requests_log_one_line_without_their_bytes(cors: Stack, raw: bytes,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_token = token()
    port = int(cors.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw % {b"mark": MARK.encode(), b"tok": secret_token.encode()})
        sock.shutdown(socket.SHUT_WR)
        with pytest.raises(OSError):  # read until the server closes (or resets)
            while sock.recv(4096):
                pass
            raise OSError("closed")
    time.sleep(0.2)
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = caplog.text + "\n".join(r.getMessage() for r in server_side)
    assert MARK not in text and secret_token not in text and secret_token.split(".")[2] not in text
    assert all(r.exc_info is None for r in server_side)


def test_access_log_is_one_escaped_line_per_request(cors: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postgressor.gateway")
    good = token()
    cors.get(f"/v1/shape/OR?offset=-1&handle={MARK}", good)
    cors.get("/v1/shape/OR%0AFORGED%20line?offset=-1", good)
    lines = [r.getMessage() for r in caplog.records if r.name == "postgressor.gateway.access"]
    assert len(lines) == 2
    first, second = lines
    assert first.startswith("GET OR 200 ") and "user=" in first and USER not in first
    assert "\n" not in second and "FORGED" in second and "\\n" in second
    text = "\n".join(lines)
    assert MARK not in text and good not in text and "offset" not in text
