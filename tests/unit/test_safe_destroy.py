"""``destroy`` loses no data: refusals, the prompt, and the final verified S3 backup (a recorded SSH runner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor import lifecycle
from postgressor.checks import backups as health
from postgressor.cli import app, common
from postgressor.config import load_settings
from postgressor.day2 import destroy as safe_destroy
from postgressor.remote.ssh import CommandResult
from postgressor.state import HostRecord, StackState, load_state, open_state

S3 = {"s3_endpoint": "fsn1.your-objectstorage.com", "s3_region": "fsn1", "s3_bucket": "my-backups",
      "s3_key": "AKIAEXAMPLEKEY1234", "s3_key_secret": "s3cr3t-Value-That-Must-Not-Leak"}  # fmt: skip
# Real pgBackRest 2.45 outputs of the box's own commands (restorable_fixtures/README.md says how they were made):
# the final backup's `info --set`, which `info` lists alone after it, and its range 0000000100000000000000FF to
# 000000010000000100000004, which crosses the wrap of the segment numbers.
FIXTURES = Path(__file__).parent / "restorable_fixtures"
LABEL = "20261201-025606F"
WAL_START, WAL_STOP = "0000000100000000000000FF", "000000010000000100000004"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


S3_CONF = ("repo1-type=s3\nrepo1-path=/pgbackrest\nrepo1-s3-endpoint=fsn1.your-objectstorage.com\n"
           "repo1-s3-bucket=my-backups\n")


class FakeProvider:
    def __init__(self, host: HostRecord) -> None:
        self.host = host
        self.destroyed = False

    def ensure_running(self) -> HostRecord:
        return self.host

    def destroy(self) -> list[str]:
        self.destroyed = True
        return ["deleted server 4711"]


class Box:
    """A recorded SSH runner: each command gets the answer of the first pattern it contains."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def __call__(self, host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
        self.commands.append(command)
        for pattern, (status, out) in self.answers.items():
            if pattern in command:
                return CommandResult(status, out, "")
        raise AssertionError(f"unexpected command on the box: {command}")


HEALTHY = {"grep -E '^repo1-": (0, S3_CONF), "systemctl list-units": (0, ""), "--type=full backup": (0, "backup ok"),
           "--output=json info": (0, fixture("info_set.json")), f"--set={LABEL} info": (0, fixture("info_set.json")),
           "repo-ls": (0, fixture("listings.json")), " verify": (0, fixture("verify_ok.txt")),
           "--stanza=main check": (0, "")}  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("POSTGRESSOR_BACKUP__S3_KEY", "POSTGRESSOR_BACKUP__S3_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def make_stack(project: Path, provider: str = "hetzner", deployed: bool = True) -> None:
    state = open_state(project / ".postgressor", "demo", provider)
    state.pg_version = 15 if deployed else None
    state.set_host(HostRecord("203.0.113.7", 22, "root", str(project / "id"), "ssh-ed25519 AAAA"))


def config(project: Path, backup: dict[str, Any] | None = None) -> None:
    lines = ["[backup]"] + [f"{k} = {json.dumps(v)}" for k, v in (backup or {}).items()]
    (project / "postgressor.toml").write_text("\n".join(lines) + "\n")


def wire(monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[int, str]]) -> tuple[FakeProvider, Box]:
    provider = FakeProvider(HostRecord("203.0.113.7", 22, "root", "k", "ssh-ed25519 AAAA"))
    box = Box(answers)
    monkeypatch.setattr(lifecycle, "get_provider", lambda settings, state, log: provider)
    monkeypatch.setattr(health, "run", box)
    return provider, box


def destroy(*flags: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["--stack", "demo", "destroy", *flags], input=stdin)


def kept(project: Path) -> bool:
    return load_state(project / ".postgressor", "demo") is not None


@pytest.mark.parametrize(("backup", "says"), [({}, "/var/lib/pgbackrest"), ({"enabled": False}, "has no backups")])
def test_backups_only_on_the_box_refuse_even_with_yes(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                     backup: dict[str, Any], says: str) -> None:  # fmt: skip
    make_stack(project)
    config(project, backup)
    provider, box = wire(monkeypatch, {})
    result = destroy("--yes")
    assert result.exit_code == 2, result.output
    assert says in result.output and "--skip-final-backup" in result.output and "Traceback" not in result.output
    assert not provider.destroyed and kept(project) and box.commands == []


