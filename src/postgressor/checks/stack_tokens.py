"""The remote checks behind ``postgressor verify-jwt --stack``: the deployed gateway, Postgres and Electric.

Everything remote is reached through an injectable ``RemoteTarget`` (a gateway base URL with its TLS
context, a database connection factory, an Electric health fetcher), so the checks run the same against
a real box and against loopback stand-ins. Nothing here prints or returns the token, secrets or passwords.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shlex
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import psycopg
from psycopg import sql

from postgressor.box.layout import CADDY_STORAGE, electric_health_url
from postgressor.checks.tokens import FAIL, PASS, SKIP
from postgressor.config import Settings, SyncTable
from postgressor.errors import PostgressorError, UsageError
from postgressor.jwt_verify import SYMMETRIC_ALGS, VerifierConfig
from postgressor.migrations.policies import parse_table_name
from postgressor.remote import database, ssh
from postgressor.state import HostRecord, StackState, require_state

CADDY_ROOT_CERT = f"{CADDY_STORAGE}/pki/authorities/local/root.crt"
ELECTRIC_HEADERS = ("electric-handle", "electric-offset")
ELECTRIC_HEALTH_CMD = f"curl -s -o /dev/null -m 10 -w %{{http_code}} {electric_health_url()}"
HTTP_TIMEOUT = 20.0
SUPABASE_ROLE = "authenticated"


@dataclass(frozen=True)
class RemoteCheck:
    name: str
    status: str  # pass, fail or skip
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "data": self.data}


@dataclass(frozen=True)
class GatewayTarget:
    """The box's public HTTPS endpoint. ``tls`` is always a verifying context (never verify=False)."""

    base_url: str
    tls: ssl.SSLContext
    trust: str  # how the certificate is checked, for the report
    problem: str = ""  # set when the target could not be prepared (e.g. the CA could not be fetched)


DBFactory = Callable[[], AbstractContextManager[psycopg.Connection]]


@dataclass
class RemoteTarget:
    tables: list[SyncTable]
    gateway: GatewayTarget | None  # None: sync is not deployed on this stack
    connect_db: DBFactory
    electric_health: Callable[[], int] | None  # None: sync is not deployed


# --- TLS -----------------------------------------------------------------------------------------


def tls_for_ca(ca_pem: str) -> ssl.SSLContext:
    """A context that trusts only ``ca_pem`` (Caddy's internal root), with hostname checking on."""
    try:
        context = ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as err:
        raise PostgressorError(f"the CA certificate is not a PEM certificate ({err})") from None
    return context


def tls_public() -> ssl.SSLContext:
    """The system's trust store: a public certificate for a configured domain."""
    return ssl.create_default_context()


def ca_fingerprint(ca_pem: str) -> str:
    body = "".join(line for line in ca_pem.strip().splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body)
    except ValueError:
        der = ca_pem.encode()
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


# --- the token's variants ---------------------------------------------------------------------


def _payload(token: str) -> dict[str, Any]:
    """The (already verified) token's claims."""
    data: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return data


def tampered_copy(token: str) -> str | None:
    """Same header and signature, another user's sub: a gateway that accepts it trusts unsigned data.
    None when the token is not a readable JWT."""
    try:
        head, body, sig = token.split(".")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    payload["sub"] = str(uuid.uuid4())
    raw = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def expired_copy(token: str, cfg: VerifierConfig, now: float | None = None) -> str | None:
    """The same claims, expired an hour ago, signed with the HS256 secret; None when we cannot sign."""
    header = jwt.get_unverified_header(token)
    if header.get("alg") not in SYMMETRIC_ALGS or not cfg.jwt_secret:
        return None
    at = int(time.time() if now is None else now)
    claims = {**_payload(token), "iat": at - 7200, "exp": at - 3600}
    headers = {k: v for k, v in header.items() if k not in ("alg", "typ")}
    return jwt.encode(claims, cfg.jwt_secret.encode("utf-8"), algorithm="HS256", headers=headers or None)


