"""The local VM's base image: Debian bookworm built once with debootstrap, cached by its inputs.

The image is deliberately close to a fresh cloud server: a minimal Debian with SSH and no host keys (each VM
makes its own at first boot). postgressor's deploys do the rest, exactly as on a rented box.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from platformdirs import user_cache_dir

from postgressor.errors import PostgressorError, UsageError

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "linux-image-amd64", "openssh-server", "ifupdown", "isc-dhcp-client",
    "iproute2", "netbase", "ca-certificates", "sudo", "procps", "curl", "gnupg", "kmod", "less",
    "e2fsprogs", "apt-utils", "python3",
)  # fmt: skip  (python3, as on Debian's cloud images)
ROOT_FS_SIZE = "3G"
BUILDER_VERSION = "1"  # bump when the steps below change


@dataclass(frozen=True)
class BaseImage:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def exists(self) -> bool:
        return all(
            p.is_file() for p in (self.disk, self.kernel, self.initrd, self.directory / "manifest.json")
        )


def _vm_file(name: str) -> bytes:
    return resources.files("postgressor.vm").joinpath("templates", name).read_bytes()


def image_key() -> str:
    """Hash of everything that goes into the image: change any input and a new image is built."""
    digest = hashlib.sha256()
    for part in (BUILDER_VERSION, SUITE, MIRROR, ROOT_FS_SIZE, *PACKAGES):
        digest.update(part.encode() + b"\0")
    for name in ("firstboot.sh", "firstboot.service", "interfaces", "sources.list"):
        digest.update(_vm_file(name))
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("POSTGRESSOR_CACHE_DIR") or user_cache_dir("postgressor"))


def base_image() -> BaseImage:
    return BaseImage(cache_root() / "images" / f"debian-{SUITE}-{image_key()}")


def missing_tools() -> list[str]:
    return [t for t in ("debootstrap", "mkfs.ext4", "qemu-img") if shutil.which(t) is None]


def ensure_base_image(log: Callable[[str], None]) -> BaseImage:
    """Return the cached base image, building it first when absent (needs root and debootstrap)."""
    image = base_image()
    if image.exists():
        return image
    missing = missing_tools()
    if missing:
        raise UsageError(
            f"building the local VM image needs {', '.join(missing)}; install them "
            "(apt-get install debootstrap e2fsprogs qemu-utils)"
        )
    if os.geteuid() != 0:
        raise UsageError(
            "building the local VM image with debootstrap needs root; run once as root "
            "(the image is cached for later runs)"
        )
    image.directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=image.directory.parent))
    try:
        _build(work, log)
        try:
            work.rename(image.directory)
        except OSError:
            if not image.exists():  # another process may have finished the same build first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PostgressorError(f"{what} failed: {tail[0]}")


def _build(work: Path, log: Callable[[str], None]) -> None:
    root = work / "root"
    log(f"debootstrap {SUITE} (about a minute, once)")
    _run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR],
        "debootstrap",
    )
    log("configuring the image")
    (root / "etc/hostname").write_text("postgressor\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 postgressor\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/network/interfaces").write_bytes(_vm_file("interfaces"))
    (root / "etc/apt/sources.list").write_bytes(_vm_file("sources.list"))
    script = root / "usr/local/sbin/postgressor-firstboot"
    script.write_bytes(_vm_file("firstboot.sh"))
    script.chmod(0o755)
    (root / "etc/systemd/system/postgressor-firstboot.service").write_bytes(_vm_file("firstboot.service"))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "postgressor-firstboot.service").symlink_to("/etc/systemd/system/postgressor-firstboot.service")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")  # systemd makes a fresh one per VM
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise PostgressorError("debootstrap produced no kernel or initrd; check the linux-image package")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    log("writing the disk image")
    raw = work / "base.raw"
    _run(["mkfs.ext4", "-q", "-F", "-L", "pgsr-root", "-d", str(root), str(raw), ROOT_FS_SIZE], "mkfs.ext4")
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "base.qcow2")], "qemu-img")
    raw.unlink()
    shutil.rmtree(root)
    (work / "manifest.json").write_text(
        json.dumps({"suite": SUITE, "packages": PACKAGES, "key": image_key(), "kernel": kernels[-1].name})
    )
