"""`up`/`deploy` reach the box one way: the OS, Python and CPU are pyinfra facts read in the deploy's connection."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.api import Inventory

from postgressor import lifecycle
from postgressor.box.converge import DeployResult, OpReport
from postgressor.box.deploys.base import base
from postgressor.box.deploys.postgres import postgresql
from postgressor.config import load_settings
from postgressor.errors import UsageError
from postgressor.remote import ssh
from postgressor.state import HostRecord, open_state

OS_RELEASE = ["/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', "ID=debian", 'VERSION_ID="12"',
              "VERSION_CODENAME=bookworm", "---"]  # fmt: skip
BOX = {"cloud-init status --wait": ["done 0"], "-release": OS_RELEASE, "sys.version_info": ["3.11"],
       "uname -m": ["aarch64"], "/proc/meminfo": "2015496 2 16431572"}  # fmt: skip


def fake_inventory(responses: dict[str, Any]) -> Inventory:
    return Inventory(([("@fake/box", {"fake_responses": responses, "fake_delay": 0, "fake_delay_jitter": 0})], {}))


def test_facts_are_read_after_the_boot_in_the_deploy_connection() -> None:
    inventory = fake_inventory(BOX)
    seen: list[lifecycle.BoxFacts] = []
    said: list[str] = []
    lifecycle.run_deploys(inventory, lambda box: seen.append(lifecycle.read_box(box)) or [], lambda n, r: None,
                          desired=lambda deploys: "d",
                          wait_ready=lambda box: lifecycle.wait_for_boot(box, said.append))  # fmt: skip
    assert said == ["reading the box (once its boot has finished: cloud-init, systemd's start jobs)"]
    assert seen[0].distro.name == "debian" and seen[0].distro.major == 12 and seen[0].distro.codename == "bookworm"
    assert (seen[0].python, seen[0].machine) == ("3.11", "aarch64")
    commands = [str(c) for c in next(iter(inventory)).connector.executed_commands]
    # First, before the converged record and its batch: cloud-init holds the apt lock on a fresh box, and a box
    # just powered on is still starting its units (read then, they look stopped and the pass would start them).
    assert "cloud-init status --wait" in commands[0] and "systemctl is-system-running --wait" in commands[0]
    assert any("converged.json" in c for c in commands[1:]), commands


def boot_wait(tmp_path: Path, systemctl_body: str) -> tuple[str, list[str]]:
    """Runs the BootFinished shell under sh with a stand-in systemctl (and no cloud-init) on PATH: (stdout, the
    lines the stand-in wrote to its log: its arguments, then "finished" if it was not cut off)."""
    import shutil
    import subprocess

    from postgressor.box.facts import BootFinished

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("timeout", "sleep"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    log = tmp_path / "calls"
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{systemctl_body}\necho finished >> {log}\nexit 1\n')
    systemctl.chmod(0o755)
    shell = [shutil.which("sh") or "/bin/sh", "-c", BootFinished().command()]
    done = subprocess.run(shell, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout, log.read_text().splitlines()


def test_the_boot_wait_returns_when_systemd_has_finished_starting(tmp_path: Path) -> None:
    """A stand-in systemctl still booting for a moment: "done" comes only after it returned, whatever state the
    boot ended in ("degraded", exit 1, counts)."""
    from postgressor.box.facts import BootFinished

    stdout, calls = boot_wait(tmp_path, "sleep 1; echo degraded")
    assert calls == ["is-system-running --wait", "finished"]
    assert stdout.splitlines()[-1:] == ["done 1"] and BootFinished().process(stdout.splitlines()) is True


def test_a_box_still_booting_after_the_wait_is_said_and_deployed_as_it_is() -> None:
    inventory = fake_inventory({**BOX, "cloud-init status --wait": ["done 124"]})  # `timeout` cut systemctl off
    said: list[str] = []
    result = lifecycle.run_deploys(inventory, lambda box: [], lambda n, r: None,
                                   wait_ready=lambda box: lifecycle.wait_for_boot(box, said.append))  # fmt: skip
    assert not result.failed
    assert said[-1] == "the box was still booting after 300 s (systemd's start jobs): going on as it is"


def test_a_boot_that_never_finishes_holds_the_deploy_only_for_the_systemd_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from postgressor.box import facts

    monkeypatch.setattr(facts, "SYSTEMD_BOOT_WAIT", 1)
    stdout, calls = boot_wait(tmp_path, "sleep 3600")
    assert calls == ["is-system-running --wait"]  # cut off by `timeout`, then the deploy goes on
    assert stdout.splitlines()[-1:] == ["done 124"] and facts.BootFinished().process(stdout.splitlines()) is False


def test_an_unsupported_os_is_one_usage_line() -> None:
    release = ["/etc/os-release", "ID=alpine", 'VERSION_ID="3.20"', "---"]

    def plan(box: Any) -> list[Any]:
        lifecycle.read_box(box)
        return []

    with pytest.raises(UsageError, match="supports Debian and Ubuntu"):
        lifecycle.run_deploys(fake_inventory({**BOX, "-release": release}), plan, lambda n, r: None)


def test_deploy_host_uses_no_second_connection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_paramiko(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the deploy must not open a paramiko session to read the box")

    monkeypatch.setattr(ssh, "run", no_paramiko)
    monkeypatch.setattr(ssh, "connect", no_paramiko)
    inventory = fake_inventory(BOX)
    monkeypatch.setattr(lifecycle, "ssh_inventory", lambda host, known_hosts: inventory)
    added: list[Any] = []
    monkeypatch.setattr(lifecycle, "deploys_for", lambda spec, found, host: added.append(found) or [])
    settings = load_settings(provider="local", backup={"enabled": False})
    state = open_state(tmp_path, "demo", "local")
    said: list[str] = []
    spec, result = lifecycle.deploy_host(settings, state, HostRecord("192.0.2.1", 22, "root", "k"),
                                         lambda n, r: None, dry_run=True, log=said.append)  # fmt: skip
    assert spec.distro.codename == "bookworm" and spec.pg_version == 15
    assert added[0].machine == "aarch64" and not result.failed
    assert state.pg_version is None  # a dry run records nothing
    commands = [str(c) for c in next(iter(inventory)).connector.executed_commands]
    assert "systemctl is-system-running --wait" in commands[0], commands  # the boot wait comes before any read
    assert said == ["reading the box (once its boot has finished: cloud-init, systemd's start jobs)"]


def test_deploys_follow_the_spec() -> None:
    facts = lifecycle.BoxFacts(lifecycle.Distro("debian", 12, "bookworm"), "3.11", "x86_64")
    spec = lifecycle.box_spec(load_settings(provider="local", backup={"enabled": False}), facts.distro)
    plan = lifecycle.deploys_for(spec, facts, HostRecord("192.0.2.1", 22, "root", "k"))
    assert [func for func, _ in plan] == [base, postgresql]



def test_a_refused_login_is_the_callers_to_fix_in_one_line(tmp_path: Path) -> None:
    """pyinfra's own text for a refused key becomes the one line `up` prints (exit 2), naming user and key."""
    from postgressor.box.converge import login_error, ssh_inventory
    from postgressor.errors import UsageError

    inventory = ssh_inventory(HostRecord("192.0.2.7", 2222, "nobody", str(tmp_path / "id")), tmp_path / "known_hosts")
    refused = login_error(inventory, "Authentication error (username=nobody, key=/k) (Authentication failed.)")
    assert isinstance(refused, UsageError)
    assert str(refused).startswith("SSH login as 'nobody' on 192.0.2.7:2222 with key ")
    assert "was refused" in str(refused)
    other = login_error(inventory, "Could not connect (timed out)")
    assert not isinstance(other, UsageError) and "192.0.2.7:2222" in str(other) and "timed out" in str(other)


def test_plan_on_a_pinned_ssh_host_plans_the_deploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The ssh provider always says which host it uses; that is no reason to skip the deploy's dry run.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "key").write_text("a key\n")
    (tmp_path / "postgressor.toml").write_text('provider = "ssh"\nstate_dir = "state"\n'
                                               '[ssh]\nhost = "203.0.113.7"\nkey_path = "key"\n')
    settings = load_settings(tmp_path / "postgressor.toml")
    state = open_state(settings.state_dir, "default", "ssh")
    state.set_host(HostRecord("203.0.113.7", 22, "root", "key", "ssh-ed25519 AAAA"))
    dry = DeployResult(operations=[OpReport("Base | Packages", "unchanged")], dry_run=True)
    monkeypatch.setattr(lifecycle, "preflight", lambda settings: None)
    monkeypatch.setattr(lifecycle, "deploy_host", lambda *a, **k: (SimpleNamespace(postgres_note=""), dry))
    result = lifecycle.plan(settings, "default", lambda message: None)
    assert result.note == "" and result.provider_steps == ["use root@203.0.113.7:22 (host key pinned)"]
    assert result.operations == [{"name": "Base | Packages", "status": "unchanged"}]