def expired_skip_reason(token: str, cfg: VerifierConfig) -> str:
    alg = jwt.get_unverified_header(token).get("alg")
    if alg not in SYMMETRIC_ALGS:
        return f"cannot sign an expired copy of an {alg} token (only Supabase Auth holds the private key)"
    return "cannot sign an expired copy: no jwt_secret configured (set [supabase] jwt_secret or pass --jwt-secret)"


# --- gateway -----------------------------------------------------------------------------------


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:240]


def _http_error(err: httpx.HTTPError) -> str:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS verification failed: {cause.verify_message or _short(cause)}"
        cause = cause.__cause__ or cause.__context__
    return f"{type(err).__name__}: {_short(err)}"


def shape_path(table: str) -> str:
    return f"/v1/shape/{quote(table, safe='')}?offset=-1"


def _owner_mismatches(response: httpx.Response, owner_column: str, sub: str) -> tuple[int, int]:
    """(rows returned, rows whose owner column is present and is not ``sub``)."""
    try:
        messages = response.json()
    except ValueError:
        return 0, 0
    rows = [m["value"] for m in messages if isinstance(m, dict) and isinstance(m.get("value"), dict)] \
        if isinstance(messages, list) else []
    foreign = sum(1 for r in rows if owner_column in r and str(r[owner_column]) != sub)
    return len(rows), foreign


