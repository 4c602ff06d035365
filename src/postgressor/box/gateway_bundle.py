"""What the gateway needs on the box, prepared on this machine: the gateway's own modules (only those it
imports) and wheels of its runtime dependencies for the box's Python and CPU, so the box installs offline
(it may not reach PyPI)."""

from __future__ import annotations

import ast
import hashlib
import io
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import postgressor
from postgressor.errors import PostgressorError
from postgressor.vm.image import cache_root

ENTRY = "postgressor.gateway.__main__"  # what the unit's ExecStart runs
# The distributions the gateway imports (yarl directly; cryptography through PyJWT's ES256/RS256; pglast
# when it checks a where clause); pinned to the versions running here. Checked against the imports by
# tests/unit/test_gateway_runtime.py.
GATEWAY_REQUIREMENTS = ("aiohttp", "yarl", "PyJWT", "cryptography", "pglast")
# Imports inside the gateway's modules that the gateway never reaches, with the reason.
NOT_SHIPPED = {"httpx": "jwt_verify.fetch_jwks_blocking serves the CLI's verify-jwt; the gateway fetches with aiohttp"}
# (distribution, first fixed release, why): the bundle refuses to ship an older one.
VULNERABLE_BELOW = (("PyJWT", (2, 10, 1), "CVE-2024-53861: its issuer check accepts any substring"),)


@dataclass(frozen=True)
class GatewayBundle:
    source_tar: Path  # the gateway's modules, as a tarball
    wheels: Path  # a directory of wheels for the box
    requirements: tuple[str, ...]  # name==version lines

    @property
    def digest(self) -> str:
        """Changes when the gateway's code or its wheels change: the box reinstalls only then."""
        h = hashlib.sha256(self.source_tar.read_bytes())
        for wheel in sorted(self.wheels.glob("*.whl")):
            h.update(wheel.name.encode())
        return h.hexdigest()[:16]


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in match.group().split(".")) if match else ()


def pinned_requirements(python: str = "3.11") -> tuple[str, ...]:
    """name==version of each gateway dependency as installed here (plus tomli for a box Python < 3.11)."""
    pins = []
    for name in GATEWAY_REQUIREMENTS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise PostgressorError(f"{name} is not installed here; reinstall postgressor") from None
        for vulnerable, fixed, why in VULNERABLE_BELOW:
            if name == vulnerable and _release(version) < fixed:
                floor = ".".join(map(str, fixed))
                raise PostgressorError(
                    f"{name} {version} is installed here and would go to the box ({why}); "
                    f"upgrade it: pip install '{name}>={floor}'"
                )
        pins.append(f"{name}=={version}")
    if _release(python) < (3, 11):
        pins.append("tomli>=1.1")  # tomllib's source, for the settings file
    return tuple(pins)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute module names ``path`` imports anywhere (relative imports resolved against ``module``)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # may name a submodule
    return found


def gateway_modules(root: Path | None = None) -> dict[str, Path]:
    """postgressor's modules the gateway's entry point imports, transitively (with their packages'
    ``__init__``): module name -> file. Static (every import statement, taken or not), so a superset."""
    root = root or Path(postgressor.__file__).parent
    top = root.name

    def file_of(name: str) -> Path | None:
        rel = Path(*name.split(".")[1:])
        for candidate in (root / rel / "__init__.py", (root / rel).with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None

    found: dict[str, Path] = {}
    todo = [ENTRY]
    while todo:
        name = todo.pop()
        if name in found or not (name == top or name.startswith(top + ".")):
            continue
        path = file_of(name)
        if path is None:
            continue  # `from pkg import name` where name is not a module
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages' __init__
        todo += sorted(_imports(path, name))
    return found


def third_party_imports(root: Path | None = None) -> set[str]:
    """Top-level names of the non-postgressor, non-stdlib modules the gateway's modules import (at load
    or inside a function), less NOT_SHIPPED."""
    names: set[str] = set()
    for name, path in gateway_modules(root).items():
        names.update(i.split(".")[0] for i in _imports(path, name))
    names -= set(NOT_SHIPPED)
    return {n for n in names if n and n != "postgressor" and n not in sys.stdlib_module_names}


def package_tarball(target: Path, root: Path | None = None) -> Path:
    """The gateway's modules, with fixed metadata so equal code gives equal bytes."""
    root = root or Path(postgressor.__file__).parent
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(gateway_modules(root).values()):
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
    """The bundle for a box with CPython ``python`` ("3.11") on ``machine``; PostgressorError (one line)
    when a dependency here is missing or vulnerable, or its wheels cannot be downloaded."""
    requirements = pinned_requirements(python)
    key = hashlib.sha256("\n".join((python, machine, *requirements)).encode()).hexdigest()[:16]
    base = cache_root() / "gateway" / key
    wheels = download_wheels(requirements, python, machine, base / "wheels")
    source = package_tarball(base / "gateway.tar")
    return GatewayBundle(source_tar=source, wheels=wheels, requirements=requirements)
