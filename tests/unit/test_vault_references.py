"""``vault:NAME`` secret settings (issue #16 item 2): the syntax, binding at load, reading only when needed and in
one query, and the checks a value read from Vault gets. Vault itself is faked here; tests/integration/test_vault.py
runs the same paths against the stand-in schema on real PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.config import ONE_CONF_LINE, load_settings, masked_dump, secret_problem
from postgressor.errors import ConfigError, UsageError
from postgressor.vault import client
from postgressor.vault.references import (
    VaultSecret,
    is_reference,
    reference,
    resolve_vault_references,
    vault_references,
)

URL = "postgresql://postgres:vault-url-password@db.ref.supabase.co:5432/postgres"
JWT = "a-jwt-secret-from-vault-with-more-than-32-characters"
CIPHER = "a-cipher-passphrase-from-vault-0123456789"


@pytest.fixture(autouse=True)
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("POSTGRESSOR_VAULT_URL", "POSTGRESSOR_SUPABASE__JWT_SECRET", "POSTGRESSOR_STACK", "CI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class FakeVault:
    """client.connect/read_secrets over a dict: counts connections and queries."""

    def __init__(self, secrets: dict[str, str | None]) -> None:
        self.secrets = secrets
        self.connections = 0
        self.queries: list[list[str]] = []

    @contextlib.contextmanager
    def connect(self, url: str) -> Iterator[client.Vault]:
        self.connections += 1
        yield client.Vault(conn=None, label="postgres@db.ref.supabase.co:5432/postgres")  # type: ignore[arg-type]

    def read_secrets(self, vault: client.Vault, names: list[str]) -> dict[str, str | None]:
        self.queries.append(list(names))
        return {name: self.secrets[name] for name in names if name in self.secrets}


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> FakeVault:
    fake = FakeVault({"jwt": JWT, "cipher": CIPHER})
    monkeypatch.setattr(client, "connect", fake.connect)
    monkeypatch.setattr(client, "read_secrets", fake.read_secrets)
    monkeypatch.setenv("POSTGRESSOR_VAULT_URL", URL)
    return fake


@pytest.fixture
def no_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this command must not connect to Vault")

    monkeypatch.setattr(client, "connect", refuse)
    monkeypatch.setattr(client, "read_secrets", refuse)


def write_config(project: Path, text: str) -> None:
    (project / "postgressor.toml").write_text(text)


REFS = '[supabase]\njwt_secret = "vault:jwt"\n[backup]\ncipher_pass = "vault:cipher"\n'


# ---- the syntax ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "name"), [("vault:supabase_jwt_secret", "supabase_jwt_secret"), ("vault:x", "x"),
                                             ("plain-value", None), ("Vault:x", None), (" vault:x", None),
                                             ("", None), ("vault:", "")])  # fmt: skip
def test_a_reference_is_vault_colon_name(value: str, name: str | None) -> None:
    assert reference(value) == name
    assert is_reference(SecretStr(value)) is (name is not None)


@pytest.mark.parametrize("value", ["vault:", "vault:two words", "vault: x", "vault:" + "n" * 256])
def test_a_reference_without_a_usable_name_is_one_config_line(project: Path, value: str) -> None:
    write_config(project, f'[supabase]\njwt_secret = "{value}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("supabase.jwt_secret: ") and "vault:NAME" in str(err.value)
    assert "\n" not in str(err.value)


# ---- binding at load: nothing read, nothing rejected -------------------------------------------------------


def test_load_binds_references_from_file_and_environment_without_reading(
        project: Path, no_vault: None, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    write_config(project, '[backup]\ncipher_pass = "vault:cipher"\n')
    monkeypatch.setenv("POSTGRESSOR_HETZNER__TOKEN", "vault:hcloud_token")
    settings = load_settings()
    assert isinstance(settings.backup.cipher_pass, VaultSecret)  # "vault:cipher" is 12 characters: not refused
    assert isinstance(settings.hetzner.token, VaultSecret)
    assert vault_references(settings) == {"backup.cipher_pass": "cipher", "hetzner.token": "hcloud_token"}
    assert settings.supabase.jwt_secret is None
    dumped = str(masked_dump(settings))  # shown masked, not read
    assert "**********" in dumped and "hcloud_token" not in dumped
    assert bool(settings.hetzner.token) and str(settings.hetzner.token) == "**********"


def test_s3_keys_may_be_references(project: Path, no_vault: None) -> None:
    write_config(project, '[backup]\ns3_endpoint = "e.example"\ns3_region = "r"\ns3_bucket = "b"\n'
                 's3_key = "vault:s3_key"\ns3_key_secret = "vault:s3_key_secret"\n'
                 'cipher_pass = "vault:c"\n')  # fmt: skip
    settings = load_settings()
    assert vault_references(settings) == {"backup.s3_key": "s3_key", "backup.s3_key_secret": "s3_key_secret",
                                          "backup.cipher_pass": "c"}  # fmt: skip


def test_plain_values_are_still_checked_at_load(project: Path) -> None:
    write_config(project, '[backup]\ncipher_pass = "short"\n')
    with pytest.raises(ConfigError, match="cipher_pass: 5 characters"):
        load_settings()


# ---- read only when needed, all at once ------------------------------------------------------------------


def test_without_references_nothing_connects(project: Path, no_vault: None) -> None:
    write_config(project, '[supabase]\njwt_secret = "' + JWT + '"\n')
    settings = load_settings()
    assert resolve_vault_references(settings) is settings
    for argv in (["config", "check"], ["regions", "--provider", "hetzner"], ["status"], ["plan"]):
        result = CliRunner().invoke(app, argv)
        assert "must not connect" not in repr(result.exception), argv


def test_commands_that_read_no_secret_never_connect(project: Path, no_vault: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """References present, URL unset: a verb that reads no secret value neither connects nor complains."""
    write_config(project, REFS)
    for argv, code in ((["regions", "--provider", "hetzner"], 0), (["status"], 2), (["logs"], 2), (["ssh"], 2),
                       (["destroy", "--yes"], 1), (["migrate", "--dry-run"], None)):  # fmt: skip
        result = CliRunner().invoke(app, argv)
        assert "must not connect" not in repr(result.exception), argv
        assert "Vault" not in result.output, (argv, result.output)
        if code is not None:
            assert result.exit_code == code, (argv, result.output)


def test_the_first_read_reads_every_reference_in_one_query(project: Path, vault: FakeVault) -> None:
    write_config(project, REFS)
    settings = load_settings()
    assert vault.connections == 0
    assert settings.backup.cipher_pass is not None and settings.backup.cipher_pass.get_secret_value() == CIPHER
    assert vault.connections == 1 and vault.queries == [["cipher", "jwt"]]
    copy = settings.model_copy(update={"provider": "ssh"})  # copies share the values read
    assert copy.supabase.jwt_secret is not None and copy.supabase.jwt_secret.get_secret_value() == JWT
    resolved = resolve_vault_references(copy)
    assert vault.connections == 1
    assert type(resolved.supabase.jwt_secret) is SecretStr and resolved.supabase.jwt_secret.get_secret_value() == JWT
    assert vault_references(resolved) == {}


def test_config_check_reads_them_before_the_checks_and_says_which(project: Path, vault: FakeVault) -> None:
    write_config(project, REFS)
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "supabase.jwt_secret: read from Supabase Vault secret 'jwt'" in result.output
    assert JWT not in result.output and CIPHER not in result.output and "vault-url-password" not in result.output
    assert vault.connections == 1 and len(vault.queries) == 1


# ---- what is wrong, in one line ------------------------------------------------------------------------


def test_a_failed_read_is_not_retried_within_a_command(project: Path, vault: FakeVault) -> None:
    write_config(project, '[supabase]\njwt_secret = "vault:jwt"\n[hetzner]\ntoken = "vault:nope"\n')
    settings = load_settings()
    for _ in range(2):
        with pytest.raises(ConfigError, match="no Vault secret named 'nope'"):
            assert settings.supabase.jwt_secret is not None
            settings.supabase.jwt_secret.get_secret_value()
    assert vault.connections == 1


def test_an_unset_url_names_the_variable_and_the_settings(project: Path, no_vault: None) -> None:
    write_config(project, REFS)
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "POSTGRESSOR_VAULT_URL" in line
    assert "supabase.jwt_secret = vault:jwt" in line and "backup.cipher_pass = vault:cipher" in line


def test_a_missing_name_is_one_line_naming_it(project: Path, vault: FakeVault) -> None:
    write_config(project, '[supabase]\njwt_secret = "vault:jwt"\n[hetzner]\ntoken = "vault:nope"\n')
    with pytest.raises(ConfigError) as err:
        resolve_vault_references(load_settings())
    message = str(err.value)
    assert message.startswith("hetzner.token: no Vault secret named 'nope' in postgres@db.ref.supabase.co")
    assert "\n" not in message and JWT not in message


@pytest.mark.parametrize(("key", "value", "expect"), [
    ("backup.cipher_pass", "only-19-characters!", "backup.cipher_pass (Vault secret 'v'): 19 characters, fewer "
     "than 20"),
    ("backup.cipher_pass", "with a space in it, long enough", "backup.cipher_pass (Vault secret 'v'): may hold only"),
    ("supabase.jwt_secret", "", "supabase.jwt_secret: Vault secret 'v' in postgres@db.ref.supabase.co:5432/postgres "
     "is empty"),
    ("supabase.jwt_secret", None, "cannot be decrypted"),
])  # fmt: skip
def test_a_value_read_from_vault_is_checked_like_one_from_the_file(project: Path, vault: FakeVault, key: str,
                                                                   value: str | None, expect: str) -> None:  # fmt: skip
    section, field = key.split(".")
    write_config(project, f'[{section}]\n{field} = "vault:v"\n')
    vault.secrets["v"] = value
    with pytest.raises(ConfigError) as err:
        resolve_vault_references(load_settings())
    assert expect in str(err.value)
    assert not value or value not in str(err.value)


def test_a_short_jwt_secret_from_vault_fails_the_preflight(project: Path, vault: FakeVault) -> None:
    vault.secrets["jwt"] = "short-jwt-secret"
    write_config(project, '[supabase]\njwt_secret = "vault:jwt"\n')
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 2 and "supabase.jwt_secret (Vault secret 'jwt'): 16 characters" in result.stderr
    assert "short-jwt-secret" not in result.output


def test_a_malformed_url_is_a_usage_error_with_the_password_masked(
        project: Path, no_vault: None, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("POSTGRESSOR_VAULT_URL", "postgresql://postgres:pw-in-url@db/postgres?bogus=1")
    with pytest.raises(UsageError) as err:
        client.vault_url("test")
    assert "pw-in-url" not in str(err.value)


def test_secret_problem_is_the_load_checks() -> None:
    assert secret_problem("backup.s3_key", "AKIA0123") == ""
    assert secret_problem("backup.s3_key", "two words") == ONE_CONF_LINE
    assert secret_problem("backup.cipher_pass", "x" * 20) == ""
    assert "fewer than 20" in secret_problem("backup.cipher_pass", "x" * 19)
    assert secret_problem("hetzner.token", "anything at all") == ""


def test_the_vault_url_is_known_and_not_a_setting() -> None:
    from postgressor.config import OTHER_VARIABLES

    assert client.VAULT_URL in OTHER_VARIABLES


def test_status_reads_a_token_in_vault_only_for_the_power_state_and_goes_on_without_it(project: Path) -> None:
    """`status` needs the Hetzner token only to ask for the power state: that is when Vault is read, and a failure
    there makes the power state "unknown (why)" while the rest of status goes on over SSH."""
    from postgressor.checks.status import power_state
    from postgressor.state import HostRecord, open_state

    write_config(project, '[hetzner]\ntoken = "vault:hcloud"\n')
    settings = load_settings()
    state = open_state(settings.state_dir, "x", "hetzner")
    state.add("server", "42")
    state.set_host(HostRecord("192.0.2.1", 22, "root", "k"))
    shown = power_state(settings, state)
    assert shown.startswith("unknown (Supabase Vault is needed (hetzner.token = vault:hcloud)")