def gateway_checks(target: GatewayTarget, table: SyncTable, token: str, sub: str | None,
                   cfg: VerifierConfig) -> list[RemoteCheck]:
    """HTTPS reachability, then the token accepted and its tampered/expired/missing variants refused."""
    names = ("gateway https", "gateway token", "gateway tampered", "gateway expired", "gateway no token")
    if target.problem:
        return [RemoteCheck(names[0], FAIL, target.problem)] + [
            RemoteCheck(n, SKIP, "not checked: the gateway cannot be reached") for n in names[1:]]
    rows: list[RemoteCheck] = []
    url = target.base_url.rstrip("/")
    path = shape_path(table.name)
    with httpx.Client(verify=target.tls, timeout=HTTP_TIMEOUT, follow_redirects=False) as client:

        def get(request_path: str, bearer: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
            return client.get(url + request_path, headers=headers)

        try:
            health = get("/health", None)
        except httpx.HTTPError as err:
            rows.append(RemoteCheck(names[0], FAIL, f"{url}: {_http_error(err)}", {"url": url}))
            return rows + [RemoteCheck(n, SKIP, "not checked: the gateway cannot be reached") for n in names[1:]]
        status = PASS if health.status_code == 200 else FAIL
        rows.append(RemoteCheck(names[0], status, f"{url}/health → {health.status_code}; TLS {target.trust}",
                                {"url": url, "status": health.status_code}))

        def refused(name: str, bearer: str | None, what: str) -> RemoteCheck:
            try:
                response = get(path, bearer)
            except httpx.HTTPError as err:
                return RemoteCheck(name, FAIL, f"{what}: {_http_error(err)}")
            code = _error_code(response)
            data = {"status": response.status_code, "code": code}
            if response.status_code == 401:
                return RemoteCheck(name, PASS, f"{what} refused: 401 {code}".rstrip(), data)
            if response.status_code < 300:
                return RemoteCheck(name, FAIL, f"{what} ACCEPTED ({response.status_code}): the gateway "
                                               "serves requests it must refuse", data)
            return RemoteCheck(name, FAIL, f"{what}: expected 401, got {response.status_code} {code}".rstrip(),
                               data)

        if sub is None:
            rows.append(RemoteCheck(names[1], SKIP, "not checked: the token failed the local checks"))
        else:
            try:
                response = get(path, token)
                rows.append(_accepted(response, table, sub, path))
            except httpx.HTTPError as err:
                rows.append(RemoteCheck(names[1], FAIL, f"GET {path}: {_http_error(err)}"))
        tampered = tampered_copy(token)
        if tampered is None:
            rows.append(RemoteCheck(names[2], SKIP, "not checked: the token is not a readable JWT"))
        else:
            rows.append(refused(names[2], tampered, "tampered copy (another sub, same signature)"))
        expired = expired_copy(token, cfg) if sub is not None else None
        if expired is None:
            reason = expired_skip_reason(token, cfg) if sub is not None else \
                "not checked: the token failed the local checks"
            rows.append(RemoteCheck(names[3], SKIP, reason))
        else:
            rows.append(refused(names[3], expired, "expired copy (exp one hour ago)"))
        rows.append(refused(names[4], None, "request without a token"))
    return rows


def _error_code(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("code", "")) if isinstance(error, dict) else ""
    except (ValueError, AttributeError):
        return ""


def _accepted(response: httpx.Response, table: SyncTable, sub: str, path: str) -> RemoteCheck:
    name = "gateway token"
    missing = [h for h in ELECTRIC_HEADERS if h not in response.headers]
    data: dict[str, Any] = {"table": table.name, "status": response.status_code}
    if response.status_code != 200:
        code = _error_code(response)
        return RemoteCheck(name, FAIL, f"GET {path} → {response.status_code} {code}".rstrip(), data)
    if missing:
        return RemoteCheck(name, FAIL, f"GET {path} → 200 but without {', '.join(missing)} (not Electric?)", data)
    total, foreign = _owner_mismatches(response, table.owner_column, sub)
    data.update({"rows": total, "foreign_rows": foreign, "electric_handle": response.headers["electric-handle"]})
    if foreign:
        return RemoteCheck(name, FAIL, f"GET {path} → 200 with {foreign} of {total} rows owned by another user",
                           data)
    return RemoteCheck(name, PASS, f"GET {path} → 200, electric-handle and electric-offset present, "
                                   f"{total} rows, all the caller's", data)


# --- Postgres ----------------------------------------------------------------------------------


def _set_identity(conn: psycopg.Connection, claims_json: str, electric_user: str) -> None:
    conn.execute("SELECT pg_catalog.set_config('request.jwt.claims', %s, true), "
                 "pg_catalog.set_config('electric.user_id', %s, true)", [claims_json, electric_user])


def _current_user_id(conn: psycopg.Connection, claims_json: str, electric_user: str) -> str | None:
    with conn.transaction(force_rollback=True):
        _set_identity(conn, claims_json, electric_user)
        row = conn.execute("SELECT public.current_user_id()").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _db_error(err: psycopg.Error) -> str:
    diag = err.diag.message_primary if err.diag and err.diag.message_primary else _short(err)
    if isinstance(err, psycopg.errors.UndefinedFunction):
        return f"{diag}; run 'postgressor migrate' (it installs current_user_id())"
    return diag


def postgres_checks(conn: psycopg.Connection, tables: list[SyncTable], sub: str,
                    payload: dict[str, Any]) -> list[RemoteCheck]:
    claims_json = json.dumps(payload, separators=(",", ":"))
    rows: list[RemoteCheck] = []
    for name, claims, electric in (("postgres jwt.claims", claims_json, ""),
                                   ("postgres electric.user_id", "", sub)):
        how = "SET LOCAL request.jwt.claims" if claims else "SET LOCAL electric.user_id"
        try:
            got = _current_user_id(conn, claims, electric)
        except psycopg.Error as err:
            rows.append(RemoteCheck(name, FAIL, f"current_user_id() with {how}: {_db_error(err)}"))
            continue
        if got == sub:
            rows.append(RemoteCheck(name, PASS, f"current_user_id() = sub with {how}", {"current_user_id": got}))
        else:
            rows.append(RemoteCheck(name, FAIL, f"current_user_id() returned {got!r}, not the token's sub "
                                               f"with {how}", {"current_user_id": got}))
    for table in tables:
        rows += _table_checks(conn, table, sub, claims_json)
    return rows


def _table_checks(conn: psycopg.Connection, table: SyncTable, sub: str, claims_json: str) -> list[RemoteCheck]:
    ref = parse_table_name(table.name)
    rls_name, iso_name = f"postgres rls {table.name}", f"postgres isolation {table.name}"
    row = conn.execute(
        "SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        [ref.schema, ref.name]).fetchone()
    if row is None:
        why = f"table {ref} does not exist; run 'postgressor migrate'"
        return [RemoteCheck(rls_name, FAIL, why), RemoteCheck(iso_name, SKIP, "not checked: no table")]
    enabled, forced = bool(row[0]), bool(row[1])
    data = {"enabled": enabled, "forced": forced}
    if enabled and forced:
        rls = RemoteCheck(rls_name, PASS, "row level security enabled and forced", data)
    else:
        missing = " and ".join(w for w, ok in (("enabled", enabled), ("forced", forced)) if not ok)
        rls = RemoteCheck(rls_name, FAIL, f"row level security not {missing}; run 'postgressor migrate'", data)
    try:
        counts = _visible_rows(conn, ref.ident, table.owner_column, sub, claims_json)
    except psycopg.Error as err:
        return [rls, RemoteCheck(iso_name, FAIL, f"cannot count rows: {_db_error(err)}")]
    own, other, role = counts
    figures = {"role": role, "own_rows": own, "other_rows": other}
    detail = f"as {role} with the token's claims: {own} own rows visible, {other} owned by another id"
    return [rls, RemoteCheck(iso_name, PASS if other == 0 else FAIL, detail, figures)]


def _visible_rows(conn: psycopg.Connection, ident: sql.Identifier, owner: str, sub: str,
                  claims_json: str) -> tuple[int, int, str]:
    """(own rows, other rows, role used) visible with the claims set, as ``authenticated`` when the owner
    may act as it and it may read the table, else as the owner itself (subject to RLS only when forced)."""
    query = sql.SQL("SELECT count(*) FILTER (WHERE {col}::text = %(sub)s), "
                    "count(*) FILTER (WHERE {col}::text IS DISTINCT FROM %(sub)s) FROM {table}").format(
        col=sql.Identifier(owner), table=ident)
    with conn.transaction(force_rollback=True):
        _set_identity(conn, claims_json, "")
        exists = conn.execute("SELECT pg_catalog.to_regrole(%s) IS NOT NULL", [SUPABASE_ROLE]).fetchone()
        note = f"{SUPABASE_ROLE} role missing"
        if exists and exists[0]:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(SUPABASE_ROLE)))
                    row = conn.execute(query, {"sub": sub}).fetchone()
                    assert row is not None
                    return int(row[0]), int(row[1]), SUPABASE_ROLE
            except psycopg.errors.InsufficientPrivilege as err:
                note = (err.diag.message_primary or "not permitted").replace('"', "")
        row = conn.execute(query, {"sub": sub}).fetchone()
        assert row is not None
        user = conn.execute("SELECT current_user").fetchone()
        who = f"{user[0] if user else 'owner'} ({note})"
        return int(row[0]), int(row[1]), who


