"""`up --restore-from`: the refusals before anything is made, the state it records, the stanza step's one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor import lifecycle as stacks
from postgressor.box.deploys.backup import foreign_stanza, stanza_command
from postgressor.box.operations import digest
from postgressor.box.spec import BackupSpec
from postgressor.cli import app
from postgressor.config import load_settings
from postgressor.state import HostRecord, StackState, open_state

S3_TOML = ('provider = "local"\n[backup]\ns3_endpoint = "fsn1.your-objectstorage.com"\ns3_region = "fsn1"\n'
           's3_bucket = "b"\ns3_path = "/new-stack"\n')  # fmt: skip
ENV = {"POSTGRESSOR_BACKUP__S3_KEY": "AKIAEXAMPLE", "POSTGRESSOR_BACKUP__S3_KEY_SECRET": "s3cr3t-value",
       "POSTGRESSOR_BACKUP__CIPHER_PASS": "u8+Yc/Qf0rT3kWz+9mN/aB4dE7gH1jL5pS8vX2yZ6cR0"}  # fmt: skip


@pytest.fixture(autouse=True)
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "postgressor.toml").write_text(S3_TOML)
    return tmp_path


def refused(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["up", "--restore-from", "/new-stack"], "error: --restore-from /new-stack is this stack's own "
         "backup.s3_path: give the new stack another backup.s3_path, so it never writes into the old stack's history"),
        # one spelling per path: the own-path check cannot be dodged, and pgBackRest gets no '//' or '..'
        (["up", "--restore-from", "/new-stack/"], "error: --restore-from '/new-stack/': use an absolute path"),
        (["up", "--restore-from", "//new-stack"], "error: --restore-from '//new-stack': use an absolute path"),
        (["up", "--restore-from", "/new-stack\n"], "error: --restore-from '/new-stack\\n': use an absolute path"),
        (["up", "--restore-from", "/x/../new-stack"], "use an absolute path"),
        (["up", "--restore-from", "/old", "--target-time", "9999-12-31T23:59:59-05:00"], "is not a time"),
        (["up", "--restore-from", "/old", "--target-time", "0001-01-01T00:00:00+05:00"], "is not a time"),
        (["up", "--restore-from", "old stack"], "error: --restore-from 'old stack': use an absolute path"),
        (["up", "--target-time", "2026-11-25T12:00:00Z"], "error: --target-time needs --restore-from PATH"),
        (["up", "--restore-from", "/old", "--target-time", "soon"], "error: --target-time 'soon' is not a time"),
        (["up", "--restore-from", "/old", "--target-time", "2999-01-01T00:00:00Z"],
         "error: --target-time 2999-01-01 00:00:00.000000+00 is in the future; leave it out to restore the newest "
         "archived state"),
    ],
)
def test_refused_before_anything_is_made(project: Path, args: list[str], expected: str) -> None:
    assert expected in refused(args)
    assert not (project / ".postgressor").exists()  # no state, key or server


def test_refused_without_an_s3_repository(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name)
    (project / "postgressor.toml").write_text('provider = "local"\n')
    assert "--restore-from reads an S3 repository" in refused(["up", "--restore-from", "/old"])


def test_refused_on_a_stack_that_has_a_server(project: Path) -> None:
    settings = load_settings()
    state = open_state(settings.state_dir, "default", "local")
    state.set_host(HostRecord("127.0.0.1", 2222, "root", "key"))
    line = refused(["up", "--restore-from", "/old"])
    assert line == ("error: stack 'default' already has a server: a running stack restores with 'postgressor "
                    "restore'; --restore-from makes a new stack (--stack NEW)")


def test_an_unfinished_restore_is_resumed_and_recorded_without_secrets(project: Path) -> None:
    settings = load_settings()
    source = stacks.restore_source(settings, "default", "/old", "2026-11-25T14:00:00+02:00")
    assert source == {"path": "/old", "target": "2026-11-25 12:00:00.000000+00"}
    state = open_state(settings.state_dir, "default", "local")
    state.restored_from = dict(source)
    state.set_host(HostRecord("127.0.0.1", 2222, "root", "key"))
    assert stacks.restore_source(settings, "default", "/old", "2026-11-25T12:00:00Z") == source  # resumed
    with pytest.raises(Exception, match="already has a server"):
        stacks.restore_source(settings, "default", "/other", None)
    text = state.path.read_text()
    assert '"restored_from"' in text and "/old" in text and ENV["POSTGRESSOR_BACKUP__CIPHER_PASS"] not in text


def test_the_deploy_restores_what_the_state_records() -> None:
    spec = load_settings(provider="local")
    from postgressor.box.spec import Distro, box_spec

    box = box_spec(spec, Distro("debian", 12, "bookworm"))
    state = open_state(spec.state_dir, "default", "local")
    assert stacks.with_restore(box, state) is box
    state.restored_from = {"path": "/old", "target": ""}
    restored = stacks.with_restore(box, state).backup
    assert restored is not None and (restored.restore_from, restored.restore_target) == ("/old", "")
    # Done once its label is recorded: a server that replaces this one later starts from this stack's backups.
    state.restored_from["label"] = "20261125-040122F"
    assert stacks.with_restore(box, state) is box


def test_the_stanza_step_names_the_way_out_of_a_foreign_stanza() -> None:
    spec = BackupSpec(15, 2, 6, "Sun", "Mon", 60, s3_endpoint="e", s3_bucket="b", s3_path="/pgbackrest")
    line = foreign_stanza(spec)
    assert line == ("backup.s3_path /pgbackrest already holds another database's backups: to restore them here, "
                    "use 'postgressor up --restore-from /pgbackrest' with a new backup.s3_path; else point "
                    "backup.s3_path at an empty path")
    command = stanza_command(spec)
    assert "stanza-create" in command and "*'[028]'*" in command
    # the integration test (tests/integration/test_restore_new_stack.py) runs it against a real foreign stanza




# The restored marker after recovery stopped at 0/5000098 while the archive held segments up to …09
SHORT_MARKER = "\n".join([f"{digest('/old', '')} 20261125-040122F", "000000010000000000000009",
                          json.dumps({"history": "1\t0/5000098\tno recovery target specified\n",
                                      "segment_size": 16777216})])  # fmt: skip


def test_the_run_that_restores_records_where_recovery_stopped_and_fails_once(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore to the end of the archive that stopped at a gap: the label and the shortfall are recorded from
    the marker, `deploy` prints its report and exits 1 with the line; the next run, which restores nothing, passes
    (status keeps the warning: tests/unit/test_recovery_end.py)."""
    from postgressor.box.converge import DeployResult
    from postgressor.box.spec import Distro, box_spec
    from postgressor.remote.ssh import CommandResult

    settings = load_settings()
    state = open_state(settings.state_dir, "default", "local")
    state.restored_from = {"path": "/old", "target": ""}
    state.set_host(HostRecord("127.0.0.1", 2222, "root", "key"))
    spec = box_spec(load_settings(provider="local"), Distro("debian", 12, "bookworm"))
    read: list[str] = []

    def marker(host: HostRecord, command: str) -> CommandResult:
        read.append(command)
        return CommandResult(0, SHORT_MARKER, "")

    def deploy_host(settings: object, state: StackState, host: HostRecord, *args: object, **kwargs: object) -> object:
        if stacks.unfinished_restore(state):  # as the real one does after a successful pass
            stacks.record_restore(host, state)
        state.save()
        return spec, DeployResult()

    monkeypatch.setattr(stacks, "run", marker)
    monkeypatch.setattr(stacks, "deploy_host", deploy_host)
    monkeypatch.setattr(stacks, "get_provider", lambda *a: type("P", (), {
        "ensure_running": lambda self: HostRecord("127.0.0.1", 2222, "root", "key")})())  # fmt: skip
    first = CliRunner().invoke(app, ["--json", "deploy"])
    assert first.exit_code == 1, first.output
    assert "error: the restore stopped short of the archive: recovery ended at 0/5000098" in first.stderr
    assert '"ok": false' in first.stdout and "segment 000000010000000000000006 could not be read" in first.stdout
    assert read == ["cat /var/lib/postgressor/applied/restored-from 2>/dev/null"]
    saved = open_state(settings.state_dir, "default", "local")
    recorded = saved.restored_from
    assert recorded["label"] == "20261125-040122F" and "0/5000098" in recorded["short_of_archive"]
    assert saved.short_restore["line"] == recorded["short_of_archive"]  # status warns until a backup after it
    again = CliRunner().invoke(app, ["deploy"])
    assert again.exit_code == 0 and len(read) == 1, again.output


