"""A stand-in for a downloaded Debian cloud image (cloud.debian.org is unreachable from the test machines).

Like debian-12-genericcloud-amd64.qcow2 it is a partitioned qcow2 disk that boots through its own
bootloader (syslinux here, GRUB there) and is configured at first boot by cloud-init from whatever
datasource it finds; it has no SSH host keys, no authorized keys and no hostname of its own. Built once
with debootstrap (root) and cached next to the local provider's images, keyed by this file's content.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from postgressor.vm.image import MIRROR, PACKAGES, SUITE, cache_root

# cloud-guest-utils (growpart) and locales are on Debian's images too. python3-cffi-backend is listed because
# debootstrap does not resolve virtual packages, and python3-cryptography depends on one it provides.
CLOUD_PACKAGES = (*PACKAGES, "cloud-init", "cloud-guest-utils", "locales", "python3-cffi-backend")
TOOLS = ("debootstrap", "sfdisk", "mkfs.fat", "mcopy", "syslinux", "mkfs.ext4", "qemu-img")
MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SECTOR = 512
BOOT_START, BOOT_SECTORS = 2048, 200 * 2048  # 200 MiB FAT boot partition (kernel, initrd, syslinux)
ROOT_START = BOOT_START + BOOT_SECTORS
DISK_SIZE = 2 << 30  # like Debian's genericcloud: cloud-init grows the root partition to the VM's disk
ROOT_LABEL = "cloudimg-rootfs"
SYSLINUX_CFG = f"""DEFAULT debian
LABEL debian
  KERNEL vmlinuz
  APPEND initrd=initrd.img root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200
"""
INTERFACES = "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n"


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return missing + ([str(MBR)] if not MBR.is_file() else [])


def cached_path() -> Path:
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return cache_root() / "images" / f"test-cloudimage-{SUITE}-{key}.qcow2"


def _run(*cmd: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")


def ensure_cloud_image() -> Path:
    target = cached_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cloudimage-", dir=target.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        _run("debootstrap", "--variant=minbase", f"--include={','.join(CLOUD_PACKAGES)}", SUITE, str(root), MIRROR)
        _configure(root)
        raw = work / "disk.raw"
        _write_disk(root, raw, work)
        _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "disk.qcow2"))
        (work / "disk.qcow2").replace(target)
    return target


def _configure(root: Path) -> None:
    (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/network/interfaces").write_text(INTERFACES)
    (root / "etc/network/interfaces.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/machine-id").write_text("")
    # cloud-init's locale module runs Debian's locale-gen, which builds what locale.gen lists: list its default
    (root / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)


def _write_disk(root: Path, raw: Path, work: Path) -> None:
    boot = root / "boot"
    kernel, initrd = sorted(boot.glob("vmlinuz-*"))[-1], sorted(boot.glob("initrd.img-*"))[-1]
    (work / "syslinux.cfg").write_text(SYSLINUX_CFG)
    with raw.open("wb") as disk:
        disk.truncate(DISK_SIZE)
    layout = (f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c, bootable\n"
              f"start={ROOT_START}, type=83\n")  # fmt: skip
    subprocess.run(["sfdisk", "-q", str(raw)], input=layout, text=True, check=True, capture_output=True)
    boot_offset = BOOT_START * SECTOR
    _run("mkfs.fat", "-F", "16", "-n", "BOOT", f"--offset={BOOT_START}", str(raw), str(BOOT_SECTORS // 2))
    image = f"{raw}@@{boot_offset}"
    for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (work / "syslinux.cfg", "syslinux.cfg")):
        _run("mcopy", "-i", image, str(src), f"::/{name}", env={"MTOOLS_SKIP_CHECK": "1"})
    _run("syslinux", "--install", f"--offset={boot_offset}", str(raw))
    root_bytes = DISK_SIZE - ROOT_START * SECTOR
    _run("mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-E", f"offset={ROOT_START * SECTOR}", "-d", str(root),
         str(raw), f"{root_bytes // 1024}k")  # fmt: skip
    with raw.open("r+b") as disk, MBR.open("rb") as mbr:
        disk.write(mbr.read(440))  # boot code only: the partition table stays
