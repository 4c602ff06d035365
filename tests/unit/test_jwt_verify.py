"""The shared token verifier: an attack matrix, the three accepted algorithms, and JWKS caching."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug import Response

from postgressor.jwt_verify import (
    ClaimsCache,
    KeysNotReady,
    KeySourceError,
    TokenError,
    Verifier,
    VerifierConfig,
    config_problem,
    fetch_jwks_blocking,
    parse_jwks,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jwt_keys import (
    ISSUER,
    SECRET,
    USER,
    es256,
    hs256,
    keys,
    rs256,
    tamper_payload,
    user_claims,
)

JWKS_PATH = "/auth/v1/.well-known/jwks.json"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks_url(httpserver) -> str:
    httpserver.expect_request(JWKS_PATH).respond_with_json(keys().jwks())
    return httpserver.url_for(JWKS_PATH)


def secret_only() -> Verifier:
    return Verifier(VerifierConfig(jwt_secret=SECRET, issuer=ISSUER))


def both(jwks_url: str, clock: FakeClock | None = None) -> Verifier:
    cfg = VerifierConfig(jwt_secret=SECRET, jwks_url=jwks_url, issuer=ISSUER)
    return Verifier(cfg, clock=clock or time.monotonic)


def jwks_only(jwks_url: str) -> Verifier:
    return Verifier(VerifierConfig(jwks_url=jwks_url, issuer=ISSUER))


def refused(verifier: Verifier, token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    return info.value


def not_ready(verifier: Verifier, token: str) -> KeysNotReady:
    with pytest.raises(KeysNotReady) as info:
        verifier.verify(token)
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(header: dict, claims: dict, key: bytes) -> str:
    """An HS256 token signed with arbitrary bytes (PyJWT refuses PEM keys as HMAC secrets)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


# --- accepted tokens ------------------------------------------------------------------------------


def test_valid_hs256_uses_the_secrets_raw_utf8_bytes() -> None:
    claims = secret_only().verify(hs256(user_claims(), kid="gotrue-puts-a-kid-on-hs256"))
    assert claims.sub == USER and claims.role == "authenticated"


def test_hs256_with_base64_decoded_secret_is_refused() -> None:
    decoded = base64.b64decode(SECRET + "=" * (-len(SECRET) % 4), validate=False)
    assert refused(secret_only(), hs256(user_claims(), secret=decoded)).code == "token_invalid"


def test_valid_es256_and_rs256_through_jwks(jwks_url: str) -> None:
    verifier = jwks_only(jwks_url)
    assert verifier.verify(es256(user_claims())).sub == USER
    assert verifier.verify(rs256(user_claims(sub="other"))).sub == "other"


def test_anonymous_sign_in_is_a_user() -> None:
    assert secret_only().verify(hs256(user_claims(is_anonymous=True))).sub == USER


def test_issuer_is_derived_from_a_supabase_jwks_url() -> None:
    cfg = VerifierConfig(jwks_url="https://abc.supabase.co/auth/v1/.well-known/jwks.json")
    assert cfg.expected_issuer == "https://abc.supabase.co/auth/v1"


# --- the attack matrix ----------------------------------------------------------------------------


def test_alg_none_refused(jwks_url: str) -> None:
    token = jwt.encode(user_claims(), None, algorithm="none")
    assert "alg none" in refused(both(jwks_url), token).reason


def test_hs256_signed_with_the_jwks_public_key_refused(jwks_url: str) -> None:
    pem = keys().rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    token = hmac_token({"alg": "HS256", "typ": "JWT", "kid": keys().rsa_kid}, user_claims(), pem)
    # JWKS-only project: HS256 is not in the allow-list at all.
    assert "not accepted" in refused(jwks_only(jwks_url), token).reason
    # Project with both: HS256 is checked against the secret, never the public key.
    assert refused(both(jwks_url), token).reason == "bad signature"


