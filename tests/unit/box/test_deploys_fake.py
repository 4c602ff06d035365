"""The deploys' generated commands, run through pyinfra's @fake connector (no server needed)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Inventory

from postgressor.box.converge import run_deploys
from postgressor.box.deploys.base import PGDG_KEY, base
from postgressor.box.deploys.postgres import postgresql
from postgressor.box.spec import Distro, box_spec
from postgressor.config import load_settings

BOOKWORM = Distro("debian", 12, "bookworm")


def stat_line(path: str) -> str:
    return f"user=root group=root mode=-rw------- atime=1 mtime=1 ctime=1 size=41 '{path}'"


def run_fake(responses: dict[Any, Any], **settings: Any) -> tuple[list[str], Any]:
    spec = box_spec(load_settings(**settings), BOOKWORM)
    data = {"fake_responses": responses, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/box", data)], {}))
    result = run_deploys(inventory, [(base, {"spec": spec}), (postgresql, {"spec": spec})], lambda n, r: None)
    host = next(iter(inventory))
    return [str(c) for c in host.connector.executed_commands], result


FRESH_BOX = {"/proc/meminfo": "2015496 2 16431572"}  # a 2 GB VM: everything else is absent

CONVERGED = {
    "/proc/meminfo": "8388608 4 83886080",
    "ufw status verbose": [
        "Status: active",
        "Default: deny (incoming), allow (outgoing), disabled (routed)",
        "22/tcp                     ALLOW IN    Anywhere",
        "80/tcp                     ALLOW IN    Anywhere",
        "443/tcp                    ALLOW IN    Anywhere",
        "22/tcp (v6)                ALLOW IN    Anywhere (v6)",
    ],
    "secrets/app.password": stat_line("/etc/postgressor/secrets/app.password"),
    "secrets/electric.password": stat_line("/etc/postgressor/secrets/electric.password"),
    "sshd -T": ["passwordauthentication no", "kbdinteractiveauthentication no", "permitemptypasswords no",
                "permitrootlogin without-password", "pubkeyauthentication yes", "fail2ban-sshd on",
                "unattended-upgrade 1"],
    "pg_has_role": "t",
    "has_database_privilege": "t",
    "rolbypassrls": "t",
}


def test_fresh_box_installs_everything_in_one_apt_transaction() -> None:
    commands, result = run_fake(FRESH_BOX, provider="local")
    installs = [c for c in commands if "apt-get" in c and " install " in c]
    assert len(installs) == 1
    for package in ("postgresql-15", "fail2ban", "ufw", "unattended-upgrades", "python3-systemd"):
        assert package in installs[0]
    assert "DPkg::Lock::Timeout=300" in installs[0]
    assert not result.failed


def test_fresh_box_firewall_opens_ssh_before_enabling() -> None:
    commands, _ = run_fake(FRESH_BOX, provider="local")
    ufw = [c for c in commands if c.startswith("sh -c 'ufw") or ("ufw " in c and "status" not in c)]
    joined = "\n".join(ufw)
    assert "ufw default deny incoming" in joined
    assert joined.index("ufw allow 22/tcp") < joined.index("ufw --force enable")
    assert "ufw allow 80/tcp" in joined and "ufw allow 443/tcp" in joined
    assert "5432" not in joined


def test_small_box_gets_swap_and_big_box_does_not() -> None:
    commands, _ = run_fake(FRESH_BOX, provider="local")
    assert any("mkswap /swapfile" in c for c in commands)
    commands, _ = run_fake(CONVERGED, provider="local")
    assert not any("mkswap" in c for c in commands)


def run_swap_command(tmp_path: Path, free_mb: int, fallocate_ok: bool) -> subprocess.CompletedProcess[str]:
    """The generated swap command, run here against stand-in df/fallocate/mkswap/swapon/swapoff."""
    commands, _ = run_fake(FRESH_BOX, provider="local")
    command = next(c for c in commands if "mkswap /swapfile" in c).replace("/swapfile", str(tmp_path / "swapfile"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    tools = {
        "df": f"echo Avail; echo {free_mb}M",
        "fallocate": 'touch "$3"; ' + ("exit 0" if fallocate_ok else "echo 'No space left on device' >&2; exit 1"),
        "mkswap": "exit 0", "swapon": "exit 0", "swapoff": "exit 1",
    }  # fmt: skip
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(command, shell=True, capture_output=True, text=True, env=env)


def test_swap_is_refused_with_the_fix_when_the_disk_is_too_small(tmp_path: Path) -> None:
    proc = run_swap_command(tmp_path, free_mb=2500, fallocate_ok=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "only 2500 MB free on the disk, too little for a 2048 MB swap file; grow the disk, or lower "
        "hardening.swap_mb (hardening.swap_below_mb = 0 turns swap off)"
    )
    assert not (tmp_path / "swapfile").exists()


def test_a_failed_swap_file_is_removed_and_a_good_one_kept(tmp_path: Path) -> None:
    failed = run_swap_command(tmp_path / "a", free_mb=9000, fallocate_ok=False)
    assert failed.returncode == 1 and not (tmp_path / "a" / "swapfile").exists()
    made = run_swap_command(tmp_path / "b", free_mb=9000, fallocate_ok=True)
    assert made.returncode == 0 and (tmp_path / "b" / "swapfile").exists()


def test_passwords_are_generated_on_the_box_and_never_in_commands() -> None:
    commands, _ = run_fake(FRESH_BOX, provider="local")
    pw = [c for c in commands if "PASSWORD" in c]
    assert len(pw) == 2
    for command in pw:
        assert "/dev/urandom" in command and "umask 077" in command
        # the only password material is read from the file inside the shell, never a literal
        assert not re.search(r"PASSWORD \$\$[A-Za-z0-9]{8,}", command)


def test_converged_box_runs_no_changing_command() -> None:
    commands, result = run_fake(CONVERGED, provider="local")
    changed = [op.name for op in result.operations if op.status == "changed"]
    # pyinfra's own ops (apt, files, postgres.*) see an empty fake box, so only ours are checked here
    ours = {"Firewall: only SSH, HTTP, HTTPS", "Password for app", "Password for electric",
            "electric may act as the table owner", "electric may create publications",
            "Finish an interrupted package run", "app may act as the Supabase roles",
            "electric bypasses row level security", "service_role bypasses row level security",
            "Hardening in effect (sshd -T, fail2ban, apt)"}
    assert not ours & set(changed), changed
    assert not any("ufw allow" in c or "ALTER ROLE" in c or "GRANT" in c for c in commands), commands


def test_firewall_removes_rules_it_no_longer_wants() -> None:
    responses = dict(CONVERGED)
    responses["ufw status verbose"] = [*CONVERGED["ufw status verbose"], "8080/tcp   ALLOW IN    Anywhere"]
    commands, _ = run_fake(responses, provider="local")
    assert any("ufw delete allow 8080/tcp" in c for c in commands)


def test_interrupted_dpkg_is_repaired_first() -> None:
    commands, _ = run_fake({**FRESH_BOX, "/var/lib/dpkg/updates": "0001"}, provider="local")
    repair = next(i for i, c in enumerate(commands) if "dpkg --configure -a" in c)
    install = next(i for i, c in enumerate(commands) if "apt-get" in c and " install " in c)
    assert repair < install


def test_config_written_but_never_loaded_is_applied() -> None:
    responses = {
        **CONVERGED,
        "stat -c %Y": "2000000000",  # config files newer than...
        "pg_conf_load_time()))": "1000000000",  # ...the last reload
    }
    commands, _ = run_fake(responses, provider="local")
    assert any("systemctl reload postgresql@15-main" in c for c in commands)


@pytest.mark.parametrize("extension", ["vector"])
def test_distro_without_package_is_refused_before_touching(extension: str) -> None:
    from postgressor.errors import UsageError

    asked = load_settings(provider="local", postgres={"extensions": [extension], "source": "distro"})
    with pytest.raises(UsageError, match=r"no package in debian 12's own archive; set postgres\.source = 'pgdg'"):
        box_spec(asked, BOOKWORM)
    assert box_spec(load_settings(provider="local", postgres={"extensions": [extension]}), BOOKWORM).source == "pgdg"


def test_pgdg_adds_the_repository_and_versioned_packages() -> None:
    commands, _ = run_fake(FRESH_BOX, provider="local", postgres={"source": "pgdg", "extensions": ["vector"]})
    joined = "\n".join(commands)
    assert "bookworm-pgdg main" in joined
    assert "postgresql-17-pgvector" in joined
    assert 'CREATE EXTENSION IF NOT EXISTS "vector"' in joined


def test_contrib_extensions_go_to_schema_extensions_as_on_supabase() -> None:
    commands, _ = run_fake(FRESH_BOX, provider="ssh", ssh={"host": "h"}, postgres={"extensions": ["pgcrypto"]})
    joined = "\n".join(commands)
    assert "CREATE SCHEMA IF NOT EXISTS extensions AUTHORIZATION" in joined
    assert 'CREATE EXTENSION IF NOT EXISTS "pgcrypto" WITH SCHEMA extensions' in joined


def test_a_failing_operation_is_reported_with_its_output() -> None:
    from pyinfra.api.deploy import deploy
    from pyinfra.operations import server

    @deploy("Demo")
    def demo() -> None:
        server.shell(name="works", commands=["echo fine"])
        server.shell(name="breaks", commands=["explode-now"])
        server.shell(name="never reached", commands=["echo later"])

    data = {"fake_responses": {"explode-now": {"success": False, "stderr": "disk is full"}}, "fake_delay": 0}
    result = run_deploys(Inventory(([("@fake/box", data)], {})), [(demo, {})], lambda n, r: None)
    statuses = [(op.name, op.status) for op in result.operations]
    assert statuses == [("Demo | works", "changed"), ("Demo | breaks", "failed")]
    assert result.failed[0].error == "disk is full"


def test_pgdg_key_directory_is_made_before_the_key_is_written() -> None:
    commands, _ = run_fake(FRESH_BOX, provider="local", postgres={"source": "pgdg"})
    key_dir = PGDG_KEY.rsplit("/", 1)[0]
    made = next((i for i, c in enumerate(commands) if f"mkdir -p {key_dir}" in c), None)
    written = next(i for i, c in enumerate(commands) if "mv " in c and PGDG_KEY in c)
    assert made is not None and made < written, "nothing creates the key's directory on a fresh image"


def test_a_restore_from_another_path_comes_before_the_stanza_and_the_first_backup() -> None:
    from dataclasses import replace

    from postgressor.box.deploys.backup import backup

    s3 = {"s3_endpoint": "s3.example.com", "s3_region": "eu", "s3_bucket": "b", "s3_key": "AKIAEXAMPLEKEY0000001",
          "s3_key_secret": "x" * 40, "s3_path": "/new", "cipher_pass": "p" * 40}  # fmt: skip
    spec = box_spec(load_settings(provider="local", backup=s3), BOOKWORM)
    assert spec.backup is not None
    spec = replace(spec, backup=replace(spec.backup, restore_from="/old"))
    info = ('[{"name":"main","status":{"code":0,"message":"ok"},"db":[{"version":"15"}],"backup":[{"label":'
            '"20261130-010203F","type":"full","timestamp":{"start":1,"stop":2},"database":{"id":1}}]}]')
    responses = {**FRESH_BOX, "--repo1-path=/old --io-timeout=10 --output=json info": info}
    data = {"fake_responses": responses, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/box", data)], {}))
    result = run_deploys(inventory, [(backup, {"spec": spec})], lambda n, r: None)
    commands = [str(c) for c in next(iter(inventory)).connector.executed_commands]
    restore = next(i for i, c in enumerate(commands) if "--repo1-path=/old" in c and " restore;" in c)
    stanza = next(i for i, c in enumerate(commands) if "stanza-create 2>&1" in c)
    first_backup = next(i for i, c in enumerate(commands) if "--type=full backup" in c)
    assert restore < stanza < first_backup, commands
    assert not result.failed
