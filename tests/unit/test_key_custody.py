"""Key custody (issue #20): an S3 repository's passphrase is the user's, uploaded and never replaced or shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor import lifecycle as stacks
from postgressor.box.converge import DeployResult
from postgressor.box.deploys.backup import CIPHER_MISMATCH
from postgressor.box.facts import SecretDigest
from postgressor.box.layout import CIPHER_SECRET, SECRETS_DIR, secret_path
from postgressor.box.operations import secret_digest
from postgressor.checks import status as status_check
from postgressor.cli import app
from postgressor.config import load_settings, masked_dump
from postgressor.day2 import backups
from postgressor.errors import ConfigError
from postgressor.remote.ssh import CommandResult
from postgressor.state import HostRecord, open_state

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "box"))
from fake_host import FakeHost
from test_backup import FRESH, S3, converged, run_fake

PASS = "Xq9+user-held/passphrase-0123456789ABCDEFghij"
BOX_PASS = "box0generated0passphrase0abcdefghijklmno"
CIPHER_FILE = secret_path(CIPHER_SECRET)
S3_TOML = ('provider = "local"\n[backup]\ns3_endpoint = "fsn1.your-objectstorage.com"\ns3_region = "fsn1"\n'
           's3_bucket = "b"\n')  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    for name in ("POSTGRESSOR_BACKUP__CIPHER_PASS", "POSTGRESSOR_BACKUP__CIPHER_PASS_FILE"):
        monkeypatch.delenv(name, raising=False)


# ---- configuration and the pre-flight refusal -------------------------------------------------------------


@pytest.mark.parametrize(
    ("backup", "expected"),
    [
        ({"cipher_pass": "short-one"}, "backup: cipher_pass: 9 characters, fewer than 20; make a strong one with "
         "'openssl rand -base64 48'"),
        ({"cipher_pass": "has a space in it and is long"}, "printable ASCII without spaces"),
        ({"cipher_pass": ""}, "cipher_pass: empty; make one with 'openssl rand -base64 48'"),
        ({"cipher_pass": PASS, "cipher_pass_file": "p.txt"}, "cipher_pass and cipher_pass_file are both set"),
        ({"cipher_pass_file": "nowhere.txt"}, "nowhere.txt not found; point it at the file holding the passphrase"),
    ],
)  # fmt: skip
def test_bad_passphrases_are_one_line_without_the_value(backup: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(provider="local", backup=backup)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert "short-one" not in str(err.value) and "has a space" not in str(err.value)


def test_the_passphrase_from_a_file_or_the_environment_is_masked(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "cipher.txt").write_text(PASS + "\n")
    (tmp_path / "cipher.txt").chmod(0o600)
    from_file = load_settings(provider="local", backup={**S3, "cipher_pass_file": "cipher.txt"})
    assert from_file.backup.cipher_pass is not None and from_file.backup.cipher_pass.get_secret_value() == PASS
    monkeypatch.setenv("POSTGRESSOR_BACKUP__CIPHER_PASS", PASS)
    from_env = load_settings(provider="local", backup=S3)
    assert from_env.backup.cipher_pass is not None and from_env.backup.cipher_pass.get_secret_value() == PASS
    for settings in (from_file, from_env):
        assert PASS not in json.dumps(masked_dump(settings)) and PASS not in repr(settings)
        spec = stacks.box_spec(settings, stacks.Distro("debian", 12, "bookworm"))
        assert spec.backup is not None and spec.backup.cipher_pass == PASS and PASS not in repr(spec.backup)


def test_a_passphrase_file_others_can_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cipher.txt").write_text(PASS + "\n")
    (tmp_path / "cipher.txt").chmod(0o644)
    with pytest.raises(ConfigError, match=r"can be read by other users; run .chmod 600 .*cipher.txt.") as refused:
        load_settings(provider="local", backup={**S3, "cipher_pass_file": str(tmp_path / "cipher.txt")})
    assert PASS not in str(refused.value)


@pytest.mark.parametrize("verb", [["up"], ["deploy"], ["plan"], ["config", "check"]])
def test_an_s3_repository_without_a_held_passphrase_is_refused_in_one_line(tmp_path: Path, verb: list[str]) -> None:
    (tmp_path / "postgressor.toml").write_text(S3_TOML)
    env = {"POSTGRESSOR_BACKUP__S3_KEY": "AKIAEXAMPLE", "POSTGRESSOR_BACKUP__S3_KEY_SECRET": "s3cr3t"}
    result = CliRunner().invoke(app, verb, env=env)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [line for line in result.output.splitlines() if "cipher_pass" in line]
    assert len(errors) == 1 and "openssl rand -base64 48" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / ".postgressor").exists()  # refused before any state, key or server


# ---- the deploy: uploaded, never in a command, never replaced ---------------------------------------------


def test_a_held_passphrase_is_uploaded_0600_and_never_in_a_command() -> None:
    commands, result, uploads = run_fake(FRESH, backup={**S3, "cipher_pass": PASS})
    assert not result.failed
    assert dict(uploads)[f"{CIPHER_FILE}.new"] == PASS
    joined = "\n".join(commands)
    assert PASS not in joined and secret_digest(PASS) not in joined
    assert f"chown root:root {CIPHER_FILE}.new && chmod 600 {CIPHER_FILE}.new && if [ -s {CIPHER_FILE} ]" in joined
    assert f"mv {CIPHER_FILE}.new {CIPHER_FILE}" in joined  # only when the box has none
    assert f"install -d -m 0700 {SECRETS_DIR}" in joined
    assert "> /etc/postgressor/secrets/pgbackrest_cipher.new" not in joined  # nothing generated on the box
    conf = next(c for c in commands if "pgbackrest.conf.new" in c)
    assert f'repo1-cipher-pass="$(cat {CIPHER_FILE})"' in conf


def test_the_same_passphrase_on_the_box_is_left_alone() -> None:
    responses = {f"[ -s {CIPHER_FILE} ]": secret_digest(PASS), **converged(backup={**S3, "cipher_pass": PASS})}
    _, result, uploads = run_fake(responses, backup={**S3, "cipher_pass": PASS})
    assert not result.failed and CIPHER_FILE not in dict(uploads)
    op = next(op for op in result.operations if "Backup encryption passphrase" in op.name)
    assert op.status == "unchanged"


def test_a_different_passphrase_on_the_box_stops_the_deploy_in_one_line() -> None:
    # The fake connector runs nothing: the refusal's `exit 1` is answered as the box's shell would.
    refusal = {"success": False, "stderr": CIPHER_MISMATCH}
    responses = {f"[ -s {CIPHER_FILE} ]": secret_digest(BOX_PASS), "differs from the passphrase": refusal,
                 **converged(backup={**S3, "cipher_pass": PASS})}  # fmt: skip
    commands, result, uploads = run_fake(responses, backup={**S3, "cipher_pass": PASS})
    assert CIPHER_FILE not in dict(uploads)
    failed = result.failed
    assert len(failed) == 1 and "Backup encryption passphrase" in failed[0].name
    assert failed[0].error == CIPHER_MISMATCH
    joined = "\n".join(commands)
    assert PASS not in joined and BOX_PASS not in joined
    assert not any("chmod 600 " + CIPHER_FILE in c for c in commands)


def test_a_mismatch_is_refused_before_the_deploy_changes_anything(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    settings = load_settings(provider="local", backup={**S3, "cipher_pass": PASS})
    facts = {"BootFinished": True, "PythonVersion": "3.11", "Arch": "x86_64", "CarriedSettings": [],
             "LinuxDistribution": {"name": "Debian", "major": 12, "release_meta": {"VERSION_CODENAME": "bookworm"}},
             f"SecretDigest:{CIPHER_SECRET}": secret_digest(BOX_PASS)}  # fmt: skip
    box = FakeHost(facts)
    planned: list[Any] = []

    def run_deploys(inventory: object, deploys: Any, listener: object, dry_run: bool = False, **_: Any) -> DeployResult:
        planned.extend(deploys(box))
        return DeployResult()

    monkeypatch.setattr(stacks, "run_deploys", run_deploys)
    monkeypatch.setattr(stacks, "OpWatch", lambda *a: type("W", (), {"close": lambda self: None})())
    state = open_state(tmp_path / ".postgressor", "default", "local")
    host = HostRecord("192.0.2.1", 22, "root", "k")
    with pytest.raises(ConfigError) as err:
        stacks.deploy_host(settings, state, host, lambda n, r: None)
    assert str(err.value) == CIPHER_MISMATCH and not planned
    assert "POSTGRESSOR_BACKUP__CIPHER_PASS" in CIPHER_MISMATCH and "postgressor backup passphrase" in CIPHER_MISMATCH

    facts[f"SecretDigest:{CIPHER_SECRET}"] = secret_digest(PASS)  # the box's own: the deploy goes on
    stacks.deploy_host(settings, state, host, lambda n, r: None)
    assert planned
    text = (tmp_path / ".postgressor" / "default.json").read_text()
    assert PASS not in text and secret_digest(PASS) not in text  # nothing of it in the state file


def test_the_digest_fact_reads_the_file_as_pgbackrest_conf_does(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    fact = SecretDigest()

    def digest_of(text: str | None) -> tuple[str, str]:
        target = secrets / CIPHER_SECRET
        target.unlink(missing_ok=True)
        if text is not None:
            target.write_text(text)
        command = fact.command(secret=CIPHER_SECRET).replace(SECRETS_DIR, str(secrets))
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
        return fact.process(out.splitlines()), out

    assert digest_of(BOX_PASS)[0] == secret_digest(BOX_PASS)
    assert digest_of(BOX_PASS + "\n")[0] == secret_digest(BOX_PASS)  # $(cat) drops the newline: the same passphrase
    assert BOX_PASS not in digest_of(BOX_PASS)[1]
    assert digest_of(None)[0] == "" and digest_of("")[0] == ""


# ---- backup passphrase: the way to user-held custody for boxes in the field ------------------------------


def fake_ssh(monkeypatch: pytest.MonkeyPatch, on_box: str) -> list[str]:
    seen: list[str] = []

    def run(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
        seen.append(command)
        if command.startswith("cat "):
            return CommandResult(0, on_box + "\n", "")
        digest = subprocess.run(["sh", "-c", f"printf '%s' {on_box!r} | sha256sum | cut -d' ' -f1"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        return CommandResult(0, digest, "")

    from postgressor.checks import backups as health

    monkeypatch.setattr(health, "run", run)
    monkeypatch.setattr(stacks, "connection", lambda settings, stack, log: (HostRecord("h", 22, "root", "k"), None))
    return seen


def test_passphrase_shows_the_box_s_one_and_the_steps_to_hold_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "postgressor.toml").write_text('provider = "local"\n')
    fake_ssh(monkeypatch, BOX_PASS)
    result = CliRunner().invoke(app, ["backup", "passphrase", "--yes"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == BOX_PASS  # stdout: the passphrase alone
    assert "only the box holds this passphrase" in result.stderr and "POSTGRESSOR_BACKUP__CIPHER_PASS" in result.stderr
    assert BOX_PASS not in result.stderr
    held = CliRunner().invoke(app, ["--json", "backup", "passphrase", "--yes"],
                              env={"POSTGRESSOR_BACKUP__CIPHER_PASS": BOX_PASS})  # fmt: skip
    assert json.loads(held.stdout)["custody"] == backups.YOURS


@pytest.mark.parametrize(("held", "code", "says"), [(BOX_PASS, 0, "is the box's"), (PASS, 1, "is NOT the box's")])
def test_passphrase_check_compares_by_digest_and_prints_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                held: str, code: int, says: str) -> None:  # fmt: skip
    (tmp_path / "postgressor.toml").write_text('provider = "local"\n')
    seen = fake_ssh(monkeypatch, BOX_PASS)
    result = CliRunner().invoke(app, ["backup", "passphrase", "--check"],
                                env={"POSTGRESSOR_BACKUP__CIPHER_PASS": held})  # fmt: skip
    assert result.exit_code == code, result.output
    assert says in result.output and BOX_PASS not in result.output and PASS not in result.output
    assert seen and not any(c.startswith("cat ") for c in seen) and held not in "".join(seen)


def test_passphrase_check_without_a_held_one_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "postgressor.toml").write_text('provider = "local"\n')
    fake_ssh(monkeypatch, BOX_PASS)
    result = CliRunner().invoke(app, ["backup", "passphrase", "--check"])
    assert result.exit_code == 2 and "backup.cipher_pass is not set here" in result.output


# ---- status: a local repository does not survive the box --------------------------------------------------


def test_status_notes_a_local_repository_does_not_survive_the_box(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "postgressor.toml").write_text('provider = "local"\n')
    state = open_state(tmp_path / ".postgressor", "default", "local")
    state.set_host(HostRecord("127.0.0.1", 2222, "root", "k"))
    state.pg_version = 15
    state.save()
    postgres = json.dumps({"version": "15.8", "settings": {}, "slots": []})
    monkeypatch.setattr(status_check, "power_state", lambda settings, state: "running")
    monkeypatch.setattr(status_check, "run", lambda host, script, timeout=60: CommandResult(
        0, f"service=active\n{postgres}\n", ""))  # fmt: skip
    monkeypatch.setattr(status_check, "backup_status", lambda host: {"last_backup": None, "archiver": None})
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert "note: the backup repository is on the box's own disk" in result.output
    assert "does not survive the loss of the box" in result.output
    report = status_check.status(load_settings(), "default")
    assert report["notes"] == [status_check.LOCAL_REPOSITORY_NOTE] and "error" not in report
    s3 = load_settings(backup={**S3, "cipher_pass": PASS})
    assert "notes" not in status_check.status(s3, "default")


def test_status_warns_about_a_short_restore_until_a_backup_after_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "postgressor.toml").write_text('provider = "local"\n')
    state = open_state(tmp_path / ".postgressor", "default", "local")
    state.set_host(HostRecord("127.0.0.1", 2222, "root", "k"))
    state.pg_version = 15
    state.short_restore = {"at": "2026-12-02T04:50:00+00:00", "line": "the restore stopped short of the archive: "
                           "recovery ended at 0/5000098 on timeline 1"}  # fmt: skip
    state.save()
    postgres = json.dumps({"version": "15.8", "settings": {}, "slots": []})
    last: dict[str, Any] = {"label": "20261202-013000F", "type": "full", "stop": "2026-12-02T01:31:00+00:00"}
    monkeypatch.setattr(status_check, "power_state", lambda settings, state: "running")
    monkeypatch.setattr(status_check, "run", lambda host, script, timeout=60: CommandResult(
        0, f"service=active\n{postgres}\n", ""))  # fmt: skip
    monkeypatch.setattr(status_check, "backup_status", lambda host: {"last_backup": last, "archiver": None})
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output  # a warning: the restore itself already failed once
    assert "warning: the restore of 2026-12-02T04:50:00+00:00 stopped short of the archive: recovery ended at " \
           "0/5000098" in " ".join(result.output.split())
    last["stop"] = "2026-12-02T05:10:00+00:00"
    assert "warnings" not in status_check.status(load_settings(), "default")
