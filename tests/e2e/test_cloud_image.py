"""The golden box, provisioned by `postgressor up --provider local` with `local.image` set: a cloud image booted
with a NoCloud seed, as the clouds hand out their images.

The image is tests/cloudimage_builder.py's stand-in for Debian's genericcloud qcow2 (its own bootloader,
cloud-init, no keys): the VM gets its root key, hostname and host keys only from postgressor's seed. This module
checks what cloud-init and the image did on its own copy of the golden box (conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cloudimage_builder
from postgressor.vm.machine import running_pid
from vmstack import Stack


@pytest.fixture(scope="module")
def image_stamp(cloud_image: Path) -> tuple[int, int]:
    stat = cloud_image.stat()
    return stat.st_size, stat.st_mtime_ns


def test_up_deployed_postgres_on_the_cloud_image(stack: Stack, image_stamp: tuple[int, int]) -> None:
    # image_stamp is taken here, before anything runs, for the last test's comparison
    assert stack.up_result["deploy"]["failed"] == 0
    assert stack.up_result["postgres"]["version"] == 15
    assert stack.sh("systemctl is-active postgresql@15-main").stdout.strip() == "active"


def test_the_vm_booted_through_the_images_own_bootloader(stack: Stack, cloud_image: Path) -> None:
    cmdline = stack.sh("cat /proc/cmdline").stdout
    assert f"root=LABEL={cloudimage_builder.ROOT_LABEL}" in cmdline
    assert "postgressor.authorized_key" not in cmdline
    vm = stack.state.find("vm")
    assert vm is not None and vm.details["image"] == str(cloud_image)


def test_cloud_init_configured_it_from_the_nocloud_seed(stack: Stack) -> None:
    result = json.loads(stack.sh("cat /run/cloud-init/result.json").stdout)
    assert "DataSourceNoCloud" in result["v1"]["datasource"] and not result["v1"]["errors"]
    assert stack.sh("hostname").stdout.strip() == "postgressor-default"
    root_gb = int(stack.sh("df --output=size -BG / | tail -1").stdout.strip().rstrip("G"))
    assert root_gb >= 14  # grown from the image's 2 GB to the 16 GB overlay
    public_key = (stack.state.stack_dir / "id_ed25519.pub").read_text().split()[1]
    authorized = stack.sh("cat /root/.ssh/authorized_keys").stdout
    line = next(entry for entry in authorized.splitlines() if public_key in entry)
    assert line.startswith("ssh-ed25519 ")  # no "Please login as the user debian" command prefix
    assert stack.host.host_key.startswith("ssh-ed25519 ")


def test_the_box_is_hardened_like_any_other(stack: Stack) -> None:
    sshd = stack.sh("sshd -T").stdout.lower().splitlines()
    assert "passwordauthentication no" in sshd and "permitrootlogin without-password" in sshd
    assert stack.sh("systemctl is-active fail2ban").stdout.strip() == "active"


def test_status_passes(stack: Stack) -> None:
    status = stack.cli("status")
    assert status.returncode == 0, status.stderr


def test_destroy_removes_the_vm_and_leaves_the_image_untouched(
    stack: Stack, cloud_image: Path, image_stamp: tuple[int, int]
) -> None:
    stack_dir = stack.state.stack_dir
    assert running_pid(stack_dir / "qemu.pid") is not None
    stack.cli("destroy", "--yes", "--skip-final-backup", timeout=120)
    assert running_pid(stack_dir / "qemu.pid") is None
    assert not stack_dir.exists()
    assert not (stack.project / ".postgressor" / "default.json").exists()
    stat = cloud_image.stat()
    assert (stat.st_size, stat.st_mtime_ns) == image_stamp
