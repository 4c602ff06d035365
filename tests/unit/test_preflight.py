"""The pre-flight check: one test per rule in postgressor.preflight.RULES, plus the refusal to drop values."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor import preflight
from postgressor.cli import app
from postgressor.config import load_settings
from postgressor.errors import ConfigError
from postgressor.state import HostRecord, open_state

SECRET = "s" * 40
ISSUER = "https://abc.supabase.co/auth/v1"
GOOD_SYNC = f"""
[supabase]
jwt_secret = "{SECRET}"
issuer = "{ISSUER}"

[[sync.tables]]
name = "notes"
owner_column = "user_id"
"""


def settings_from(tmp_path: Path, text: str, **overrides: Any) -> Any:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return load_settings(path, **overrides)


def problems(tmp_path: Path, text: str) -> list[str]:
    return preflight.problems(settings_from(tmp_path, text))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("POSTGRESSOR_SUPABASE__JWT_SECRET", "POSTGRESSOR_SUPABASE__JWKS_URL"):
        monkeypatch.delenv(name, raising=False)


def docker_save(path: Path, members: dict[str, Any]) -> Path:
    """A tarball laid out like `docker save` output (manifest.json and/or the legacy repositories file)."""
    with tarfile.open(path, "w") as tar:
        for name, content in members.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_good_sync_config_has_no_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, GOOD_SYNC) == []


def test_every_rule_has_a_test() -> None:
    tested = {name.removeprefix("test_rule_") for name in globals() if name.startswith("test_rule_")}
    checks = {rule.check.__name__.lstrip("_") for rule in preflight.RULES}
    assert checks <= tested, checks - tested


def test_rule_tables_listed(tmp_path: Path) -> None:
    found = problems(tmp_path, f'[electric]\nenabled = true\n[supabase]\njwt_secret = "{SECRET}"\n')
    assert any(line.startswith("sync.tables:") and "[[sync.tables]]" in line for line in found)


def test_rule_key_source(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_SYNC.replace(f'jwt_secret = "{SECRET}"', ""))
    assert len(found) == 1
    assert found[0].startswith("supabase.jwt_secret / supabase.jwks_url:")
    assert "POSTGRESSOR_SUPABASE__JWT_SECRET" in found[0] and "jwks_url" in found[0]


def test_rule_secret_length(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_SYNC.replace(SECRET, "short"))
    assert found == [line for line in found if line.startswith("supabase.jwt_secret: 5 characters")]
    assert "minimum is 32" in found[0] and "short" not in found[0].split(":", 1)[1].replace("5 characters", "")
    assert problems(tmp_path, GOOD_SYNC.replace(SECRET, "x" * 32)) == []


def test_rule_jwks_url(tmp_path: Path) -> None:
    text = GOOD_SYNC.replace(
        f'issuer = "{ISSUER}"', 'jwks_url = "http://abc.supabase.co/auth/v1/.well-known/jwks.json"'
    )
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].startswith("supabase.jwks_url:") and "https://" in found[0]


def test_rule_issuer(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_SYNC.replace(f'issuer = "{ISSUER}"', ""))
    assert (
        len(found) == 1 and found[0].startswith("supabase.issuer:") and "https://<ref>.supabase.co/auth/v1" in found[0]
    )
    derived = GOOD_SYNC.replace(f'issuer = "{ISSUER}"', f'jwks_url = "{ISSUER}/.well-known/jwks.json"')
    assert problems(tmp_path, derived) == []
    assert problems(tmp_path, GOOD_SYNC.replace(ISSUER, "abc.supabase.co"))[0].startswith("supabase.issuer:")


def test_rule_audience(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_SYNC.replace("[supabase]", '[supabase]\naudience = ""'))
    assert len(found) == 1 and found[0].startswith("supabase.audience:") and "authenticated" in found[0]


def test_rule_owner_columns(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_SYNC.replace('owner_column = "user_id"', ""))
    assert len(found) == 1 and found[0].startswith("sync.tables[0] ('notes').owner_column: not set")
    bad = problems(tmp_path, GOOD_SYNC.replace('"user_id"', '"user id"'))
    assert len(bad) == 1 and "is not a column name" in bad[0]
    with pytest.raises(ConfigError, match="more than once"):  # checked when the config loads (SyncConfig)
        problems(tmp_path, GOOD_SYNC + '\n[[sync.tables]]\nname = "notes"\nowner_column = "user_id"\n')


def test_https_site_values_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    """https.domain and https.email land in the Caddyfile: checked at load (config.HttpsConfig), so no rule here."""
    with pytest.raises(ConfigError, match=re.escape("https.domain: 'https://sync.example.com/' is not a host name")):
        problems(tmp_path, GOOD_SYNC + '\n[https]\ndomain = "https://sync.example.com/"\n')
    with pytest.raises(ConfigError, match=re.escape("https.email")):
        problems(tmp_path, GOOD_SYNC + '\n[https]\nemail = "ops"\n')
    fine = GOOD_SYNC + '\n[https]\ndomain = "sync.example.com"\nemail = "ops@example.com"\n'
    assert problems(tmp_path, fine) == []


def test_rule_docker_bridge(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_SYNC + '\n[electric]\ndocker_bridge = "bridge"\n')
    assert len(found) == 1 and found[0].startswith("electric.docker_bridge:")


def test_rule_image_archive(tmp_path: Path) -> None:
    saved = docker_save(tmp_path / "e.tar", {"manifest.json": [
        {"Config": "c.json", "RepoTags": ["electricsql/electric:1.7.13"], "Layers": []}]})  # fmt: skip
    found = problems(tmp_path, GOOD_SYNC + f'\n[electric]\nimage_archive = "{saved}"\n')
    assert len(found) == 1
    assert found[0].startswith("electric.image:")
    assert "holds electricsql/electric:1.7.13, not electricsql/electric:1.7.12" in found[0]
    assert 'set electric.image = "electricsql/electric:1.7.13"' in found[0]
    matching = GOOD_SYNC + f'\n[electric]\nimage = "docker.io/electricsql/electric:1.7.13"\nimage_archive = "{saved}"\n'
    assert problems(tmp_path, matching) == []
    legacy = docker_save(tmp_path / "old.tar", {"repositories": {"mirror.example/electric": {"1.7.12": "abc"}}})
    found = problems(tmp_path, GOOD_SYNC + f'\n[electric]\nimage_archive = "{legacy}"\n')
    assert "holds mirror.example/electric:1.7.12" in found[0]
    missing = problems(tmp_path, GOOD_SYNC + f'\n[electric]\nimage_archive = "{tmp_path / "none.tar"}"\n')
    assert missing[0].startswith("electric.image_archive:") and "not found" in missing[0]
    (tmp_path / "junk.tar").write_text("not a tarball")
    junk = problems(tmp_path, GOOD_SYNC + f'\n[electric]\nimage_archive = "{tmp_path / "junk.tar"}"\n')
    assert junk[0].startswith("electric.image_archive:") and "docker save" in junk[0]
    untagged = docker_save(tmp_path / "u.tar", {"manifest.json": [{"Config": "c.json", "RepoTags": None}]})
    assert "holds no tagged image" in problems(tmp_path, GOOD_SYNC + f'\n[electric]\nimage_archive = "{untagged}"\n')[0]


def test_sync_rules_apply_only_when_sync_is_on(tmp_path: Path) -> None:
    assert problems(tmp_path, '[supabase]\naudience = ""\n') == []


def test_config_check_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "postgressor.toml").write_text(GOOD_SYNC.replace(f'issuer = "{ISSUER}"', "").replace(SECRET, "short"))
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.output
    assert errors[0].startswith("error: supabase.jwt_secret: 5 characters")
    assert errors[1].startswith("error: supabase.issuer:")
    assert "configuration is valid" not in result.output


@pytest.mark.parametrize("verb", [["plan"], ["up"], ["deploy"]])
def test_box_verbs_run_the_check_before_any_side_effect(tmp_path: Path, verb: list[str]) -> None:
    (tmp_path / "postgressor.toml").write_text(GOOD_SYNC.replace('owner_column = "user_id"', ""))
    result = CliRunner().invoke(app, verb)
    assert result.exit_code == 2
    assert "error: sync.tables[0] ('notes').owner_column: not set" in result.output
    assert not (tmp_path / ".postgressor").exists()  # no state, no key, no VM


def test_a_deployed_secret_missing_from_this_shell_is_refused(tmp_path: Path) -> None:
    with_secret = settings_from(tmp_path, GOOD_SYNC)
    deployed = preflight.carried_keys(with_secret)
    assert deployed == ["supabase.jwt_secret"]
    jwks = f'jwks_url = "{ISSUER}/.well-known/jwks.json"'
    without = settings_from(tmp_path, GOOD_SYNC.replace(f'jwt_secret = "{SECRET}"', jwks))
    with pytest.raises(ConfigError) as err:
        preflight.check_drops(without, deployed, "default")
    assert "supabase.jwt_secret is deployed on stack 'default' but missing here" in str(err.value)
    assert "POSTGRESSOR_SUPABASE__JWT_SECRET" in str(err.value) and SECRET not in str(err.value)
    preflight.check_drops(without, deployed, "default", frozenset({"supabase.jwt_secret"}))  # on purpose
    with pytest.raises(ConfigError, match="not a setting postgressor carries"):
        preflight.check_drops(without, deployed, "default", frozenset({"supabase.password"}))
    # A key source dropped: JWKS deployed, now only the secret.
    both = settings_from(tmp_path, GOOD_SYNC.replace("[supabase]", f"[supabase]\n{jwks}"))
    with pytest.raises(ConfigError, match=r"supabase\.jwks_url is deployed"):
        preflight.check_drops(with_secret, preflight.carried_keys(both), "default")


def test_deploy_refuses_before_connecting_and_records_names_only(tmp_path: Path) -> None:
    (tmp_path / "postgressor.toml").write_text(GOOD_SYNC)
    state = open_state(tmp_path / ".postgressor", "default", "ssh")
    state.set_host(HostRecord("192.0.2.1", 22, "root", str(tmp_path / "key")))
    state.deployed_keys = ["supabase.jwt_secret", "backup.s3_key"]
    state.save()
    text = (tmp_path / ".postgressor" / "default.json").read_text()
    assert "supabase.jwt_secret" in text and SECRET not in text
    (tmp_path / "postgressor.toml").write_text(
        GOOD_SYNC.replace(
            f'jwt_secret = "{SECRET}"', 'jwks_url = "https://abc.supabase.co/auth/v1/.well-known/jwks.json"'
        )
    )
    result = CliRunner().invoke(app, ["deploy"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 2
    assert "POSTGRESSOR_SUPABASE__JWT_SECRET" in lines[0] and "POSTGRESSOR_BACKUP__S3_KEY" in lines[1]


def test_the_box_files_count_too_when_the_state_recorded_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A box whose gateway.toml holds jwt_secret (read as a fact, names only) refuses a deploy without it."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "box"))
    from fake_host import FakeHost

    from postgressor import lifecycle as stacks
    from postgressor.box.facts import CarriedSettings

    box = FakeHost({
        "BootFinished": True,
        "LinuxDistribution": {"name": "Debian", "major": 12, "release_meta": {"VERSION_CODENAME": "bookworm"}},
        "PythonVersion": "3.11", "Arch": "x86_64", "CarriedSettings": ["supabase.jwt_secret"],
    })  # fmt: skip
    facts = stacks.read_box(box)  # type: ignore[arg-type]
    assert facts.carried == ("supabase.jwt_secret",) and facts.distro.major == 12 and facts.python == "3.11"
    assert "/etc/postgressor/gateway.toml" in CarriedSettings().command()
    (tmp_path / "postgressor.toml").write_text(GOOD_SYNC)
    state = open_state(tmp_path / ".postgressor", "default", "ssh")  # deployed_keys: nothing recorded
    jwks = f'jwks_url = "{ISSUER}/.well-known/jwks.json"'
    without = settings_from(tmp_path, GOOD_SYNC.replace(f'jwt_secret = "{SECRET}"', jwks))

    def run_deploys(inventory: object, deploys: object, listener: object, dry_run: bool = False, **_: object) -> object:
        return deploys(box)  # type: ignore[operator]

    monkeypatch.setattr(stacks, "run_deploys", run_deploys)
    monkeypatch.setattr(stacks, "OpWatch", lambda *a: type("W", (), {"close": lambda self: None})())
    with pytest.raises(ConfigError, match="POSTGRESSOR_SUPABASE__JWT_SECRET"):
        stacks.deploy_host(without, state, HostRecord("192.0.2.1", 22, "root", "k"), lambda n, r: None)


def test_turning_a_feature_off_is_not_dropping_its_values(tmp_path: Path) -> None:
    off = settings_from(tmp_path, GOOD_SYNC.replace(f'jwt_secret = "{SECRET}"', "") + "\n[electric]\nenabled = false\n")
    preflight.check_drops(off, ["supabase.jwt_secret", "supabase.jwks_url"], "default")
    no_backup = settings_from(tmp_path, GOOD_SYNC + "\n[backup]\nenabled = false\n")
    preflight.check_drops(no_backup, ["backup.s3_key", "backup.s3_key_secret"], "default")


def test_carried_settings_fact_counts_only_values_the_files_really_hold(tmp_path: Path) -> None:
    """The gateway's settings file writes every key, empty ones as "": only a non-empty value is carried."""
    import subprocess

    from postgressor.box.facts import CarriedSettings
    from postgressor.box.layout import GATEWAY_CONFIG, PGBACKREST_CONF

    gateway = tmp_path / "gateway.toml"
    gateway.write_text('port = 3001\n\n[verifier]\njwt_secret = "s3cret-value"\njwks_url = ""\n')
    pgbackrest = tmp_path / "pgbackrest.conf"
    pgbackrest.write_text("[global]\nrepo1-path=/var/lib/pgbackrest\n")
    command = CarriedSettings().command().replace(GATEWAY_CONFIG, str(gateway))
    command = command.replace(PGBACKREST_CONF, str(pgbackrest))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    assert CarriedSettings().process(out.splitlines()) == ["supabase.jwt_secret"]
    assert "s3cret-value" not in out


def test_rule_cipher_custody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRESSOR_BACKUP__CIPHER_PASS", raising=False)
    s3 = ('[backup]\ns3_endpoint = "fsn1.your-objectstorage.com"\ns3_region = "fsn1"\ns3_bucket = "b"\n'
          's3_key = "AKIAEXAMPLE"\ns3_key_secret = "s3cr3t"\n')  # fmt: skip
    found = problems(tmp_path, s3)
    assert len(found) == 1 and "\n" not in found[0]
    assert found[0].startswith("backup.cipher_pass: an S3 repository must stay readable when the box is lost")
    for needed in ("openssl rand -base64 48", "password manager", "POSTGRESSOR_BACKUP__CIPHER_PASS",
                   "postgressor backup passphrase"):  # fmt: skip
        assert needed in found[0]
    assert problems(tmp_path, s3 + f'cipher_pass = "{"p" * 40}"\n') == []
    assert problems(tmp_path, "") == []  # a local repository: the box keeps its own passphrase
    assert problems(tmp_path, s3.replace("[backup]\n", "[backup]\nenabled = false\n")) == []