@pytest.mark.parametrize("restored", [True, False])
def test_a_pass_that_fails_after_the_restore_still_records_it(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                              restored: bool) -> None:  # fmt: skip
    """The real deploy_host, its pass failing (Electric, after `restored`): the label and the shortfall are
    recorded from the marker all the same, and the failure's line carries the shortfall; a pass that failed
    before the restore (no marker) records nothing, so the next run restores."""
    from postgressor.box.converge import DeployResult, OpReport
    from postgressor.box.spec import Distro
    from postgressor.remote.ssh import CommandResult

    settings = load_settings()
    state = open_state(settings.state_dir, "default", "local")
    state.restored_from = {"path": "/old", "target": ""}
    state.set_host(HostRecord("127.0.0.1", 2222, "root", "key"))
    failed = DeployResult([OpReport("Electric running", "failed", error="unit electric failed")])

    def run_deploys(inventory: object, deploys_for_box: Any, watch: object, **kwargs: object) -> DeployResult:
        deploys_for_box(object())
        return failed

    monkeypatch.setattr(stacks, "ssh_inventory", lambda host, known: None)
    monkeypatch.setattr(stacks, "run_deploys", run_deploys)
    monkeypatch.setattr(stacks, "read_box", lambda box: stacks.BoxFacts(Distro("debian", 12, "bookworm"), "3.11",
                                                                          "x86_64"))  # fmt: skip
    monkeypatch.setattr(stacks, "check_cipher_custody", lambda box, spec: None)
    monkeypatch.setattr(stacks, "deploys_for", lambda spec, found, host: [])
    marker = SHORT_MARKER if restored else ""
    monkeypatch.setattr(stacks, "run", lambda host, command: CommandResult(0 if restored else 1, marker, ""))
    monkeypatch.setattr(stacks, "get_provider", lambda *a: type("P", (), {
        "ensure_running": lambda self: HostRecord("127.0.0.1", 2222, "root", "key")})())  # fmt: skip
    result = CliRunner().invoke(app, ["deploy"])
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split())
    assert "error: operation 'Electric running' failed: unit electric failed; fix it and run 'postgressor deploy'" \
        in line
    saved = open_state(settings.state_dir, "default", "local")
    if restored:
        assert "; also, the restore stopped short of the archive: recovery ended at 0/5000098" in line
        assert saved.restored_from["label"] == "20261125-040122F" and saved.short_restore
    else:
        assert "also," not in line and "label" not in saved.restored_from and not saved.short_restore