def test_es256_token_relabelled_rs256_refused(jwks_url: str) -> None:
    token = es256(user_claims())
    head, rest = token.split(".", 1)
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    relabelled = b64(json.dumps({**header, "alg": "RS256"}).encode()) + "." + rest
    assert refused(jwks_only(jwks_url), relabelled).code == "token_invalid"


def test_unknown_crit_refused() -> None:
    assert "critical" in refused(secret_only(), hs256(user_claims(), crit=["b64"], b64=False)).reason


def test_expired_refused() -> None:
    err = refused(secret_only(), hs256(user_claims(now=time.time() - 7200)))
    assert err.code == "token_expired"


def test_expiry_within_leeway_accepted_beyond_refused() -> None:
    now = time.time()
    verifier = Verifier(VerifierConfig(jwt_secret=SECRET, issuer=ISSUER, leeway=30), wall_clock=lambda: now)
    assert verifier.verify(hs256(user_claims(now=now - 100, exp=int(now) - 10)))
    assert refused(verifier, hs256(user_claims(now=now - 100, exp=int(now) - 40))).code == "token_expired"


def test_leeway_above_60_seconds_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="leeway"):
        VerifierConfig(jwt_secret=SECRET, leeway=61)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_future_nbf_or_iat_refused(claim: str) -> None:
    token = hs256(user_claims(**{claim: int(time.time()) + 600}))
    assert "future" in refused(secret_only(), token).reason or "not valid yet" in refused(
        secret_only(), token).reason


@pytest.mark.parametrize(("claim", "value"), [("aud", "anon"), ("aud", None), ("iss", "https://evil.example/auth/v1"),
                                              ("iss", None), ("exp", None), ("iat", None)])
def test_wrong_or_missing_claims_refused(claim: str, value: object) -> None:
    assert refused(secret_only(), hs256(user_claims(**{claim: value}))).code == "token_invalid"


def test_missing_sub_is_not_a_user() -> None:
    assert refused(secret_only(), hs256(user_claims(sub=None))).code == "token_not_user"


@pytest.mark.parametrize("role", ["anon", "service_role"])
def test_legacy_api_keys_are_not_users(role: str) -> None:
    now = int(time.time())
    key = hs256({"iss": "supabase", "ref": "testref", "role": role, "iat": now, "exp": now + 3600})
    err = refused(secret_only(), key)
    assert err.code == "token_not_user" and role in err.reason


def test_service_role_with_sub_and_aud_still_refused() -> None:
    assert refused(secret_only(), hs256(user_claims(role="service_role"))).code == "token_not_user"


def test_tampered_payload_refused(jwks_url: str) -> None:
    for token in (hs256(user_claims()), es256(user_claims()), rs256(user_claims())):
        assert refused(both(jwks_url), tamper_payload(token, sub="someone-else")).reason == "bad signature"


def test_tampered_signature_refused(jwks_url: str) -> None:
    token = es256(user_claims())
    head, body, sig = token.split(".")
    flipped = ("A" if sig[5] != "A" else "B")
    assert refused(both(jwks_url), f"{head}.{body}.{sig[:5]}{flipped}{sig[6:]}").code == "token_invalid"


def test_unknown_kid_refused(jwks_url: str) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    err = refused(jwks_only(jwks_url), es256(user_claims(), kid="unknown-kid", key=stranger))
    assert "unknown key id" in err.reason


@pytest.mark.parametrize("kid", ["../../../etc/passwd", "/dev/null", "keys/ec-key-1", "..", "a b", ""])
def test_path_like_kid_refused(jwks_url: str, kid: str) -> None:
    err = refused(both(jwks_url), es256(user_claims(), kid=kid))
    assert "kid" in err.reason


