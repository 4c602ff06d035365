"""postgressor.toml → the gateway's own settings, and the TOML file the box's gateway reads.

The gateway (``postgressor.gateway``) never imports the CLI's ``Settings``; this module is the one
place that translates them. The file is written with tomli-w, so any value (quotes, newlines, emoji,
``\"\"\"``) survives the trip; ``postgressor.gateway.settings.load`` reads it back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import tomli_w

from postgressor.box.layout import ELECTRIC_PORT
from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.gateway.params import TableRule
from postgressor.gateway.settings import SECRET_ENV, GatewaySettings, check, to_document
from postgressor.jwt_verify import VerifierConfig

BOX_UPSTREAM = f"http://127.0.0.1:{ELECTRIC_PORT}"  # Electric on the box
BOX_LISTEN = "127.0.0.1"  # Caddy is the only client


def verifier_config(settings: Settings) -> VerifierConfig:
    sb = settings.supabase
    secret = sb.jwt_secret.get_secret_value() if sb.jwt_secret else None
    return VerifierConfig(
        jwt_secret=secret or None,
        jwks_url=sb.jwks_url,
        issuer=sb.issuer,
        audience=sb.audience or "authenticated",
    )


def table_rules(settings: Settings) -> dict[str, TableRule]:
    rules: dict[str, TableRule] = {}
    for table in settings.sync.tables:
        if table.name in rules:
            raise UsageError(f"[[sync.tables]] lists {table.name!r} twice; keep one entry")
        try:
            rules[table.name] = TableRule(table.name, table.owner_column, tuple(table.columns), table.where)
        except ValueError as err:
            raise UsageError(f"[[sync.tables]]: {err}") from None
    return rules


def gateway_settings(settings: Settings, *, upstream: str, host: str, port: int, secret: str) -> GatewaySettings:
    """The gateway's settings from postgressor.toml; UsageError (one line) when they cannot serve."""
    gw = settings.gateway
    try:
        return check(
            GatewaySettings(
                upstream=upstream,
                secret=secret,
                tables=table_rules(settings),
                verifier=verifier_config(settings),
                host=host,
                port=port,
                cors_origins=tuple(gw.cors_origins),
                shared_cache=gw.shared_cache,
                max_requests_per_user=gw.max_requests_per_user,
                upstream_connect_timeout=gw.upstream_connect_timeout,
                upstream_read_timeout=gw.upstream_read_timeout,
            )
        )
    except ValueError as err:  # SettingsError, or a field's own check
        hint = " (or [gateway] electric_secret via POSTGRESSOR_GATEWAY__ELECTRIC_SECRET)" if not secret else ""
        raise UsageError(f"{err}{hint}") from None


def resolve(
    settings: Settings,
    *,
    upstream: str | None = None,
    host: str | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> GatewaySettings:
    """What ``postgressor gateway serve`` runs with: postgressor.toml, the environment and CLI flags."""
    environ = os.environ if env is None else env
    gw = settings.gateway
    secret = environ.get(SECRET_ENV) or (gw.electric_secret.get_secret_value() if gw.electric_secret else "")
    return gateway_settings(
        settings,
        upstream=upstream or gw.upstream,
        host=host or gw.listen,
        port=port if port is not None else gw.port,
        secret=secret,
    )


def box_gateway_toml(settings: Settings) -> str:
    """The box's /etc/postgressor/gateway.toml: the gateway's settings, minus the Electric secret.

    The secret is generated on the box and reaches the gateway through its EnvironmentFile; it is
    never in this file. The file holds the HS256 JWT secret when one is configured (0600 on the box).
    """
    gw = settings.gateway
    # The secret field is checked as present here and dropped by to_document: the box supplies it.
    resolved = gateway_settings(settings, upstream=BOX_UPSTREAM, host=BOX_LISTEN, port=gw.port,
                                secret=f"${SECRET_ENV}")  # fmt: skip
    return gateway_toml(resolved)


def gateway_toml(settings: GatewaySettings) -> str:
    """The gateway's settings file for ``settings`` (without the Electric secret)."""
    header = "# Written by postgressor from postgressor.toml; read by python -m postgressor.gateway.\n"
    return header + tomli_w.dumps(to_document(settings))
