"""A user-supplied Debian/Ubuntu cloud image for the local provider, booted with a NoCloud seed.

No root is needed: the image is only read (each stack gets a copy-on-write overlay), and the seed is an
ISO 9660 volume labelled ``cidata`` written in Python. cloud-init in the guest reads it at first boot,
puts the stack's public key in root's authorized_keys and sets the hostname.
"""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pycdlib

from postgressor.errors import UsageError

SEED_LABEL = "cidata"  # the volume label cloud-init's NoCloud datasource looks for
FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class CloudImage:
    path: Path
    format: str  # qcow2 | raw
    virtual_size: int  # bytes


def inspect(path: Path) -> CloudImage:
    """Check that ``path`` is a bootable-looking disk image and read its format and size."""
    hint = "set local.image to a Debian/Ubuntu cloud image (e.g. debian-12-genericcloud-amd64.qcow2)"
    if not path.is_file():
        raise UsageError(f"local.image {path} does not exist; {hint}")
    proc = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unreadable"])[-1]
        raise UsageError(f"local.image {path} cannot be read by qemu-img ({reason}); {hint}")
    info = json.loads(proc.stdout)
    fmt = str(info.get("format", ""))
    if fmt not in FORMATS:
        raise UsageError(f"local.image {path} is a {fmt} image; convert it to qcow2 (qemu-img convert -O qcow2)")
    if info.get("backing-filename"):
        raise UsageError(f"local.image {path} has a backing file; flatten it first (qemu-img convert -O qcow2)")
    if fmt == "raw" and not _has_boot_sector(path):
        raise UsageError(f"local.image {path} has no partition table, so it is not a bootable disk; {hint}")
    return CloudImage(path=path.resolve(), format=fmt, virtual_size=int(info["virtual-size"]))


def _has_boot_sector(path: Path) -> bool:
    with path.open("rb") as disk:
        disk.seek(510)
        return disk.read(2) == b"\x55\xaa"


def user_data(public_key: str) -> str:
    """cloud-config: the stack's key for root (disable_root off: no "log in as debian" stub) and no passwords."""
    config = {"disable_root": False, "ssh_pwauth": False, "ssh_authorized_keys": [public_key.strip()]}
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"  # JSON is valid YAML


def meta_data(instance_id: str, hostname: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


def write_seed(target: Path, *, public_key: str, instance_id: str, hostname: str) -> Path:
    """Write the NoCloud seed ISO (``user-data`` and ``meta-data`` at its root)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    files = {"user-data": user_data(public_key), "meta-data": meta_data(instance_id, hostname)}
    for name, text in files.items():
        data = text.encode()
        iso.add_fp(
            io.BytesIO(data), len(data), f"/{name.replace('-', '_').upper()}.;1",
            rr_name=name, joliet_path=f"/{name}",
        )  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    iso.write(str(partial))
    iso.close()
    partial.replace(target)
    return target