def test_asymmetric_token_without_kid_refused(jwks_url: str) -> None:
    token = jwt.encode(user_claims(), keys().ec, algorithm="ES256")
    assert "kid" in refused(jwks_only(jwks_url), token).reason


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c", "Bearer x.y.z"])
def test_garbage_refused(garbage: str) -> None:
    assert refused(secret_only(), garbage).code == "token_invalid"


def test_config_needs_a_key_source_and_https_jwks() -> None:
    assert "no key source" in (config_problem(VerifierConfig()) or "")
    assert "https" in (config_problem(VerifierConfig(jwks_url="http://example.com/jwks.json")) or "")
    assert config_problem(VerifierConfig(jwks_url="http://127.0.0.1:9/jwks.json")) is None


def test_symmetric_keys_in_a_jwks_are_ignored() -> None:
    doc = {"keys": [{"kty": "oct", "kid": "hs", "k": b64(SECRET.encode())}, keys().ec_jwk()]}
    assert list(parse_jwks(doc)) == [keys().ec_kid]


# --- JWKS caching -------------------------------------------------------------------------------


def test_jwks_cached_for_at_most_ten_minutes(httpserver, jwks_url: str) -> None:
    clock = FakeClock()
    verifier = both(jwks_url, clock)
    for _ in range(3):
        verifier.verify(es256(user_claims()))
    assert len(httpserver.log) == 1
    clock.now += 599
    verifier.verify(rs256(user_claims()))
    assert len(httpserver.log) == 1
    clock.now += 2
    verifier.verify(es256(user_claims()))
    assert len(httpserver.log) == 2


def test_unknown_kid_refetches_once_rate_limited_then_finds_rotated_key(httpserver) -> None:
    rotated = ec.generate_private_key(ec.SECP256R1())
    new_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(rotated.public_key(), as_dict=True), "kid": "ec-key-2",
               "alg": "ES256", "use": "sig"}
    served = {"doc": keys().jwks()}
    httpserver.expect_request(JWKS_PATH).respond_with_handler(
        lambda _req: Response(json.dumps(served["doc"]), content_type="application/json"))
    clock = FakeClock()
    verifier = both(httpserver.url_for(JWKS_PATH), clock)
    verifier.verify(es256(user_claims()))
    assert len(httpserver.log) == 1
    token = es256(user_claims(), kid="ec-key-2", key=rotated)
    # The set was fetched just now: no refetch yet, and not the token's fault (503 + Retry-After, not 401).
    assert not_ready(verifier, token).retry_after == 30
    assert len(httpserver.log) == 1
    clock.now += 31
    refused(verifier, token)  # unknown kid: one refetch, still unknown -> the token is refused
    assert len(httpserver.log) == 2
    clock.now += 10
    assert not_ready(verifier, token).retry_after == 20  # within the rate limit: no refetch
    assert len(httpserver.log) == 2
    served["doc"] = {"keys": [*keys().jwks()["keys"], new_jwk]}  # the project rotates
    clock.now += 31
    assert verifier.verify(token).sub == USER
    assert len(httpserver.log) == 3


def test_unreachable_jwks_is_a_key_source_error_not_a_token_error() -> None:
    verifier = Verifier(VerifierConfig(jwks_url="http://127.0.0.1:9/auth/v1/.well-known/jwks.json"))
    with pytest.raises(KeySourceError):
        verifier.verify(es256(user_claims(iss="http://127.0.0.1:9/auth/v1")))


def test_async_misses_share_one_fetch(jwks_url: str) -> None:
    calls = []

    async def afetch(url: str) -> dict:
        calls.append(url)
        await asyncio.sleep(0.01)
        return httpx.get(url).json()

    verifier = Verifier(VerifierConfig(jwks_url=jwks_url, issuer=ISSUER), afetch=afetch)

    async def run() -> list:
        return await asyncio.gather(*(verifier.averify(es256(user_claims())) for _ in range(10)))

    assert all(c.sub == USER for c in asyncio.run(run()))
    assert calls == [jwks_url]


