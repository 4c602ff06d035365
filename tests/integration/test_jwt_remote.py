"""verify-jwt's remote checks against real servers on loopback: the gateway behind a real TLS listener
(a CA made here, root -> intermediate -> leaf, like Caddy's `tls internal`), the Electric stand-in, and a
throwaway PostgreSQL cluster migrated with the real runner. The last tests drive the CLI end to end
through a paramiko SSH server playing the box (password file, Caddy's root certificate, curl)."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paramiko
import pytest
from aiohttp import web
from conftest import APP_PASSWORD, APP_ROLE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fakebox import FakeBox, serve
from pgcluster import Cluster
from typer.testing import CliRunner

from postgressor.checks.stack_tokens import (
    CADDY_ROOT_CERT,
    GatewayTarget,
    RemoteCheck,
    RemoteTarget,
    run_remote,
    tls_for_ca,
)
from postgressor.cli import app
from postgressor.config import SyncTable
from postgressor.gateway.app import Gateway
from postgressor.gateway.params import TableRule
from postgressor.gateway.settings import GatewaySettings
from postgressor.jwt_verify import VerifierConfig
from postgressor.migrations import runner
from postgressor.remote.ssh import generate_keypair
from postgressor.state import HostRecord, open_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from electric_standin import ElectricStandin, ServerThread
from jwt_keys import ISSUER, OTHER_USER, SECRET, USER, es256, hs256, keys, user_claims

ELECTRIC_SECRET = "electric-shared-secret-for-remote-tests-0123"
TABLE = SyncTable(name="notes", owner_column="user_id")
NOTES_SQL = ("CREATE TABLE notes (id bigserial PRIMARY KEY, user_id uuid NOT NULL, body text NOT NULL);\n"
             "GRANT SELECT ON notes TO authenticated;\n")
CFG = VerifierConfig(jwt_secret=SECRET, issuer=ISSUER)


# --- a CA like Caddy's internal one --------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          ca: bool, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=12))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName(sans or []), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class CA:
    root_pem: str
    server: ssl.SSLContext  # serves leaf + intermediate, like Caddy


def make_ca(tmp: Path, label: str) -> CA:
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(f"{label} Root", root_key, None, ca=True)
    inter = _cert(f"{label} Intermediate", inter_key, (f"{label} Root", root_key), ca=True)
    leaf = _cert("127.0.0.1", leaf_key, (f"{label} Intermediate", inter_key), ca=False,
                 sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    chain, key = tmp / f"{label}-chain.pem", tmp / f"{label}-key.pem"
    chain.write_text(_pem(leaf) + _pem(inter))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(chain, key)
    return CA(_pem(root), server)


def serve_tls(servers: ServerThread, application: web.Application, context: ssl.SSLContext) -> str:
    """Serve on 127.0.0.1 over TLS; the runner joins the ServerThread's, so servers.close() stops it."""
    async def start() -> int:
        app_runner = web.AppRunner(application, access_log=None)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        servers._runners.append(app_runner)
        return int(app_runner.addresses[0][1])

    return f"https://127.0.0.1:{servers.run(start())}"


# --- fixtures ------------------------------------------------------------------------------------


@dataclass
class Env:
    servers: ServerThread
    standin: ElectricStandin
    upstream: str
    gateway: str  # https://127.0.0.1:<port>
    ca: CA
    tmp: Path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    servers = ServerThread()
    try:
        standin = ElectricStandin(jwks=keys().jwks())
        upstream = servers.serve(standin.app(), access_log=None)
        standin.rows['"notes"'] = [{"id": "1", "user_id": USER, "_version": 1},
                                   {"id": "2", "user_id": OTHER_USER, "_version": 2}]
        settings = GatewaySettings(
            upstream=upstream, secret=ELECTRIC_SECRET, tables={"notes": TableRule("notes", "user_id")},
            verifier=VerifierConfig(jwt_secret=SECRET, jwks_url=upstream + "/auth/v1/.well-known/jwks.json",
                                    issuer=ISSUER))
        ca = make_ca(tmp_path, "box")
        gateway = serve_tls(servers, Gateway(settings).make_app(), ca.server)
        yield Env(servers, standin, upstream, gateway, ca, tmp_path)
    finally:
        servers.close()


