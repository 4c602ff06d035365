"""The settings the gateway runs with, and the loader of the small TOML file the deploy writes for it.

The box's gateway reads only this file (``/etc/postgressor/gateway.toml``, 0600), never postgressor.toml:
it imports nothing of the CLI, so the box needs just this package, the verifier and their wheels. The
file is written by ``postgressor.box.gateway_settings`` (with a TOML writer) from postgressor.toml.

File shape (every key is a field of :class:`GatewaySettings`; unknown keys are refused)::

    upstream = "http://127.0.0.1:3000"   # Electric's base URL
    host = "127.0.0.1"
    port = 3001
    max_body = 65536                     # bytes
    cors_origins = ["https://app.example.com"]
    shared_cache = false
    max_requests_per_user = 64
    upstream_connect_timeout = 5.0       # seconds; also upstream_read_timeout, jwks_timeout
    [verifier]                           # jwt_secret, jwks_url, issuer, audience, leeway (seconds)
    [[tables]]                           # name, owner_column, columns, where

The Electric secret is never in the file: it comes from the ``ELECTRIC_SECRET`` environment variable.
Every problem is one line (:class:`SettingsError`) naming the key and how to fix it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from postgressor.gateway.params import TableRule, origin_problem
from postgressor.jwt_verify import VerifierConfig, config_problem
from postgressor.masking import mask_url

if sys.version_info >= (3, 11):  # noqa: UP036 - the box's Python, not the project's
    import tomllib
else:  # the box's python3 may be 3.10 (Ubuntu 22.04): the bundle then ships tomli, the same parser
    import tomli as tomllib

SECRET_ENV = "ELECTRIC_SECRET"  # noqa: S105 - the variable's name, not a secret
FROM_ENV = frozenset({"secret"})  # fields never written to, nor read from, the file
KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
         dict: "a table"}  # fmt: skip


class SettingsError(ValueError):
    """The gateway's settings file or environment is unusable; ``str(err)`` is one line."""

    exit_code = 2


@dataclass(frozen=True)
class GatewaySettings:
    upstream: str  # Electric's base URL, e.g. http://127.0.0.1:3000
    secret: str = field(repr=False)  # Electric's API secret (from ELECTRIC_SECRET)
    tables: dict[str, TableRule]  # keyed by TableRule.name
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


def check_upstream(url: str) -> str:
    """``url`` without a trailing slash, or SettingsError when it is not a plain http(s) base URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"upstream {mask_url(url)!r} is not an http(s) URL; e.g. http://127.0.0.1:3000")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError(
            "upstream must be a plain base URL (no query, credentials or fragment); "
            f"the Electric secret comes from {SECRET_ENV}"
        )
    return url.rstrip("/")


def check(settings: GatewaySettings) -> GatewaySettings:
    """``settings`` if the gateway can serve with them, else SettingsError naming the one thing to fix."""
    if not settings.secret:
        raise SettingsError(f"no Electric secret: set the {SECRET_ENV} environment variable")
    problem = config_problem(settings.verifier)
    if problem:
        raise SettingsError(problem)
    if not settings.verifier.expected_issuer:
        raise SettingsError("no token issuer: set [supabase] issuer (https://<ref>.supabase.co/auth/v1)")
    if not settings.tables:
        raise SettingsError("no tables to serve: add a [[sync.tables]] entry (name, owner_column) to the config")
    if not 1 <= settings.port <= 65535:
        raise SettingsError(f"port {settings.port} is outside 1-65535")
    return dataclasses.replace(settings, upstream=check_upstream(settings.upstream))


# --- the file --------------------------------------------------------------------------------------


def to_document(settings: GatewaySettings) -> dict[str, Any]:
    """The file's content as plain TOML values (lists, tables), without the fields that come from the env."""
    doc = _plain(settings)
    for name in FROM_ENV:
        doc.pop(name, None)
    return doc


def from_document(doc: Mapping[str, Any], env: Mapping[str, str] | None = None) -> GatewaySettings:
    """GatewaySettings from the parsed file plus the environment (ELECTRIC_SECRET), checked."""
    environ = os.environ if env is None else env
    for name in FROM_ENV:
        if name in doc:
            raise SettingsError(f"{name!r} does not belong in the file; set {SECRET_ENV} in the environment")
    values = _typed(GatewaySettings, {**doc, "secret": environ.get(SECRET_ENV, "")}, "")
    return check(values)


def load(path: Path, env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Read and check the gateway's settings file; SettingsError (one line) on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SettingsError(f"{path}: cannot read it: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path}: not valid TOML: {err}") from None
    try:
        return from_document(doc, env)
    except SettingsError as err:
        raise SettingsError(f"{path}: {err}") from None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}  # fmt: skip
    if isinstance(value, dict):  # tables, keyed by name: an array of tables in the file
        return [_plain(v) for v in value.values()]
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _typed(cls: type[Any], doc: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a TOML table, each value checked against its annotation."""
    label = where or "the file"
    if not isinstance(doc, Mapping):
        raise SettingsError(f"{label} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - names)
    if unknown:
        raise SettingsError(f"unknown key {where + '.' if where else ''}{unknown[0]}; "
                            f"known: {', '.join(sorted(names))}")  # fmt: skip
    prefix = f"{where}." if where else ""
    values = {name: _value(hints[name], value, prefix + name) for name, value in doc.items()}
    for f in dataclasses.fields(cls):
        if f.name not in doc and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SettingsError(f"{prefix}{f.name} is missing")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"{label}: {err}") from None


def _value(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: None is "absent" in TOML
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _typed(hint, value, key)
    if origin is dict and args[1] is TableRule:
        if not isinstance(value, list):
            raise SettingsError(f"{key} must be an array of tables ([[{key}]])")
        rules: dict[str, TableRule] = {}
        for i, item in enumerate(value):
            rule = _typed(TableRule, item, f"{key}[{i}]")
            if rule.name in rules:
                raise SettingsError(f"{key} lists {rule.name!r} twice; keep one entry")
            rules[rule.name] = rule
        return rules
    if origin is tuple:
        if not isinstance(value, list):
            raise SettingsError(f"{key} must be an array")
        return tuple(_value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    ok = {
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
    }.get(hint)
    if ok is None:
        raise SettingsError(f"{key} has a type the file cannot hold ({hint})")  # a programming error
    if not ok:
        raise SettingsError(f"{key} must be {KINDS[hint]}, not {KINDS.get(type(value), type(value).__name__)}")
    return float(value) if hint is float else value
