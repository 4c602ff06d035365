"""The local provider's VM plumbing without booting anything: QEMU command lines, disks, the NoCloud seed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from postgressor.config import load_settings
from postgressor.errors import UsageError
from postgressor.providers.local import LocalProvider
from postgressor.state import open_state
from postgressor.vm import cloudimage, machine
from postgressor.vm.image import BaseImage

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk5c2VlZGtleWZvcnRlc3RzMDEyMzQ1Njc4OWFiY2Rl test"
PORTS = {22: 40022, 80: 40080, 443: 40443}


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def bootable_raw(path: Path, size: int = 1 << 20) -> Path:
    with path.open("wb") as disk:
        disk.truncate(size)
        disk.seek(510)
        disk.write(b"\x55\xaa")
    return path


def spec_for(tmp_path: Path, image: BaseImage | cloudimage.CloudImage) -> machine.VMSpec:
    return machine.VMSpec(directory=tmp_path / "vm", image=image, public_key=KEY, hostname="postgressor-t")


def option_values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def test_debootstrap_image_boots_its_kernel_with_the_key_on_the_command_line(tmp_path: Path) -> None:
    cmd = machine.qemu_command(spec_for(tmp_path, BaseImage(tmp_path / "img")), PORTS, "tcg")
    assert option_values(cmd, "-kernel") == [str(tmp_path / "img/vmlinuz")]
    assert "postgressor.authorized_key=" in option_values(cmd, "-append")[0]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in option_values(cmd, "-netdev")[0]


def test_cloud_image_boots_its_own_bootloader_with_the_seed_after_the_disk(tmp_path: Path) -> None:
    image = cloudimage.CloudImage(tmp_path / "cloud.qcow2", "qcow2", 2 << 30)
    spec = spec_for(tmp_path, image)
    cmd = machine.qemu_command(spec, PORTS, "tcg")
    assert "-kernel" not in cmd and "-append" not in cmd
    drives = option_values(cmd, "-drive")
    assert drives[0].startswith(f"file={spec.disk},if=virtio")
    assert drives[1] == f"file={spec.seed},if=ide,media=cdrom,readonly=on"
    assert option_values(cmd, "-smbios") == ["type=1,serial=ds=nocloud"]


def read_iso(path: Path) -> tuple[str, dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    label = iso.pvd.volume_identifier.decode().strip()
    files = {}
    for name in ("user-data", "meta-data"):
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        files[name] = out.getvalue().decode()
    iso.close()
    return label, files


def test_seed_is_a_cidata_volume_giving_root_the_key_and_no_passwords(tmp_path: Path) -> None:
    seed = cloudimage.write_seed(tmp_path / "seed.iso", public_key=KEY + "\n", instance_id="iid-x",
                                 hostname="postgressor-staging")  # fmt: skip
    label, files = read_iso(seed)
    assert label == "cidata"
    assert files["user-data"].startswith("#cloud-config\n")
    config = yaml.safe_load(files["user-data"])
    assert config == {"disable_root": False, "ssh_pwauth": False, "ssh_authorized_keys": [KEY]}
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "iid-x", "local-hostname": "postgressor-staging"}
    assert not (tmp_path / "seed.partial").exists()


def test_inspect_reads_format_and_size_of_a_qcow2(tmp_path: Path) -> None:
    path = tmp_path / "cloud.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "3G")
    image = cloudimage.inspect(path)
    assert (image.format, image.virtual_size, image.path) == ("qcow2", 3 << 30, path.resolve())


def test_inspect_accepts_a_raw_disk_with_a_partition_table(tmp_path: Path) -> None:
    image = cloudimage.inspect(bootable_raw(tmp_path / "cloud.raw"))
    assert (image.format, image.virtual_size) == ("raw", 1 << 20)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.qcow2", "does not exist"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "no partition table"),
    (lambda d: (d / "dir.qcow2").mkdir() or d / "dir.qcow2", "does not exist"),
])  # fmt: skip
def test_inspect_refuses_what_is_not_a_disk_image(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        cloudimage.inspect(make(tmp_path))
    assert "\n" not in str(err.value)


def test_inspect_refuses_an_image_with_a_backing_file(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "1G")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tmp_path / "base.qcow2"),
             str(tmp_path / "overlay.qcow2"))  # fmt: skip
    with pytest.raises(UsageError, match="backing file; flatten it"):
        cloudimage.inspect(tmp_path / "overlay.qcow2")


def disk_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize(("image_gb", "disk_gb", "expected_gb"), [(3, 8, 8), (20, 8, 20)])
def test_cloud_overlay_grows_to_disk_gb_but_never_shrinks_the_image(
    tmp_path: Path, image_gb: int, disk_gb: int, expected_gb: int
) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "cloud.qcow2"), f"{image_gb}G")
    spec = spec_for(tmp_path, cloudimage.inspect(tmp_path / "cloud.qcow2"))
    spec.disk_gb = disk_gb
    machine.create_disk(spec)
    info = disk_info(spec.disk)
    assert info["virtual-size"] == expected_gb << 30
    assert info["backing-filename"] == str((tmp_path / "cloud.qcow2").resolve())
    assert info["backing-filename-format"] == "qcow2"
    assert read_iso(spec.seed)[0] == "cidata"


def test_raw_cloud_image_is_the_overlays_raw_backing(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, cloudimage.inspect(bootable_raw(tmp_path / "cloud.img")))
    machine.create_disk(spec)
    assert disk_info(spec.disk)["backing-filename-format"] == "raw"


def provider(tmp_path: Path, image: Path | None) -> LocalProvider:
    settings = load_settings(provider="local", local={"image": image} if image else {})
    return LocalProvider(settings, open_state(tmp_path / ".postgressor", "default", "local"), lambda _: None)


def test_provider_refuses_a_bad_cloud_image_before_any_side_effect(tmp_path: Path) -> None:
    local = provider(tmp_path, tmp_path / "nope.qcow2")
    with pytest.raises(UsageError, match=r"local.image .*nope.qcow2 does not exist"):
        local.validate()
    assert not local.state.stack_dir.exists()


def test_provider_plans_a_seed_for_a_cloud_image(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "cloud.qcow2"), "1G")
    steps = provider(tmp_path, tmp_path / "cloud.qcow2").plan()
    assert steps[0].startswith("write a NoCloud seed for the cloud image") and "debootstrap" not in " ".join(steps)


def test_provider_will_not_boot_a_stack_from_a_different_image_than_it_was_made_from(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "cloud.qcow2"), "1G")
    local = provider(tmp_path, tmp_path / "cloud.qcow2")
    local.state.add("vm", "default", disk="disk.qcow2", ports={"22": 40022}, image="debootstrap")
    with pytest.raises(UsageError, match=r"was made from debootstrap, but local\.image now says .*cloud\.qcow2"):
        local._start(KEY)


def test_provider_will_not_boot_a_cloud_image_stack_from_the_debootstrap_image(tmp_path: Path) -> None:
    local = provider(tmp_path, None)
    local.state.add("vm", "default", disk="disk.qcow2", ports={"22": 40022}, image="/images/cloud.qcow2")
    with pytest.raises(UsageError, match=r"made from /images/cloud\.qcow2, but local\.image now says debootstrap"):
        local._start(KEY)


def test_a_cloud_image_needs_neither_root_nor_debootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "cloud.qcow2"), "1G")
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "debootstrap" else real_which(tool))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("POSTGRESSOR_CACHE_DIR", str(tmp_path / "empty-cache"))
    local = provider(tmp_path, tmp_path / "cloud.qcow2")
    local.validate()
    started = []
    monkeypatch.setattr(LocalProvider, "_start", lambda self, key: started.append(key))
    local.provision()
    assert started and started[0].startswith("ssh-ed25519 ")
    assert not (tmp_path / "empty-cache").exists()


def test_kvm_fallback_says_why_and_remembers_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(machine, "create_disk", lambda spec: None)
    monkeypatch.setattr(machine.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(machine.os.path, "exists", lambda path: True)
    monkeypatch.setattr(machine.os, "access", lambda path, mode: True)
    launches: list[str] = []

    def launch(spec: machine.VMSpec, ports: dict[int, int], accel: str) -> int:
        launches.append(accel)
        if accel == "kvm":
            raise machine.PostgressorError("QEMU failed to start (kvm): Could not access KVM kernel module")
        return 4242

    monkeypatch.setattr(machine, "_launch", launch)
    monkeypatch.setattr(machine, "stop", lambda pid_file: False)
    lines: list[str] = []
    vm = machine.boot(spec_for(tmp_path, BaseImage(tmp_path / "img")), PORTS, lines.append)
    assert vm.accel == "tcg" and launches == ["kvm", "tcg"]
    assert lines[-1] == ("KVM did not boot the guest: QEMU failed to start (kvm): Could not access KVM kernel module; "
                         "falling back to TCG (remembered for this kernel)")  # fmt: skip
    # The next boot goes straight to TCG and repeats the remembered reason.
    lines.clear()
    machine.boot(spec_for(tmp_path, BaseImage(tmp_path / "img")), PORTS, lines.append)
    assert launches[-1] == "tcg" and len(launches) == 3
    assert "Could not access KVM kernel module on an earlier run" in lines[-1]
    assert "local.accel = 'kvm'" in lines[-1]


def test_tcg_without_kvm_device_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.os.path, "exists", lambda path: False)
    assert machine._choose_accel("auto") == ("tcg", machine._choose_accel("auto")[1])
    assert "/dev/kvm does not exist" in machine._choose_accel("auto")[1]
    assert machine._choose_accel("kvm") == ("kvm", "")


def test_every_path_qemu_gets_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # QEMU daemonizes into /; saving a VM's state (migration) reopens its disk by the name it was given.
    monkeypatch.chdir(tmp_path)
    image = cloudimage.CloudImage(tmp_path / "cloud.qcow2", "qcow2", 2 << 30)
    spec = machine.VMSpec(directory=Path(".postgressor/default"), image=image, public_key=KEY)
    cmd = machine.qemu_command(spec, PORTS, "tcg")
    files = [part.split("=", 1)[1].split(",")[0] for arg in option_values(cmd, "-drive") for part in [arg]]
    files += [option_values(cmd, "-serial")[0].removeprefix("file:"), option_values(cmd, "-pidfile")[0]]
    assert files and all(Path(f).is_absolute() for f in files), files
    assert str(tmp_path / ".postgressor/default/disk.qcow2") in files
