"""The local checks behind ``postgressor verify-jwt``: one row per property of a token, and test minting.

Every row is computed with the same pieces the gateway uses (``postgressor.jwt_verify``), and the
full verifier runs last, so the report can never pass a token the gateway would refuse.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jwt

from postgressor.errors import UsageError
from postgressor.jwt_verify import (
    NOT_USER_ROLES,
    SYMMETRIC_ALGS,
    KeySourceError,
    TokenError,
    Verifier,
    VerifierConfig,
    fetch_jwks_blocking,
    is_finite_number,
    key_source,
    read_header,
    select_key,
)
from postgressor.masking import mask_url

PASS, FAIL, SKIP = "pass", "fail", "skip"
ROWS = ("header", "key source", "signature", "exp", "iat", "nbf", "aud", "iss", "sub", "role")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass, fail or skip
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _lifetime(seconds: float) -> str:
    seconds = int(seconds)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _time_checks(payload: dict[str, Any], now: float, leeway: int) -> list[Check]:
    rows = []
    exp = payload.get("exp")
    if not is_finite_number(exp):
        rows.append(Check("exp", FAIL, "missing or not a finite number"))
    elif exp <= now - leeway:
        rows.append(Check("exp", FAIL, f"expired {_lifetime(now - exp)} ago"))
    else:
        rows.append(Check("exp", PASS, f"valid for {_lifetime(exp - now)} more"))
    iat = payload.get("iat")
    if not is_finite_number(iat):
        rows.append(Check("iat", FAIL, "missing or not a finite number"))
    elif iat > now + leeway:
        rows.append(Check("iat", FAIL, f"issued {_lifetime(iat - now)} in the future"))
    else:
        rows.append(Check("iat", PASS, f"issued {_lifetime(now - iat)} ago"))
    nbf = payload.get("nbf")
    if nbf is None:
        rows.append(Check("nbf", PASS, "not set"))
    elif not is_finite_number(nbf):
        rows.append(Check("nbf", FAIL, "not a finite number"))
    elif nbf > now + leeway:
        rows.append(Check("nbf", FAIL, "not valid yet (nbf in the future)"))
    else:
        rows.append(Check("nbf", PASS, "already valid"))
    return rows


def _claim_checks(payload: dict[str, Any], cfg: VerifierConfig) -> list[Check]:
    rows = []
    aud = payload.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if cfg.audience in auds:
        rows.append(Check("aud", PASS, f"{cfg.audience}"))
    else:
        rows.append(Check("aud", FAIL, f"{aud!r} is not {cfg.audience!r}"))
    iss, want = payload.get("iss"), cfg.expected_issuer
    if not want:
        rows.append(Check("iss", SKIP, f"{iss!r}; no issuer configured, pass --issuer to check it"))
    elif iss == want:
        rows.append(Check("iss", PASS, want))
    else:
        rows.append(Check("iss", FAIL, f"{iss!r} is not {want!r}"))
    sub = payload.get("sub")
    if isinstance(sub, str) and sub.strip():
        rows.append(Check("sub", PASS, sub))
    else:
        rows.append(Check("sub", FAIL, "missing: not a user's access token"))
    role = payload.get("role")
    if role in NOT_USER_ROLES:
        rows.append(Check("role", FAIL, f"'{role}' API key, not a user's access token"))
    else:
        anonymous = " (anonymous sign-in)" if payload.get("is_anonymous") else ""
        rows.append(Check("role", PASS, f"{role or 'not set'}{anonymous}"))
    return rows


def check_token(token: str, cfg: VerifierConfig, *, now: float | None = None,
                fetch: Callable[[str], Any] = fetch_jwks_blocking) -> list[Check]:
    """One Check per row of ROWS (rows after a fatal failure are skipped), plus a 'verifier' row
    if the strict verifier disagrees with an all-pass report."""
    at = time.time() if now is None else now
    verifier = Verifier(cfg, fetch=fetch, wall_clock=lambda: at)
    rows: list[Check] = []

    def stop(name: str, detail: str) -> list[Check]:
        rows.append(Check(name, FAIL, detail))
        rows.extend(Check(r, SKIP, "not checked: an earlier check failed") for r in ROWS[len(rows):])
        return rows

    try:
        header = read_header(token, cfg)
    except TokenError as err:
        return stop("header", err.reason)
    alg = header["alg"]
    rows.append(Check("header", PASS, f"alg={alg} kid={header.get('kid') or '-'}"))
    try:
        if alg in SYMMETRIC_ALGS:
            key = select_key(header, cfg, None)
            rows.append(Check("key source", PASS, "jwt_secret (HS256, raw UTF-8 bytes)"))
        else:
            assert verifier.jwks is not None
            kid = header.get("kid")
            if not isinstance(kid, str):
                return stop("key source", f"{alg} token without a key id (kid)")
            key = select_key(header, cfg, verifier.jwks.get(kid, fetch))
            rows.append(Check("key source", PASS, f"jwks ({alg}) kid={kid} from {mask_url(cfg.jwks_url)}"))
    except (TokenError, KeySourceError) as err:
        return stop("key source", f"{key_source(alg)}: {err}")
    try:
        payload = jwt.decode(token, key, algorithms=[alg], options={
            "verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False,
            "verify_iss": False})
    except jwt.PyJWTError as err:
        return stop("signature", str(err) or type(err).__name__)
    rows.append(Check("signature", PASS, "valid"))
    rows += _time_checks(payload, at, cfg.leeway)
    rows += _claim_checks(payload, cfg)
    if all(r.status != FAIL for r in rows):
        try:
            verifier.verify(token)
        except (TokenError, KeySourceError) as err:
            rows.append(Check("verifier", FAIL, str(err)))
    return rows


def mint_hs256(cfg: VerifierConfig, sub: str, *, ttl: int = 300, now: float | None = None) -> str:
    """A short-lived user token signed with the legacy HS256 secret, shaped like Supabase Auth's."""
    if not cfg.jwt_secret:
        why = ("the project signs with asymmetric keys only (jwks_url, no jwt_secret): only Supabase Auth "
               "can issue its tokens; sign a test user in and pass --token") if cfg.jwks_url else \
            "no jwt_secret configured; pass --jwt-secret or set [supabase] jwt_secret"
        raise UsageError(f"cannot mint: {why}")
    try:
        uuid.UUID(sub)
    except ValueError:
        raise UsageError(f"--sub {sub!r} is not a UUID (Supabase user ids are UUIDs)") from None
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "aud": cfg.audience, "role": "authenticated", "iat": issued,
                              "exp": issued + ttl, "aal": "aal1", "is_anonymous": False,
                              "session_id": str(uuid.uuid4())}
    if cfg.expected_issuer:
        claims["iss"] = cfg.expected_issuer
    return jwt.encode(claims, cfg.jwt_secret.encode("utf-8"), algorithm="HS256")
