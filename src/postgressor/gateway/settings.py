"""What the gateway needs, resolved from postgressor.toml, the environment and CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.gateway.params import TableRule, origin_problem
from postgressor.jwt_verify import VerifierConfig, config_problem

SECRET_ENV = "ELECTRIC_SECRET"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True)
class GatewaySettings:
    upstream: str
    secret: str = field(repr=False)
    tables: dict[str, TableRule]
    verifier: VerifierConfig = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 3001
    max_body: int = 64 * 1024  # bytes accepted in a POST subset request
    cors_origins: tuple[str, ...] = ()  # exact browser origins answered with CORS headers
    shared_cache: bool = False  # keep Electric's public cache-control instead of making it private
    max_requests_per_user: int = 64  # concurrent requests per token sub; more get 429
    upstream_connect_timeout: float = 5.0  # seconds to connect to Electric (and to get a pooled connection)
    upstream_read_timeout: float = 45.0  # seconds without a byte from Electric (its long-poll is ~20 s)
    jwks_timeout: float = 5.0  # seconds for one JWKS fetch

    def __post_init__(self) -> None:
        for origin in self.cors_origins:
            problem = origin_problem(origin)
            if problem:
                raise ValueError(problem)
        if self.max_requests_per_user < 1:
            raise ValueError("max_requests_per_user must be at least 1")


def verifier_config(settings: Settings) -> VerifierConfig:
    sb = settings.supabase
    secret = sb.jwt_secret.get_secret_value() if sb.jwt_secret else None
    return VerifierConfig(
        jwt_secret=secret or None,
        jwks_url=sb.jwks_url,
        issuer=sb.issuer,
        audience=sb.audience or "authenticated",
    )


def check_upstream(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"upstream {url!r} is not an http(s) URL; e.g. --upstream http://127.0.0.1:3000")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            "upstream must be a plain base URL (no query, credentials or fragment); "
            "the Electric secret comes from ELECTRIC_SECRET"
        )
    return url.rstrip("/")


def table_rules(settings: Settings) -> dict[str, TableRule]:
    rules: dict[str, TableRule] = {}
    for table in settings.sync.tables:
        if table.name in rules:
            raise UsageError(f"[[sync.tables]] lists {table.name!r} twice; keep one entry")
        try:
            rules[table.name] = TableRule(table.name, table.owner_column, tuple(table.columns), table.where)
        except ValueError as err:
            raise UsageError(f"[[sync.tables]]: {err}") from None
    if not rules:
        raise UsageError("no tables to serve: add a [[sync.tables]] entry (name, owner_column) to the config")
    return rules


def resolve(
    settings: Settings,
    *,
    upstream: str | None = None,
    host: str | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> GatewaySettings:
    """Everything ``gateway serve`` runs with, or UsageError naming the one thing to fix."""
    environ = os.environ if env is None else env
    gw = settings.gateway
    secret = environ.get(SECRET_ENV) or (gw.electric_secret.get_secret_value() if gw.electric_secret else "")
    if not secret:
        raise UsageError(
            f"no Electric secret: set the {SECRET_ENV} environment variable "
            "(or [gateway] electric_secret via POSTGRESSOR_GATEWAY__ELECTRIC_SECRET)"
        )
    verifier = verifier_config(settings)
    problem = config_problem(verifier)
    if problem:
        raise UsageError(problem)
    if not verifier.expected_issuer:
        raise UsageError("no token issuer: set [supabase] issuer (https://<ref>.supabase.co/auth/v1)")
    return GatewaySettings(
        upstream=check_upstream(upstream or gw.upstream),
        secret=secret,
        tables=table_rules(settings),
        verifier=verifier,
        host=host or gw.listen,
        port=port if port is not None else gw.port,
        cors_origins=tuple(gw.cors_origins),
        shared_cache=gw.shared_cache,
        max_requests_per_user=gw.max_requests_per_user,
        upstream_connect_timeout=gw.upstream_connect_timeout,
        upstream_read_timeout=gw.upstream_read_timeout,
    )