def test_blocking_fetch_reports_http_errors(httpserver) -> None:
    httpserver.expect_request("/missing").respond_with_data("nope", status=404)
    with pytest.raises(KeySourceError, match="404"):
        fetch_jwks_blocking(httpserver.url_for("/missing"))


def test_claims_cache_drops_expired_entries() -> None:
    now = [1000.0]
    cache = ClaimsCache(size=2, wall_clock=lambda: now[0])
    claims = secret_only()
    one = claims.verify(hs256(user_claims()))
    cache.put("t1", one)
    assert cache.get("t1") is one
    now[0] = one.exp + 1
    assert cache.get("t1") is None
    now[0] = 1000.0
    for name in ("a", "b", "c"):
        cache.put(name, one)
    assert cache.get("a") is None and cache.get("c") is one


# --- issue #18: non-finite times, issuer substrings, JWKS failures --------------------------------------


@pytest.mark.parametrize(("claim", "value"), [
    ("exp", float("nan")), ("exp", float("inf")), ("exp", float("-inf")), ("iat", float("nan")),
    ("iat", float("inf")), ("nbf", float("nan")), ("nbf", float("-inf")), ("exp", True), ("exp", 1e400),
    ("exp", 10**400), ("iat", -(10**400)), ("nbf", 10**19),  # ints no float holds (OverflowError before)
])
def test_time_claims_must_be_finite_numbers(claim: str, value: object) -> None:
    bad = hs256(user_claims(**{claim: value}))  # PyJWT writes NaN/Infinity as JSON allows them
    err = refused(secret_only(), bad)
    assert err.code == "token_invalid"
    from postgressor.checks.tokens import FAIL, check_token

    rows = {c.name: c for c in check_token(bad, VerifierConfig(jwt_secret=SECRET, issuer=ISSUER))}
    assert rows[claim].status == FAIL


@pytest.mark.parametrize("iss", ["", "https://testref.supabase.co", "auth", "https://testref.supabase.co/auth/v"])
def test_issuer_must_match_exactly_not_as_a_substring(iss: str) -> None:
    assert iss in ISSUER  # each is a substring of the expected issuer (CVE-2024-53861 in PyJWT 2.10.0)
    err = refused(secret_only(), hs256(user_claims(iss=iss)))
    assert err.code == "token_invalid"


def test_a_failed_jwks_fetch_is_remembered_then_retried() -> None:
    clock = FakeClock()
    calls: list[str] = []

    def down(url: str) -> object:
        calls.append(url)
        raise OSError("connection refused")

    verifier = Verifier(VerifierConfig(jwks_url="https://x.supabase.co/auth/v1/.well-known/jwks.json"),
                        clock=clock, fetch=down)
    token = es256(user_claims(iss="https://x.supabase.co/auth/v1"))
    for _ in range(3):
        with pytest.raises(KeySourceError):
            verifier.verify(token)
    assert len(calls) == 1  # remembered for JWKS_FAILURE_TTL
    clock.now += 6
    with pytest.raises(KeySourceError):
        verifier.verify(token)
    assert len(calls) == 2


def test_stale_keys_serve_for_an_hour_while_the_endpoint_is_down() -> None:
    clock = FakeClock()
    state = {"up": True}

    def fetch(_url: str) -> object:
        if not state["up"]:
            raise OSError("down")
        return keys().jwks()

    verifier = Verifier(VerifierConfig(jwks_url="https://x.supabase.co/auth/v1/.well-known/jwks.json"),
                        clock=clock, fetch=fetch)
    token = es256(user_claims(iss="https://x.supabase.co/auth/v1"))
    assert verifier.verify(token).sub == USER
    state["up"] = False
    clock.now += 600 + 3000  # past max_age, inside the stale hour
    assert verifier.verify(token).sub == USER
    clock.now += 700  # more than an hour past max_age
    with pytest.raises(KeySourceError):
        verifier.verify(token)