def test_skip_final_backup_destroys_and_says_so(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(project)
    config(project)
    provider, box = wire(monkeypatch, {})
    result = destroy("--yes", "--skip-final-backup")
    assert result.exit_code == 0, result.output
    assert provider.destroyed and not kept(project) and box.commands == []


def test_s3_takes_a_verified_final_backup_first_and_names_what_remains(project: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(project)
    config(project, S3)
    provider, box = wire(monkeypatch, HEALTHY)
    result = CliRunner().invoke(app, ["--json", "--stack", "demo", "destroy", "--yes"])
    assert result.exit_code == 0, result.output
    order = [next(p for p in HEALTHY if p in c) for c in box.commands]
    # repository check, no scheduled backup running, full backup, info; then the proof: info of that set, one
    # listing of its WAL, verify; then the WAL written since is archived, and the server goes
    assert order == list(HEALTHY)
    assert provider.destroyed and not kept(project)
    removed = json.loads(result.stdout)["removed"]
    assert removed[0] == "deleted server 4711"
    assert "s3://my-backups/pgbackrest on fsn1.your-objectstorage.com" in removed[-1] and LABEL in removed[-1]
    verified = (f"verified: backup {LABEL} and the 6 WAL segments it needs to reach consistency ({WAL_START} "
                f"to {WAL_STOP}) are in the repository, each once, and pgbackrest verify read them back "
                "intact")  # fmt: skip
    assert verified in removed[-1]
    assert "backup.cipher_pass" in removed[-1] and "'postgressor restore'" not in removed[-1]  # no false promise
    assert S3["s3_key_secret"] not in result.output and not any(S3["s3_key"] in c for c in box.commands)


@pytest.mark.parametrize(("broken", "answer", "says"), [
    (" verify", (29, fixture("verify_aborted.txt")),
     f"the final backup {LABEL} did not verify: pgbackrest verify could not run: zst error"),
    (" verify", (0, fixture("verify_set_invalid.txt")), "lists it with status invalid, 966 of 967 files valid"),
    ("--type=full backup", (1, "ERROR: [082]: WAL segment was not archived before the 60000ms timeout"),
     "the final full backup failed"),
    ("grep -E '^repo1-", (0, "repo1-path=/var/lib/pgbackrest\n"), "on its own disk"),
])  # fmt: skip
def test_a_failed_final_backup_destroys_nothing(project: Path, monkeypatch: pytest.MonkeyPatch, broken: str,
                                                answer: tuple[int, str], says: str) -> None:  # fmt: skip
    make_stack(project)
    config(project, S3)
    provider, _ = wire(monkeypatch, {**HEALTHY, broken: answer})
    result = destroy("--yes")
    assert result.exit_code == 1, result.output
    assert says in result.output and not provider.destroyed and kept(project)


def test_s3_with_skip_destroys_without_a_backup_and_names_the_bucket(project: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(project)
    config(project, S3)
    provider, box = wire(monkeypatch, {})
    result = destroy("--yes", "--skip-final-backup")
    assert result.exit_code == 0 and provider.destroyed and box.commands == []
    assert "s3://my-backups/pgbackrest" in result.output


@pytest.mark.parametrize(("backup", "fate"), [(S3, "they survive the server")])
def test_the_prompt_says_where_backups_live_and_if_they_survive(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                               backup: dict[str, Any], fate: str) -> None:  # fmt: skip
    make_stack(project)
    config(project, backup)
    monkeypatch.setattr(common, "interactive", lambda: True)
    provider, _ = wire(monkeypatch, HEALTHY)
    result = destroy(stdin="n\n")
    assert result.exit_code == 1 and not provider.destroyed
    shown = " ".join(result.output.split())
    assert "Backups: s3://my-backups/pgbackrest on fsn1.your-objectstorage.com; " + fate in shown


def test_a_server_postgressor_did_not_create_is_forgotten_not_refused(project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(project, provider="ssh")
    config(project)
    monkeypatch.setattr(common, "interactive", lambda: True)
    provider, _ = wire(monkeypatch, {})
    result = destroy(stdin="y\n")
    assert result.exit_code == 0 and "keeps running with its data" in result.output and provider.destroyed


def test_a_stack_never_deployed_holds_no_data(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(project, deployed=False)
    config(project)
    provider, _ = wire(monkeypatch, {})
    assert destroy("--yes").exit_code == 0 and provider.destroyed


@pytest.mark.parametrize(("deployed", "backup", "says"), [
    (True, {"enabled": False}, "starts EMPTY, without your database, and it had no backups"),
    (True, {}, "the backups kept on its disk (/var/lib/pgbackrest) are gone with it"),
    (True, S3, "survives only in the backups in s3://my-backups/pgbackrest on fsn1.your-objectstorage.com"),
    (False, S3, "(no database was deployed on it); the new one starts empty"),
])  # fmt: skip
def test_a_gone_server_says_where_the_data_could_come_from(project: Path, deployed: bool, backup: dict[str, Any],
                                                           says: str) -> None:  # fmt: skip
    make_stack(project, deployed=deployed)
    state = load_state(project / ".postgressor", "demo")
    assert state is not None
    state.add("server", "4711")
    config(project, backup)
    line = safe_destroy.gone(state, safe_destroy.backups_of(load_settings()), "Hetzner")
    assert line.startswith("the recorded server 4711 no longer exists at Hetzner") and says in line


def test_the_kept_line_says_why_no_final_backup_was_taken() -> None:
    s3 = safe_destroy.Backups("s3", "s3://b/p on e")
    yours = StackState("default", "ssh", Path("s.json"), pg_version=15)
    assert safe_destroy.remaining(None, s3, safe_destroy.no_final_backup(yours, False)).endswith(
        "(no final backup was taken: the server is yours and keeps running with its data)")
    empty = StackState("default", "hetzner", Path("s.json"))
    assert "no database was deployed" in safe_destroy.no_final_backup(empty, False)
    held = StackState("default", "hetzner", Path("s.json"), pg_version=15)
    assert safe_destroy.no_final_backup(held, True) == "--skip-final-backup"


def test_wal_that_cannot_be_archived_after_the_final_backup_destroys_nothing(project: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(project)
    config(project, S3)
    provider, box = wire(monkeypatch, {**HEALTHY, "--stanza=main check": (82, "ERROR: [082]: WAL segment "
                                       "000000010000000100000005 was not archived before the 60000ms timeout")})
    result = CliRunner().invoke(app, ["--stack", "demo", "destroy", "--yes"])
    assert result.exit_code == 1 and not provider.destroyed and kept(project)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the final backup {LABEL} is verified, but the WAL written since could not be archived: WAL segment "
        "000000010000000100000005 was not archived before the 60000ms timeout; fix archiving (postgressor backup "
        "check), or pass --skip-final-backup to destroy without it; nothing was destroyed")
    assert "logical_emit_message" in box.commands[-1]  # a record first: the switch always closes a new segment
