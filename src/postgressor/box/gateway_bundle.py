"""What the gateway needs on the box, prepared on this machine: postgressor's own code and wheels of its
runtime dependencies for the box's Python and CPU, so the box installs offline (it may not reach PyPI)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import postgressor
from postgressor.errors import PostgressorError
from postgressor.vm.image import cache_root

# The gateway imports only these (plus their own dependencies); pinned to the versions running here.
GATEWAY_REQUIREMENTS = ("aiohttp", "PyJWT", "cryptography", "pydantic", "pydantic-settings")


@dataclass(frozen=True)
class GatewayBundle:
    source_tar: Path  # postgressor's package, as a tarball
    wheels: Path  # a directory of wheels for the box
    requirements: tuple[str, ...]  # name==version lines

    @property
    def digest(self) -> str:
        """Changes when anything in the bundle changes: the box reinstalls only then."""
        h = hashlib.sha256(self.source_tar.read_bytes())
        for wheel in sorted(self.wheels.glob("*.whl")):
            h.update(wheel.name.encode())
        return h.hexdigest()[:16]


def pinned_requirements() -> tuple[str, ...]:
    pins = []
    for name in GATEWAY_REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise PostgressorError(f"{name} is not installed here; reinstall postgressor") from None
    return tuple(pins)


def package_tarball(target: Path) -> Path:
    """postgressor's package files (no caches), with fixed metadata so equal code gives equal bytes."""
    root = Path(postgressor.__file__).parent
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
                continue
            info = tarfile.TarInfo(f"postgressor/{path.relative_to(root).as_posix()}")
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return target


def download_wheels(requirements: tuple[str, ...], python: str, machine: str, dest: Path) -> Path:
    """Wheels of ``requirements`` for CPython ``python`` (e.g. "3.11") on ``machine`` (x86_64/aarch64)."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28", "_2_34")]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", python, "--dest", str(dest)]  # fmt: skip
    for platform in platforms:
        cmd += ["--platform", platform]
    proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PostgressorError(
            f"cannot download the gateway's wheels for Python {python} on {machine}: {last}; "
            "check that this machine reaches PyPI (or your pip index)"
        )
    marker.write_text("\n".join(requirements))
    return dest


def gateway_bundle(python: str, machine: str) -> GatewayBundle:
    requirements = pinned_requirements()
    key = hashlib.sha256("\n".join((python, machine, *requirements)).encode()).hexdigest()[:16]
    base = cache_root() / "gateway" / key
    wheels = download_wheels(requirements, python, machine, base / "wheels")
    source = package_tarball(base / f"postgressor-{postgressor.__version__}.tar")
    return GatewayBundle(source_tar=source, wheels=wheels, requirements=requirements)