# --- all together ------------------------------------------------------------------------------


def electric_check(fetch: Callable[[], int]) -> RemoteCheck:
    try:
        code = fetch()
    except (PostgressorError, OSError, httpx.HTTPError) as err:
        return RemoteCheck("electric health", FAIL, f"cannot ask Electric: {_short(err)}")
    if code == 200:
        return RemoteCheck("electric health", PASS, "/v1/health → 200 (active)", {"status": code})
    meaning = {202: " (starting or waiting for Postgres)", 0: " (no answer)"}.get(code, "")
    return RemoteCheck("electric health", FAIL, f"/v1/health → {code}{meaning}; see 'postgressor status'",
                       {"status": code})


def run_remote(target: RemoteTarget, token: str, cfg: VerifierConfig, token_ok: bool) -> list[RemoteCheck]:
    """Every remote row. ``token_ok``: the local checks passed (the claims are trustworthy)."""
    payload = _payload(token) if token_ok else {}
    sub = str(payload["sub"]) if token_ok else None
    rows: list[RemoteCheck] = []
    if target.gateway is None or not target.tables:
        rows.append(RemoteCheck("gateway", SKIP, "sync is not deployed on this stack (no [[sync.tables]])"))
    else:
        rows += gateway_checks(target.gateway, target.tables[0], token, sub, cfg)
    if sub is None:
        rows.append(RemoteCheck("postgres", SKIP, "not checked: the token failed the local checks"))
    else:
        try:
            with target.connect_db() as conn:
                rows += postgres_checks(conn, target.tables, sub, payload)
        except PostgressorError as err:
            rows.append(RemoteCheck("postgres", FAIL, str(err)))
        except psycopg.Error as err:
            rows.append(RemoteCheck("postgres", FAIL, _db_error(err)))
    if target.electric_health is None:
        rows.append(RemoteCheck("electric health", SKIP, "sync is not deployed on this stack"))
    else:
        rows.append(electric_check(target.electric_health))
    return rows