@pytest.fixture
def notes_db(pg_cluster: Cluster, app_db: str, tmp_path: Path) -> str:
    """The app database migrated by the real runner (forced owner RLS on notes), seeded as superuser."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_notes.sql").write_text(NOTES_SQL)
    with pg_cluster.connect(app_db, APP_ROLE, APP_PASSWORD) as conn:
        runner.run(conn, runner.all_migrations(folder, required=True), [TABLE])
    with pg_cluster.connect(app_db) as su:
        su.execute(f'GRANT authenticated TO "{APP_ROLE}"')  # as the box deploy does
        su.execute("INSERT INTO notes (user_id, body) VALUES (%s, 'a1'), (%s, 'a2'), (%s, 'b1')",
                   [USER, USER, OTHER_USER])
    return app_db


def db_factory(pg: Cluster, db: str):
    @contextlib.contextmanager
    def connect() -> Iterator:
        with pg.connect(db, APP_ROLE, APP_PASSWORD) as conn:
            yield conn
    return connect


def health_over_http(url: str):
    return lambda: httpx.get(url + "/v1/health", timeout=10).status_code


def target(env: Env, pg: Cluster, db: str, gateway: str | None = None, ca_pem: str | None = None,
           health=None) -> RemoteTarget:
    tls = tls_for_ca(ca_pem or env.ca.root_pem)
    return RemoteTarget(tables=[TABLE], gateway=GatewayTarget(gateway or env.gateway, tls, "test CA"),
                        connect_db=db_factory(pg, db), electric_health=health or health_over_http(env.upstream))


def by_name(rows: list[RemoteCheck]) -> dict[str, RemoteCheck]:
    return {r.name: r for r in rows}


def statuses(rows: list[RemoteCheck]) -> dict[str, str]:
    return {r.name: r.status for r in rows}


ALL_ROWS = ["gateway https", "gateway token", "gateway tampered", "gateway expired", "gateway no token",
            "postgres jwt.claims", "postgres electric.user_id", "postgres rls notes", "postgres isolation notes",
            "electric health"]


# --- the checks ----------------------------------------------------------------------------------


def test_a_healthy_box_passes_every_remote_check(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    token = hs256(user_claims())
    rows = run_remote(target(env, pg_cluster, notes_db), token, CFG, token_ok=True)
    assert [r.name for r in rows] == ALL_ROWS
    assert statuses(rows) == dict.fromkeys(ALL_ROWS, "pass"), [r for r in rows if r.status != "pass"]
    got = by_name(rows)
    assert got["gateway token"].data["rows"] == 1 and got["gateway token"].data["foreign_rows"] == 0
    assert got["postgres isolation notes"].data == {"role": "authenticated", "own_rows": 2, "other_rows": 0}
    assert got["gateway tampered"].data["code"] == "token_invalid"
    assert got["gateway expired"].data["code"] == "token_expired"
    assert got["gateway no token"].data["code"] == "token_missing"
    # the gateway really forwarded the accepted request, pinned to the token's sub
    assert [r.param("params[1]") for r in env.standin.received] == [USER]
    assert not any(token in r.detail for r in rows)


def test_another_users_token_sees_only_its_rows(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), hs256(user_claims(sub=OTHER_USER)), CFG, True))
    assert rows["postgres isolation notes"].data == {"role": "authenticated", "own_rows": 1, "other_rows": 0}
    assert rows["postgres jwt.claims"].data["current_user_id"] == OTHER_USER


def test_rls_not_forced_fails_the_rls_row(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    with pg_cluster.connect(notes_db, APP_ROLE, APP_PASSWORD) as conn:
        conn.execute("ALTER TABLE notes NO FORCE ROW LEVEL SECURITY")
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), hs256(user_claims()), CFG, True))
    assert rows["postgres rls notes"].status == "fail"
    assert "not forced" in rows["postgres rls notes"].detail
    assert rows["postgres rls notes"].data == {"enabled": True, "forced": False}
    assert rows["gateway token"].status == "pass"


def test_rls_disabled_shows_other_users_rows(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    with pg_cluster.connect(notes_db, APP_ROLE, APP_PASSWORD) as conn:
        conn.execute("ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), hs256(user_claims()), CFG, True))
    assert rows["postgres rls notes"].status == "fail"
    isolation = rows["postgres isolation notes"]
    assert isolation.status == "fail" and isolation.data["other_rows"] == 1 and isolation.data["own_rows"] == 2


def test_without_the_authenticated_grant_counts_as_the_owner_under_forced_rls(
        env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    with pg_cluster.connect(notes_db) as su:
        su.execute("REVOKE SELECT ON notes FROM authenticated")
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), hs256(user_claims()), CFG, True))
    isolation = rows["postgres isolation notes"]
    assert isolation.status == "pass" and isolation.data["role"].startswith(APP_ROLE)
    assert (isolation.data["own_rows"], isolation.data["other_rows"]) == (2, 0)


def test_current_user_id_missing_is_a_failure_with_the_fix(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    with pg_cluster.connect(notes_db) as su:
        su.execute("ALTER FUNCTION public.current_user_id() RENAME TO current_user_id_gone")
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), hs256(user_claims()), CFG, True))
    assert rows["postgres jwt.claims"].status == "fail" and "postgressor migrate" in rows["postgres jwt.claims"].detail


def broken_gateway() -> web.Application:
    """Forwards anything that carries *some* bearer token: it never verifies signatures or exp."""
    async def shape(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"code": "token_missing", "message": "x"}}, status=401)
        return web.json_response([{"headers": {"control": "up-to-date"}}],
                                 headers={"electric-handle": "h", "electric-offset": "0_0"})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    application = web.Application()
    application.router.add_get("/health", health)
    application.router.add_get("/v1/shape/{table}", shape)
    return application


def test_a_gateway_that_accepts_tampered_tokens_fails(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    broken = serve_tls(env.servers, broken_gateway(), env.ca.server)
    rows = by_name(run_remote(target(env, pg_cluster, notes_db, gateway=broken), hs256(user_claims()), CFG, True))
    assert rows["gateway token"].status == "pass"
    assert rows["gateway tampered"].status == "fail" and "ACCEPTED" in rows["gateway tampered"].detail
    assert rows["gateway expired"].status == "fail"
    assert rows["gateway no token"].status == "pass"


def test_electric_not_ready_fails(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    rows = by_name(run_remote(target(env, pg_cluster, notes_db, health=lambda: 202), hs256(user_claims()), CFG,
                              True))
    assert rows["electric health"].status == "fail" and "202" in rows["electric health"].detail
    assert rows["electric health"].data == {"status": 202}


def test_tls_pinned_to_another_ca_fails_and_skips_the_rest(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    other = make_ca(env.tmp, "other")
    rows = run_remote(target(env, pg_cluster, notes_db, ca_pem=other.root_pem), hs256(user_claims()), CFG, True)
    got = by_name(rows)
    assert got["gateway https"].status == "fail" and "TLS verification failed" in got["gateway https"].detail
    assert {got[n].status for n in ALL_ROWS[1:5]} == {"skip"}
    assert env.standin.received == []


def test_es256_token_skips_the_expired_row_with_the_reason(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    cfg = VerifierConfig(jwks_url=env.upstream + "/auth/v1/.well-known/jwks.json", issuer=ISSUER)
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), es256(user_claims()), cfg, True))
    assert rows["gateway token"].status == "pass"
    assert rows["gateway expired"].status == "skip" and "ES256" in rows["gateway expired"].detail
    assert rows["gateway tampered"].status == "pass"


def test_a_token_that_failed_locally_is_not_used_remotely(env: Env, pg_cluster: Cluster, notes_db: str) -> None:
    rows = by_name(run_remote(target(env, pg_cluster, notes_db), hs256(user_claims()), CFG, token_ok=False))
    assert rows["gateway token"].status == "skip" and rows["postgres"].status == "skip"
    assert rows["gateway tampered"].status == "pass" and rows["electric health"].status == "pass"
    assert env.standin.received == []


# --- the CLI through an SSH server playing the box -----------------------------------------------


class SyncBox(FakeBox):
    """FakeBox that also answers the Electric health curl."""

    health = "200"

    def run_exec(self, channel: paramiko.Channel) -> None:
        event, box = self.exec_ready[channel.get_id()]
        if event.wait(10) and box[0].startswith("curl "):
            self.commands.append(box[0])
            channel.sendall(self.health.encode())
            channel.send_exit_status(0)
            channel.close()
            return
        super().run_exec(channel)


@pytest.fixture
def cli_stack(env: Env, pg_cluster: Cluster, notes_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key_path = tmp_path / "id_ed25519"
    generate_keypair(key_path, "test")
    host_key = paramiko.RSAKey.generate(2048)
    files = {f"/etc/postgressor/secrets/{APP_ROLE}.password": APP_PASSWORD + "\n", CADDY_ROOT_CERT: env.ca.root_pem}
    box = SyncBox(paramiko.Ed25519Key.from_private_key_file(str(key_path)), files, pg_cluster.port)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(listener, host_key, box, stop), daemon=True)
    thread.start()
    ssh_port = listener.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    for name in ("POSTGRESSOR_TOKEN", "POSTGRESSOR_SUPABASE__JWT_SECRET", "CI"):
        monkeypatch.delenv(name, raising=False)
    state = open_state(tmp_path / "state", "edge", "local")
    state.add("vm", "edge", disk="none", ports={"22": ssh_port, "443": int(env.gateway.rsplit(":", 1)[1])})
    state.set_host(HostRecord("127.0.0.1", ssh_port, "root", str(key_path),
                              f"{host_key.get_name()} {host_key.get_base64()}"))
    (tmp_path / "postgressor.toml").write_text(
        f'state_dir = "state"\n[postgres]\ndatabase = "{notes_db}"\nowner = "{APP_ROLE}"\n'
        f'[supabase]\nissuer = "{ISSUER}"\njwt_secret = "{SECRET}"\n'
        '[[sync.tables]]\nname = "notes"\nowner_column = "user_id"\n')
    yield box
    stop.set()
    listener.close()
    thread.join(timeout=5)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_against_the_stack_passes_and_prints_no_secrets(cli_stack: SyncBox) -> None:
    code, out, err = cli("--json", "verify-jwt", "--stack", "edge", "--mint", "--sub", USER)
    assert code == 0, (out, err)
    data = json.loads(out)
    assert data["ok"] is True and data["stack"] == "edge" and data["minted"] is True
    names = [c["name"] for c in data["checks"]]
    assert names[:10] == ["header", "key source", "signature", "exp", "iat", "nbf", "aud", "iss", "sub", "role"]
    assert names[10:] == ALL_ROWS
    assert {c["status"] for c in data["checks"]} == {"pass"}
    assert "Caddy's internal root" in data["checks"][10]["detail"]
    assert SECRET not in out + err and APP_PASSWORD not in out + err
    assert any(c.startswith("curl ") for c in cli_stack.commands)
    assert f"cat {CADDY_ROOT_CERT}" in cli_stack.commands


def test_cli_table_output_and_failures_exit_1(cli_stack: SyncBox, env: Env) -> None:
    cli_stack.health = "202"
    code, out, _ = cli("verify-jwt", "--stack", "edge", "--mint", "--sub", USER)
    assert code == 1 and "stack 'edge': failed electric health" in " ".join(out.split())
    cli_stack.health = "200"
    cli_stack.files[CADDY_ROOT_CERT] = make_ca(env.tmp, "wrong").root_pem
    code, out, _ = cli("--json", "verify-jwt", "--stack", "edge", "--mint", "--sub", USER)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and "TLS verification failed" in checks["gateway https"]["detail"]
    assert checks["postgres isolation notes"]["status"] == "pass"


def test_cli_box_without_caddy_root_fails_the_gateway_rows(cli_stack: SyncBox) -> None:
    del cli_stack.files[CADDY_ROOT_CERT]
    code, out, _ = cli("--json", "verify-jwt", "--stack", "edge", "--mint", "--sub", USER)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and "cannot read Caddy's root certificate" in checks["gateway https"]["detail"]
    assert "postgressor deploy" in checks["gateway https"]["detail"]


def test_cli_unknown_stack_is_a_usage_error(cli_stack: SyncBox) -> None:
    code, out, err = cli("verify-jwt", "--stack", "nope", "--mint", "--sub", USER)
    assert code == 2 and out == "" and "--offline" in err and "Traceback" not in err


def test_cli_garbage_token_fails_without_a_traceback(cli_stack: SyncBox) -> None:
    code, out, err = cli("--json", "verify-jwt", "--stack", "edge", "--token", "not-a-jwt")
    checks = {c["name"]: c["status"] for c in json.loads(out)["checks"]}
    assert code == 1 and "Traceback" not in err
    assert checks["header"] == "fail" and checks["gateway tampered"] == "skip" and checks["postgres"] == "skip"
    assert checks["gateway no token"] == "pass" and checks["electric health"] == "pass"
