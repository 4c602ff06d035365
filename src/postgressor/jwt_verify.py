"""Verify Supabase Auth access tokens: the one verifier shared by the gateway and ``verify-jwt``.

The key source is chosen from the configuration and the token's ``alg`` together: HS256 uses the
legacy secret (its raw UTF-8 bytes), ES256/RS256 use the project's JWKS. Symmetric and asymmetric
algorithms never share an allow-list, so an HS256 token can never be checked against a public key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK

from postgressor.masking import mask_url

SYMMETRIC_ALGS = ("HS256",)
ASYMMETRIC_ALGS = ("ES256", "RS256")
KEY_TYPES = {"ES256": "EC", "RS256": "RSA"}
MAX_LEEWAY = 60
JWKS_MAX_AGE = 600.0  # seconds a fetched key set may be used
JWKS_MIN_REFETCH = 30.0  # at most one refetch for an unknown kid in this many seconds
JWKS_STALE_MAX = 3600.0  # seconds past max_age the last good key set is still served while refreshing fails
JWKS_FAILURE_TTL = 5.0  # seconds a failed fetch is remembered (callers fail fast instead of queueing)
NOT_USER_ROLES = ("anon", "service_role")
# A kid is an opaque label: no slashes, dots-only segments or other path material.
KID_PATTERN = re.compile(r"^[A-Za-z0-9_\-=+][A-Za-z0-9_\-=+.]{0,127}$")
JWKS_SUFFIX = "/.well-known/jwks.json"


class TokenError(Exception):
    """A token the verifier refuses. ``code`` is stable (used in the gateway's JSON errors)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class KeySourceError(Exception):
    """The key set could not be fetched or read (not the token's fault)."""


@dataclass(frozen=True)
class VerifierConfig:
    jwt_secret: str | None = None
    jwks_url: str = ""
    issuer: str = ""
    audience: str = "authenticated"
    leeway: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")

    @property
    def allowed_algs(self) -> tuple[str, ...]:
        algs: tuple[str, ...] = ()
        if self.jwt_secret:
            algs += SYMMETRIC_ALGS
        if self.jwks_url:
            algs += ASYMMETRIC_ALGS
        return algs

    @property
    def expected_issuer(self) -> str:
        """The configured issuer, else the one implied by a Supabase JWKS URL (iss + JWKS_SUFFIX)."""
        if self.issuer:
            return self.issuer
        if self.jwks_url.endswith(JWKS_SUFFIX):
            return self.jwks_url.removesuffix(JWKS_SUFFIX)
        return ""


def config_problem(cfg: VerifierConfig) -> str | None:
    """Why ``cfg`` cannot verify anything (one line), or None."""
    if not cfg.jwt_secret and not cfg.jwks_url:
        return (
            "no key source: set [supabase] jwt_secret (POSTGRESSOR_SUPABASE__JWT_SECRET) "
            "and/or [supabase] jwks_url"
        )
    if cfg.jwks_url:
        parts = urlsplit(cfg.jwks_url)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            return f"jwks_url must be an https:// URL (got {parts.scheme or 'no scheme'}://)"
    if not cfg.audience:
        return "audience is empty; Supabase user tokens use 'authenticated'"
    return None


def fingerprint(value: str) -> str:
    """A short, non-reversible label for a token or secret, safe to print and log."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


# --- JWKS ---------------------------------------------------------------------------------------


def parse_jwks(document: Any) -> dict[str, PyJWK]:
    """Signature keys by kid. Symmetric (oct) keys and keys we cannot read are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySourceError("the JWKS document has no 'keys' list")
    keys: dict[str, PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("EC", "RSA"):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "ES256") not in ASYMMETRIC_ALGS:
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not valid_kid(kid):
            continue
        try:
            keys[kid] = PyJWK(entry)
        except jwt.PyJWTError:
            continue
    return keys


class KeysNotReady(KeySourceError):
    """A kid not in the cached key set while a refetch is throttled: maybe a key rotated a moment ago.
    Not the token's fault (so not a 401, which makes clients sign the user out); retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class JWKSCache:
    """The project's signing keys, fetched from ``url``.

    - Fresh for ``max_age`` s; after that still served (stale) for up to ``stale_max`` s more while a refresh
      runs or the endpoint is down, so an outage of the JWKS URL does not stop verification.
    - One fetch at a time (single-flight): concurrent callers share it.
    - A failed fetch is remembered for ``failure_ttl`` s: callers with no usable key fail at once (KeySourceError
      with ``retry_after``) instead of queueing on a hanging endpoint.
    - An unknown kid refetches at most once per ``min_refetch`` s; inside that window it is KeysNotReady (503),
      after a fetch that did not list it, TokenError (401).
    """

    url: str
    max_age: float = JWKS_MAX_AGE
    min_refetch: float = JWKS_MIN_REFETCH
    stale_max: float = JWKS_STALE_MAX
    failure_ttl: float = JWKS_FAILURE_TTL
    clock: Callable[[], float] = time.monotonic
    keys: dict[str, PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None
    attempted_at: float | None = None
    failed_at: float | None = None
    failure: KeySourceError | None = None
    fetch_count: int = 0
    _inflight: asyncio.Future[bool] | None = field(default=None, repr=False)

    def _age(self) -> float:
        return float("inf") if self.fetched_at is None else self.clock() - self.fetched_at

    def _fresh(self) -> bool:
        return self._age() < self.max_age

    def _usable(self) -> bool:
        return self._age() < self.max_age + self.stale_max

    def _failed_recently(self) -> bool:
        return self.failed_at is not None and self.clock() - self.failed_at < self.failure_ttl

    def _throttle_left(self) -> float:
        if self.attempted_at is None:
            return 0.0
        return max(0.0, self.min_refetch - (self.clock() - self.attempted_at))

    def needs_fetch(self, kid: str) -> bool:
        if self._failed_recently():
            return False
        if not self._fresh():
            return True
        # Unknown kid on a fresh set: maybe a rotation. Refetch, but rate-limited.
        return kid not in self.keys and self._throttle_left() == 0

    def store(self, document: Any) -> None:
        self.keys = parse_jwks(document)
        self.fetched_at = self.clock()
        self.failed_at = self.failure = None

    def lookup(self, kid: str, fetched: bool = False) -> PyJWK:
        """The key for ``kid``; ``fetched`` says a fetch just succeeded for this lookup."""
        if not self._usable():
            left = self.failure_ttl - (self.clock() - self.failed_at) if self.failed_at is not None else 0
            raise KeysNotReady(str(self.failure or f"the key set from {mask_url(self.url)} could not be loaded"),
                               max(1, math.ceil(left)))
        key = self.keys.get(kid)
        if key is not None:
            return key
        if fetched:
            raise TokenError("token_invalid", f"unknown key id {kid!r} (not in the project's JWKS)")
        raise KeysNotReady(f"key id {kid!r} is not in the cached JWKS and a refetch is throttled",
                           max(1, math.ceil(self._throttle_left() or self.failure_ttl)))

    def get(self, kid: str, fetch: Callable[[str], Any]) -> PyJWK:
        """Blocking variant for the CLI: ``fetch(url)`` returns the parsed JWKS document."""
        fetched = False
        if self.needs_fetch(kid):
            self._begin_fetch()
            try:
                self.store(fetch(self.url))
                fetched = True
            except Exception as err:
                self._remember(err)
                if not self._usable():
                    raise self.failure from None  # type: ignore[misc]
        return self.lookup(kid, fetched)

    async def aget(self, kid: str, fetch: Callable[[str], Awaitable[Any]]) -> PyJWK:
        """Event-loop variant: hits never await; stale keys are served while a refresh runs in the
        background; misses share one fetch."""
        if not self.needs_fetch(kid):
            return self.lookup(kid)
        if kid in self.keys and self._usable():
            self._start(fetch)  # stale but known: answer now, refresh behind
            return self.lookup(kid)
        fetched = await asyncio.shield(self._start(fetch))
        return self.lookup(kid, fetched)

    def _start(self, fetch: Callable[[str], Awaitable[Any]]) -> asyncio.Future[bool]:
        if self._inflight is None:
            self._begin_fetch()
            self._inflight = asyncio.ensure_future(self._run(fetch))
        return self._inflight

    async def _run(self, fetch: Callable[[str], Awaitable[Any]]) -> bool:
        try:
            self.store(await fetch(self.url))
            return True
        except Exception as err:  # any failure of the endpoint or the document: remembered, never raised
            self._remember(err)
            return False
        finally:
            self._inflight = None

    def _begin_fetch(self) -> None:
        self.attempted_at = self.clock()
        self.fetch_count += 1

    def _remember(self, err: Exception) -> None:
        self.failed_at = self.clock()
        self.failure = err if isinstance(err, KeySourceError) else KeySourceError(
            f"cannot fetch the JWKS from {mask_url(self.url)}: {mask_url(_short(err))}")


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def fetch_jwks_blocking(url: str, timeout: float = 5.0) -> Any:
    import httpx

    response = httpx.get(url, timeout=timeout, follow_redirects=False)
    if response.status_code != 200:
        raise KeySourceError(f"the JWKS URL {mask_url(url)} answered HTTP {response.status_code}")
    try:
        return response.json()
    except json.JSONDecodeError:
        raise KeySourceError(f"the JWKS URL {mask_url(url)} did not return JSON") from None


# --- header and key selection -------------------------------------------------------------------


def read_header(token: str, cfg: VerifierConfig) -> dict[str, Any]:
    """The token's header, checked against what ``cfg`` allows. Nothing here trusts the token yet."""
    if not token or token.count(".") != 2:
        raise TokenError("token_invalid", "not a JWT (expected three dot-separated parts)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as err:
        raise TokenError("token_invalid", f"unreadable header: {err}") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise TokenError("token_invalid", "unsigned token (alg none) refused")
    if alg not in cfg.allowed_algs:
        allowed = ", ".join(cfg.allowed_algs) or "none configured"
        raise TokenError("token_invalid", f"algorithm {alg} not accepted here (allowed: {allowed})")
    if "crit" in header:
        raise TokenError("token_invalid", f"unsupported critical header extensions {header['crit']!r}")
    kid = header.get("kid")
    if kid is not None and not valid_kid(kid):
        raise TokenError("token_invalid", "malformed key id (kid) refused")
    return header


def valid_kid(kid: Any) -> bool:
    return isinstance(kid, str) and bool(KID_PATTERN.match(kid)) and ".." not in kid


def key_source(alg: str) -> str:
    return "jwt_secret" if alg in SYMMETRIC_ALGS else "jwks"


def select_key(header: dict[str, Any], cfg: VerifierConfig, keys: dict[str, PyJWK] | PyJWK | None) -> Any:
    """The verification key for ``header``: the secret's bytes for HS256, a JWKS key for ES256/RS256."""
    alg = header["alg"]
    if alg in SYMMETRIC_ALGS:
        assert cfg.jwt_secret
        return cfg.jwt_secret.encode("utf-8")
    if not isinstance(keys, PyJWK):
        raise TokenError("token_invalid", "no signing key found for this token")
    if keys.key_type != KEY_TYPES[alg] or keys.algorithm_name != alg:
        raise TokenError("token_invalid", f"key {header.get('kid')!r} is not an {alg} key")
    return keys.key


# --- claims -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claims:
    sub: str
    role: str
    exp: int
    payload: dict[str, Any]


def check_user(payload: dict[str, Any]) -> None:
    """Refuse API keys (anon/service_role) and anything without a user id."""
    role = payload.get("role")
    if role in NOT_USER_ROLES:
        raise TokenError("token_not_user", f"this is a Supabase '{role}' API key, not a user's access token")
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise TokenError("token_not_user", "the token has no user id (sub)")


def _decode(token: str, key: Any, alg: str, cfg: VerifierConfig, now: float) -> dict[str, Any]:
    """PyJWT checks the signature, aud, iss and required claims; the times are checked against ``now``
    (an injectable clock) with the configured leeway."""
    issuer = cfg.expected_issuer
    require = ["exp", "iat", "sub", "aud"] + (["iss"] if issuer else [])
    options: dict[str, Any] = {
        "require": require,
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
    }
    kwargs: dict[str, Any] = {"audience": cfg.audience, "leeway": cfg.leeway}
    if issuer:
        kwargs["issuer"] = issuer
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            options=options,  # type: ignore[arg-type]
            **kwargs,
        )
    except jwt.PyJWTError as err:
        raise _classify(token, err) from None
    if issuer and payload.get("iss") != issuer:
        # PyJWT 2.10.0 matched any substring of the issuer (CVE-2024-53861): compare exactly ourselves too.
        raise TokenError("token_invalid", f"issuer {payload.get('iss')!r} is not {issuer!r}")
    problem = time_problem(payload, now, cfg.leeway)
    if problem:
        raise TokenError(*problem)
    return payload


MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z: beyond it a NumericDate is no date at all


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number usable as a NumericDate: int or float, not bool, not NaN or +-Infinity, and within
    +-MAX_NUMERIC_DATE (an int like 10**400 would overflow a float in every later comparison)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE


def time_problem(payload: dict[str, Any], now: float, leeway: float) -> tuple[str, str] | None:
    """(code, reason) when exp/iat/nbf make the token unusable at ``now``."""
    for name in ("exp", "iat", "nbf"):
        if name in payload and not is_finite_number(payload[name]):
            return "token_invalid", f"claim {name} is not a finite number"
    if "exp" in payload and payload["exp"] <= now - leeway:
        return "token_expired", f"expired {int(now - payload['exp'])} s ago"
    if "iat" in payload and payload["iat"] > now + leeway:
        return "token_invalid", "issued in the future (iat)"
    if "nbf" in payload and payload["nbf"] > now + leeway:
        return "token_invalid", "not valid yet (nbf)"
    return None


def _classify(token: str, err: jwt.PyJWTError) -> TokenError:
    if isinstance(err, jwt.ExpiredSignatureError):
        return TokenError("token_expired", "the token has expired")
    if isinstance(err, jwt.InvalidSignatureError):
        return TokenError("token_invalid", "bad signature")
    if isinstance(err, jwt.MissingRequiredClaimError | jwt.InvalidAudienceError):
        # PyJWT validates claims only after the signature has verified, so this payload is authentic.
        payload = jwt.decode(token, options={"verify_signature": False})
        try:
            check_user(payload)
        except TokenError as not_user:
            return not_user
    if isinstance(err, jwt.ImmatureSignatureError):
        return TokenError("token_invalid", f"not valid yet: {err}")
    return TokenError("token_invalid", str(err) or type(err).__name__)


def finish(payload: dict[str, Any]) -> Claims:
    check_user(payload)
    return Claims(
        sub=payload["sub"], role=str(payload.get("role", "")), exp=int(payload["exp"]), payload=payload
    )


class Verifier:
    """Verifies tokens against one configuration. Use ``verify`` (blocking) or ``averify`` (asyncio)."""

    def __init__(
        self,
        cfg: VerifierConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        fetch: Callable[[str], Any] = fetch_jwks_blocking,
        afetch: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        problem = config_problem(cfg)
        if problem:
            raise ValueError(problem)
        self.cfg = cfg
        self.jwks = JWKSCache(cfg.jwks_url, clock=clock) if cfg.jwks_url else None
        self.wall_clock = wall_clock
        self.fetch = fetch
        self.afetch = afetch

    def _key(self, header: dict[str, Any]) -> Any:
        if header["alg"] in SYMMETRIC_ALGS:
            return select_key(header, self.cfg, None)
        assert self.jwks is not None
        return select_key(header, self.cfg, self.jwks.get(self._kid(header), self.fetch))

    async def _akey(self, header: dict[str, Any]) -> Any:
        if header["alg"] in SYMMETRIC_ALGS:
            return select_key(header, self.cfg, None)
        assert self.jwks is not None and self.afetch is not None
        return select_key(header, self.cfg, await self.jwks.aget(self._kid(header), self.afetch))

    @staticmethod
    def _kid(header: dict[str, Any]) -> str:
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("token_invalid", f"{header['alg']} token without a key id (kid)")
        return kid

    def verify(self, token: str) -> Claims:
        header = read_header(token, self.cfg)
        return finish(_decode(token, self._key(header), header["alg"], self.cfg, self.wall_clock()))

    async def averify(self, token: str) -> Claims:
        header = read_header(token, self.cfg)
        key = await self._akey(header)
        return finish(_decode(token, key, header["alg"], self.cfg, self.wall_clock()))


class ClaimsCache:
    """Recently verified tokens (exact string) → claims, so a client's repeated polls skip the crypto.

    Entries are dropped at the token's exp; at most ``size`` are kept (least recently used go first).
    """

    def __init__(self, size: int = 4096, wall_clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.wall_clock = wall_clock
        self._items: OrderedDict[str, Claims] = OrderedDict()

    def get(self, token: str) -> Claims | None:
        claims = self._items.get(token)
        if claims is None:
            return None
        if claims.exp <= self.wall_clock():
            del self._items[token]
            return None
        self._items.move_to_end(token)
        return claims

    def put(self, token: str, claims: Claims) -> None:
        self._items[token] = claims
        self._items.move_to_end(token)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