# --- the real target, built from a stack ---------------------------------------------------------


def gateway_url(settings: Settings, state: StackState) -> str:
    """``https://<domain>``, or the box's address on 443 (the forwarded port for a local VM)."""
    if settings.https.domain:
        return f"https://{settings.https.domain}"
    assert state.host is not None
    if state.provider == "local":
        vm = state.find("vm")
        ports = vm.details.get("ports", {}) if vm else {}
        port = ports.get("443") or ports.get(443)
        if not port:
            raise UsageError(f"stack '{state.stack}' records no forwarded port for the VM's 443; run "
                             f"'postgressor up --stack {state.stack}' again")
        return f"https://127.0.0.1:{int(port)}"
    address = state.host.address
    return f"https://[{address}]" if ":" in address else f"https://{address}"


def read_caddy_root(host: HostRecord) -> str:
    """Caddy's internal root certificate, read over SSH (the host key is pinned, so the CA is the box's)."""
    result = ssh.run(host, f"cat {shlex.quote(CADDY_ROOT_CERT)}", timeout=60)
    pem = result.stdout.strip()
    if not result.ok or "BEGIN CERTIFICATE" not in pem:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.exit_status}"])[-1]
        raise PostgressorError(f"cannot read Caddy's root certificate {CADDY_ROOT_CERT} on {host.address} "
                               f"({reason}); run 'postgressor deploy' so Caddy issues it")
    return pem + "\n"


def stack_gateway(settings: Settings, state: StackState) -> GatewayTarget:
    url = gateway_url(settings, state)
    if settings.https.domain:
        return GatewayTarget(url, tls_public(), f"verified by the system CAs for {settings.https.domain}")
    assert state.host is not None
    try:
        pem = read_caddy_root(state.host)
        context = tls_for_ca(pem)
    except PostgressorError as err:
        return GatewayTarget(url, tls_public(), "", problem=str(err))
    return GatewayTarget(url, context, f"verified against Caddy's internal root {ca_fingerprint(pem)} "
                                       "(fetched over SSH)")


def ssh_electric_health(host: HostRecord) -> Callable[[], int]:
    def fetch() -> int:
        result = ssh.run(host, ELECTRIC_HEALTH_CMD, timeout=60)
        code = result.stdout.strip()
        if not code.isdigit():
            reason = (result.stderr.strip().splitlines() or [f"exit {result.exit_status}"])[-1]
            raise PostgressorError(f"curl on {host.address} gave no status ({reason}); is curl installed?")
        return int(code)

    return fetch


def remote_target(settings: Settings, stack: str) -> RemoteTarget:
    """The real target: the stack's gateway over HTTPS, its database through the SSH tunnel, Electric's
    health over SSH. Raises UsageError when the stack cannot be checked at all."""
    try:
        state = require_state(settings.state_dir, stack)
    except UsageError as err:
        raise UsageError(f"{err}, or pass --offline for the local token checks only") from None
    assert state.host is not None
    if not Path(state.host.key_path).expanduser().is_file():
        raise UsageError(f"SSH key {state.host.key_path} of stack '{stack}' not found; restore the state "
                         "directory (it holds the stack's key) or pass --offline")
    synced = settings.sync_enabled() and bool(settings.sync.tables)
    host = state.host

    @contextlib.contextmanager
    def connect_db() -> Iterator[psycopg.Connection]:
        with database.stack_target(settings, stack) as target:
            yield target.conn

    return RemoteTarget(
        tables=list(settings.sync.tables),
        gateway=stack_gateway(settings, state) if synced else None,
        connect_db=connect_db,
        electric_health=ssh_electric_health(host) if synced else None,
    )
