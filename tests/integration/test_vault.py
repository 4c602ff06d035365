"""Supabase Vault as a secrets source (issue #16 item 2), on real PostgreSQL with the stand-in ``vault`` schema
(tests/vault_standin.sql, following supabase/vault sql/supabase_vault--0.3.0.sql): ``vault:NAME`` settings read
through vault.decrypted_secrets, and ``secrets push`` through vault.create_secret/vault.update_secret."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fakebox import running_fake_box
from pgcluster import Cluster, free_port
from typer.testing import CliRunner

from jwt_keys import ISSUER, hs256, user_claims
from postgressor import lifecycle
from postgressor.box.converge import DeployResult
from postgressor.checks.stack_tokens import CADDY_ROOT_CERT
from postgressor.cli import app
from postgressor.state import HostRecord, open_state
from postgressor.vault import client

STANDIN = Path(__file__).resolve().parents[1] / "vault_standin.sql"
# supabase/vault sql/supabase_vault--0.3.0.sql (commit 16f1570), as PostgreSQL prints the signatures back.
VIEW_COLUMNS = ["id", "name", "description", "secret", "decrypted_secret", "key_id", "nonce", "created_at",
                "updated_at"]  # fmt: skip
SIGNATURES = {
    "create_secret": ("new_secret text, new_name text DEFAULT NULL::text, new_description text DEFAULT ''::text, "
                      "new_key_id uuid DEFAULT NULL::uuid", "uuid", True),
    "update_secret": ("secret_id uuid, new_secret text DEFAULT NULL::text, new_name text DEFAULT NULL::text, "
                      "new_description text DEFAULT NULL::text, new_key_id uuid DEFAULT NULL::uuid", "void", True),
}  # fmt: skip


@pytest.fixture
def vault_db(pg_cluster: Cluster) -> Iterator[str]:
    """A database with the stand-in Vault; yields its superuser URL (as Supabase's postgres role)."""
    name = pg_cluster.create_database()
    with pg_cluster.connect(name) as conn:
        conn.execute(STANDIN.read_text())
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


def create(url: str, value: str, name: str, description: str = "") -> None:
    """Positional, as Supabase documents it: select vault.create_secret('value', 'name', 'description')."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT vault.create_secret(%s, %s, %s)", [value, name, description])


def stored(url: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT name, decrypted_secret, description FROM vault.decrypted_secrets").fetchall()
    return {name: (value, description) for name, value, description in rows}


def run(project: Path, args: list[str], url: str | None) -> Result:
    return CliRunner().invoke(app, args, env={client.VAULT_URL: url, "POSTGRESSOR_STACK": None, "CI": None})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def everything_written(project: Path) -> str:
    """Every file under the project (state, keys' directories, ...) as text, for "the value is nowhere"."""
    return "\n".join(p.read_text(errors="replace") for p in project.rglob("*") if p.is_file())


# ---- the stand-in follows the extension -------------------------------------------------------------------


def test_the_standin_has_the_extensions_view_columns_and_function_signatures(vault_db: str) -> None:
    with psycopg.connect(vault_db, autocommit=True) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'vault' "
            "AND table_name = 'decrypted_secrets' ORDER BY ordinal_position").fetchall()]  # fmt: skip
        functions = {name: (args, result, definer) for name, args, result, definer in conn.execute(
            "SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prosecdef "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'vault'").fetchall()}
    assert columns == VIEW_COLUMNS
    assert functions == SIGNATURES


def test_standin_round_trip_as_the_extensions_own_test(vault_db: str, pg_cluster: Cluster) -> None:
    """supabase/vault test/sql/test.sql: create positionally, read the view, update positionally and by name."""
    create(vault_db, "s3kr3t_k3y", "a_name", "this is the foo secret key")
    with psycopg.connect(vault_db, autocommit=True) as conn:
        row = conn.execute("SELECT id, secret, decrypted_secret, description FROM vault.decrypted_secrets "
                           "WHERE name = 'a_name'").fetchone()  # fmt: skip
        assert row is not None and row[2:] == ("s3kr3t_k3y", "this is the foo secret key")
        assert row[1] != "s3kr3t_k3y"  # `secret` is not the value (ciphertext in Supabase; base64 here)
        conn.execute("SELECT vault.update_secret(%s, %s)", [row[0], "fooz"])  # NULL name, description: kept
        assert stored(vault_db)["a_name"] == ("fooz", "this is the foo secret key")
        conn.execute("SELECT vault.update_secret(%s, new_name => 'barz', new_description => 'bazz')", [row[0]])
        assert stored(vault_db) == {"barz": ("fooz", "bazz")}
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("SELECT vault.create_secret('other', 'barz')")
    pg_cluster.ensure_role("no_vault_grant", "no-grant-pw", "NOSUPERUSER")
    dbname = psycopg.conninfo.conninfo_to_dict(vault_db)["dbname"]
    with pg_cluster.connect(str(dbname)) as conn:
        conn.execute("GRANT USAGE ON SCHEMA vault TO no_vault_grant")
    with pg_cluster.connect(str(dbname), "no_vault_grant", "no-grant-pw") as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="function create_secret"):  # fmt: skip
        conn.execute("SELECT vault.create_secret('x', 'y')")  # revoked from PUBLIC, as in the extension


def test_the_client_stores_idempotently(vault_db: str) -> None:
    with client.connect(vault_db) as vault:
        assert client.store_secret(vault, "k", "one", "d") == "created"
        assert client.store_secret(vault, "k", "one", "d") == "unchanged"
        assert client.store_secret(vault, "k", "two", "d2") == "updated"
        assert client.read_secrets(vault, ["k", "absent"]) == {"k": "two"}
    assert stored(vault_db) == {"k": ("two", "d2")}


# ---- vault:NAME settings, through the CLI ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the reference's text as a key
def test_config_check_and_verify_jwt_use_the_value_from_vault_and_show_it_nowhere(
        vault_db: str, project: Path, pg_cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    jwt_secret, cipher = f"jwt-from-vault-{secrets.token_hex(20)}", f"cipher-from-vault-{secrets.token_hex(16)}"
    create(vault_db, jwt_secret, "supabase_jwt_secret")
    create(vault_db, cipher, "pg_cipher")
    (project / "postgressor.toml").write_text(
        f'[supabase]\njwt_secret = "vault:supabase_jwt_secret"\nissuer = "{ISSUER}"\n'
        '[backup]\ncipher_pass = "vault:pg_cipher"\n')  # fmt: skip
    checked = run(project, ["config", "check"], vault_db)
    assert checked.exit_code == 0, checked.output
    assert "supabase.jwt_secret: read from Supabase Vault secret 'supabase_jwt_secret'" in checked.output
    as_json = json.loads(run(project, ["config", "check", "--json"], vault_db).stdout)
    assert as_json["vault"] == {"supabase.jwt_secret": "supabase_jwt_secret", "backup.cipher_pass": "pg_cipher"}
    assert as_json["config"]["supabase"]["jwt_secret"] == "**********"

    # The value is used: a token signed with Vault's secret passes, one signed with the reference's text does not.
    good = run(project, ["verify-jwt", "--offline", "--token", hs256(user_claims(), secret=jwt_secret)], vault_db)
    assert good.exit_code == 0 and "token accepted" in good.output, good.output
    literal = hs256(user_claims(), secret="vault:supabase_jwt_secret")
    refused = run(project, ["verify-jwt", "--offline", "--token", literal], vault_db)
    assert refused.exit_code == 1 and "token refused" in refused.output

    for result in (checked, good, refused):
        assert jwt_secret not in result.output and cipher not in result.output
        assert pg_cluster.password not in result.output
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "supabase.jwt_secret" in logged  # the read was logged, by name
    assert jwt_secret not in logged and cipher not in logged and pg_cluster.password not in logged
    assert jwt_secret not in everything_written(project) and cipher not in everything_written(project)


class Box:
    """The facts ``deploy`` reads from a Debian 12 box (the deploy itself is not run: there is no box)."""

    FACTS = {"BootFinished": True, "PythonVersion": "3.11", "Arch": "x86_64", "CarriedSettings": [],
             "LinuxDistribution": {"name": "Debian", "major": 12, "release_meta": {"VERSION_CODENAME": "bookworm"}},
             "SecretDigest": ""}  # fmt: skip

    def get_fact(self, cls: type, **kwargs: Any) -> Any:
        return self.FACTS[cls.__name__]


def test_deploy_puts_the_vault_values_in_the_box_spec_and_nowhere_else(
        vault_db: str, project: Path, pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """``deploy`` with every backup secret in Vault: the values reach what is uploaded to the box (the spec the
    deploys get); the output, the logs and the state file hold none of them (the state: their names)."""
    caplog.set_level(logging.DEBUG)
    values = {"pg_jwt": f"jwt-{secrets.token_hex(24)}", "s3_key": f"AKIA{secrets.token_hex(8).upper()}",
              "s3_key_secret": secrets.token_hex(20), "pg_cipher": secrets.token_urlsafe(30)}  # fmt: skip
    for name, value in values.items():
        create(vault_db, value, name)
    (project / "postgressor.toml").write_text(
        'provider = "ssh"\nstate_dir = "state"\n[ssh]\nhost = "192.0.2.10"\n'
        '[supabase]\njwt_secret = "vault:pg_jwt"\n'
        '[backup]\ns3_endpoint = "s3.example.test"\ns3_region = "eu"\ns3_bucket = "bkp"\ns3_key = "vault:s3_key"\n'
        's3_key_secret = "vault:s3_key_secret"\ncipher_pass = "vault:pg_cipher"\n')  # fmt: skip
    open_state(project / "state", "default", "ssh").set_host(
        HostRecord("192.0.2.10", 22, "root", str(project / "id"), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"))
    planned: list[Any] = []

    def run_deploys(inventory: object, deploys: Any, listener: object, dry_run: bool = False, **_: Any) -> DeployResult:
        planned.extend(deploys(Box()))
        return DeployResult()

    monkeypatch.setattr(lifecycle, "run_deploys", run_deploys)
    monkeypatch.setattr(lifecycle, "ssh_inventory", lambda host, known_hosts: None)
    result = run(project, ["deploy"], vault_db)
    assert result.exit_code == 0, result.output
    spec = planned[0][1]["spec"]
    assert spec.backup is not None
    assert (spec.backup.s3_key, spec.backup.s3_key_secret, spec.backup.cipher_pass) == (
        values["s3_key"], values["s3_key_secret"], values["pg_cipher"])  # fmt: skip
    state = (project / "state" / "default.json").read_text()
    assert "backup.s3_key" in state  # names are recorded ...
    written, logged = everything_written(project), caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for value in values.values():  # ... values are not, nor printed, nor logged
        assert value not in state and value not in written and value not in result.output and value not in logged


# ---- one line for each problem ----------------------------------------------------------------------------------


@pytest.fixture
def referencing(project: Path) -> Path:
    (project / "postgressor.toml").write_text('[supabase]\njwt_secret = "vault:supabase_jwt_secret"\n')
    return project


def one_line(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_a_missing_name_is_one_line_exit_2(vault_db: str, referencing: Path, pg_cluster: Cluster) -> None:
    create(vault_db, "x" * 40, "another_name")
    line = one_line(run(referencing, ["config", "check"], vault_db), 2)
    assert "supabase.jwt_secret: no Vault secret named 'supabase_jwt_secret' in postgres@127.0.0.1:" in line
    assert "x" * 40 not in line and pg_cluster.password not in line


def test_a_short_jwt_secret_from_vault_says_to_fix_the_vault_secret(vault_db: str, referencing: Path) -> None:
    create(vault_db, "too-short-value", "supabase_jwt_secret")
    line = one_line(run(referencing, ["config", "check"], vault_db), 2)
    assert "supabase.jwt_secret (Vault secret 'supabase_jwt_secret'): 15 characters, Supabase's minimum is 32" in line
    assert "POSTGRESSOR_SUPABASE__JWT_SECRET" not in line and "too-short-value" not in line


def test_an_unset_url_is_one_line_exit_2(referencing: Path) -> None:
    line = one_line(run(referencing, ["plan"], None), 2)
    assert "POSTGRESSOR_VAULT_URL" in line and "supabase.jwt_secret = vault:supabase_jwt_secret" in line


def test_a_database_without_vault_is_one_line_exit_2(pg_cluster: Cluster, referencing: Path) -> None:
    line = one_line(run(referencing, ["config", "check"], pg_cluster.url()), 2)
    assert "has no Supabase Vault" in line and "supabase_vault" in line and pg_cluster.password not in line


def test_a_role_without_grants_is_one_line_exit_2(vault_db: str, pg_cluster: Cluster, referencing: Path) -> None:
    pg_cluster.ensure_role("no_vault_reader", "reader-pw", "NOSUPERUSER")
    dbname = str(psycopg.conninfo.conninfo_to_dict(vault_db)["dbname"])
    line = one_line(run(referencing, ["config", "check"], pg_cluster.url(dbname, "no_vault_reader", "reader-pw")), 2)
    assert "refused reading vault.decrypted_secrets (permission denied" in line and "reader-pw" not in line


def test_an_unreachable_database_is_one_line_exit_1(referencing: Path) -> None:
    url = f"postgresql://postgres:unreachable-pw@127.0.0.1:{free_port()}/postgres"
    line = one_line(run(referencing, ["config", "check"], url), 1)
    assert "cannot connect to the Supabase Vault database postgres@127.0.0.1" in line
    assert "unreachable-pw" not in line


# ---- secrets push --------------------------------------------------------------------------------------------


def caddy_root() -> str:
    """A self-signed CA certificate like Caddy's internal root (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Caddy Local Authority - 2026 ECC Root")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM).decode()


SYNC = '[[sync.tables]]\nname = "items"\nowner_column = "user_id"\n'


def test_secrets_push_creates_then_leaves_then_updates(vault_db: str, pg_cluster: Cluster, project: Path) -> None:
    pem = caddy_root()
    with running_fake_box(pg_cluster, project, {CADDY_ROOT_CERT: pem}) as (box, host):
        open_state(project / "state", "edge", "ssh").set_host(host)
        config = f'provider = "ssh"\nstate_dir = "state"\n[ssh]\nhost = "127.0.0.1"\n{SYNC}'
        (project / "postgressor.toml").write_text(config)
        url_name, ca_name = "postgressor_edge_gateway_url", "postgressor_edge_ca_certificate"

        first = run(project, ["secrets", "push", "--stack", "edge"], vault_db)
        assert first.exit_code == 0, first.output
        assert f"  created {url_name}" in first.output and f"  created {ca_name}" in first.output
        assert pg_cluster.password not in first.output
        assert stored(vault_db) == {
            url_name: ("https://127.0.0.1", "postgressor: stack 'edge': the gateway's URL"),
            ca_name: (pem.strip() + "\n", "postgressor: stack 'edge': the gateway's CA certificate (Caddy tls "
                      "internal)")}  # fmt: skip
        assert box.commands == [f"cat {CADDY_ROOT_CERT}"]  # the CA came over the pinned SSH connection

        again = run(project, ["secrets", "push", "--stack", "edge", "--json"], vault_db)
        assert again.exit_code == 0, again.output
        body = json.loads(again.stdout)
        assert body["ok"] and body["stack"] == "edge" and pg_cluster.password not in again.stdout
        assert [(s["name"], s["status"]) for s in body["secrets"]] == [(url_name, "unchanged"), (ca_name, "unchanged")]

        (project / "postgressor.toml").write_text(config + '[https]\ndomain = "sync.example.test"\n')
        public = run(project, ["secrets", "push", "--stack", "edge"], vault_db)
        assert public.exit_code == 0, public.output
        assert f"  updated {url_name}" in public.output and f"  skipped {ca_name}" in public.output
        assert stored(vault_db)[url_name][0] == "https://sync.example.test"
        assert len(box.commands) == 2  # the public certificate needs nothing from the box


def test_secrets_push_refuses_before_contacting_anything(vault_db: str, pg_cluster: Cluster, project: Path) -> None:
    with running_fake_box(pg_cluster, project, {}) as (box, host):
        open_state(project / "state", "edge", "ssh").set_host(host)
        (project / "postgressor.toml").write_text(f'provider = "ssh"\nstate_dir = "state"\n[ssh]\nhost = "127.0.0.1"\n'
                                                  f"{SYNC}")  # fmt: skip
        line = one_line(run(project, ["secrets", "push", "--stack", "edge"], None), 2)
        assert "'secrets push'" in line and "POSTGRESSOR_VAULT_URL" in line
        (project / "postgressor.toml").write_text('provider = "ssh"\nstate_dir = "state"\n[ssh]\nhost = "127.0.0.1"\n')
        line = one_line(run(project, ["secrets", "push", "--stack", "edge"], vault_db), 2)
        assert "deploys no gateway" in line
        assert box.commands == [] and stored(vault_db) == {}
        line = one_line(run(project, ["secrets", "push", "--stack", "nope"], vault_db), 2)
        assert "has no server yet" in line
