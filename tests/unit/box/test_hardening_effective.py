"""The hardening check's failure, run by a real shell over a copy of the box's sshd layout: one line, naming the
files that set the key in the order sshd reads them (box/operations.py hardening_effective)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fake_host import FakeHost

from postgressor.box import operations
from postgressor.box.deploys.base import SSHD_EFFECTIVE

ENFORCED = {"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitemptypasswords": "no",
            "permitrootlogin": "without-password", "pubkeyauthentication": "yes", "fail2ban-sshd": "on",
            "unattended-upgrade": "1"}  # fmt: skip


def failure(seen: dict[str, str], etc_ssh: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess[str]:
    fake = FakeHost({"EffectiveHardening": seen})
    monkeypatch.setattr(operations, "host", fake)
    (command,) = operations.hardening_effective._inner(
        sshd=SSHD_EFFECTIVE, fail2ban_jail=True, unattended_upgrades=True
    )
    script = str(command).replace("/etc/ssh", str(etc_ssh))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def test_a_drop_in_read_first_is_named_before_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sshd_config.d").mkdir()
    (tmp_path / "sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n#PasswordAuthentication yes\n")
    (tmp_path / "sshd_config.d" / "00-aaa-image.conf").write_text("  PasswordAuthentication=yes\n")
    (tmp_path / "sshd_config.d" / "00-postgressor.conf").write_text("PasswordAuthentication no\n")
    (tmp_path / "sshd_config.d" / "60-other.conf").write_text("X11Forwarding no\n")
    proc = failure({**ENFORCED, "passwordauthentication": "yes"}, tmp_path, monkeypatch)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    d = tmp_path / "sshd_config.d"
    assert f"set in {d}/00-aaa-image.conf {d}/00-postgressor.conf, read in that order" in proc.stderr
    assert "sshd passwordauthentication is yes (want no)" in proc.stderr
    assert "60-other" not in proc.stderr and "/sshd_config " not in proc.stderr  # comments do not count


def test_services_not_enforcing_fail_without_naming_sshd_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = failure({**ENFORCED, "fail2ban-sshd": "off", "unattended-upgrade": "0"}, tmp_path, monkeypatch)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "fail2ban's sshd jail is not running" in proc.stderr
    assert "Unattended-Upgrade is 0 (want 1)" in proc.stderr and "set in" not in proc.stderr


def test_enforced_hardening_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHost({"EffectiveHardening": ENFORCED})
    monkeypatch.setattr(operations, "host", fake)
    assert list(operations.hardening_effective._inner(sshd=SSHD_EFFECTIVE, fail2ban_jail=True,
                                                      unattended_upgrades=True)) == []  # fmt: skip
    assert fake.noops == ["sshd -T, fail2ban and apt enforce the hardening"]
