"""A STAND-IN for the Electric container image, for VM tests only. NOT Electric.

Docker Hub is unreachable from the test machines, so the real `electricsql/electric` image cannot be pulled.
This builds a `docker save` archive of an image named `postgressor-test/electric-standin:<version>` that runs
`electric_standin_server.py` (its docstring says what it does like Electric 1.7.12, with sources, and what it
does not do): it connects with the deploy's `DATABASE_URL`, creates Electric's publication and `pgoutput` slot,
and answers `/v1/health` and `/v1/shape` from PostgreSQL.

The image is one layer holding what the server needs and nothing else, copied from this machine (Debian 12,
x86_64, like the VM): Debian's `/usr/bin/python3.11` with the standard library minus what a server never
imports (tests, IDLE, tkinter, ensurepip, lib2to3, the build config...) and only the extension modules listed
in DYNLOAD; the shared libraries they load (found with ldd); from this interpreter's site-packages psycopg with
psycopg-binary (its own libpq) and pglast (its parser stripped of debug symbols); `tests/electric_rules.py`
(the request rules shared with the gateway tests' stand-in) and the server. Files are sorted, owned by root
and dated 0, so the same inputs give the same archive. The deploy loads it through the real
`electric.image_archive` path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

IMAGE = "postgressor-test/electric-standin:1.7.12"
PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
HERE = Path(__file__).resolve().parent
SERVER = HERE / "electric_standin_server.py"
RULES = HERE.parent / "electric_rules.py"
APP = "standin"  # /standin in the image: the server, the rules and the packages

# Never imported by the server (and big): left out of the standard library copy.
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils",
               "venv", "sqlite3", "curses", "dbm", "unittest", "xmlrpc", "wsgiref", "msilib", "site-packages",
               "dist-packages", "__pycache__", "config-3.11-x86_64-linux-gnu", "turtle.py", "pydoc.py",
               "_pydecimal.py", "doctest.py", "pdb.py", "mailbox.py", "imaplib.py", "nntplib.py", "smtplib.py",
               "ftplib.py", "tabnanny.py", "lib-dynload"}  # fmt: skip
# The extension modules the server may import (psycopg: ctypes, asyncio, which imports ssl, decimal/uuid/zoneinfo);
# Debian builds the rest of what it needs (_socket, select, _sha256, ...) into the interpreter.
DYNLOAD = ("_asyncio", "_contextvars", "_ctypes", "_hashlib", "_ssl", "_decimal", "_json", "_queue", "_typing",
           "_uuid", "_zoneinfo", "mmap", "resource", "termios")  # fmt: skip
PACKAGES = ("psycopg", "psycopg_binary", "pglast", "typing_extensions")
PACKAGE_SKIP = re.compile(r"(__pycache__|\.(c|pyx|pxd|pyi|h)$|/tests?/)")


def _sources() -> list[tuple[str, Path]]:
    """(path in the image, file on this machine) for everything but the shared libraries."""
    files: list[tuple[str, Path]] = [("usr/bin/python3.11", PYTHON)]
    for path in sorted(STDLIB.rglob("*")):
        rel = path.relative_to(STDLIB)
        if path.is_file() and not any(part in STDLIB_SKIP for part in rel.parts):
            files.append((f"usr/lib/python3.11/{rel}", path))
    for name in DYNLOAD:
        (module,) = STDLIB.glob(f"lib-dynload/{name}.cpython-311-*.so")
        files.append((f"usr/lib/python3.11/lib-dynload/{module.name}", module))
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the Electric stand-in needs {package} in this interpreter (the dev dependencies)")
        origin = Path(spec.origin)
        if origin.name != "__init__.py":  # a single-module package
            files.append((f"{APP}/{origin.name}", origin))
            continue
        root = origin.parent
        for base in (root, root.parent / f"{package}.libs"):
            for path in sorted(base.rglob("*")) if base.is_dir() else []:
                rel = path.relative_to(root.parent).as_posix()
                if path.is_file() and not PACKAGE_SKIP.search(rel):
                    files.append((f"{APP}/{rel}", path))
    files += [(f"{APP}/electric_rules.py", RULES), (f"{APP}/electric_standin_server.py", SERVER)]
    return files


def _libraries(binaries: list[Path]) -> dict[str, Path]:
    """The system shared libraries the binaries load, by soname (ldd), outside the packages' own .libs."""
    found: dict[str, Path] = {}
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            match = re.match(r"\s*(\S+) => (/\S+)", line) or re.match(r"\s*(/\S+ld-linux\S+)()", line)
            if not match:
                continue
            name, target = match.groups()
            path = Path(target or name)
            if ".libs/" not in path.as_posix():
                found[Path(name).name] = path
    return found


def _layer(workdir: Path) -> bytes:
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError("the Electric stand-in ships this interpreter's cp311 packages: run under Python 3.11")
    if not PYTHON.exists():
        raise RuntimeError("the Electric stand-in needs Debian's python3.11 (/usr/bin/python3.11)")
    files = _sources()
    binaries = [PYTHON] + [src for arc, src in files if arc.endswith(".so") or ".so." in arc]
    strip = shutil.which("strip")
    prepared: list[tuple[str, Path]] = []
    for arc, src in files:
        if strip and arc.endswith(".so") and arc.startswith(f"{APP}/pglast/"):
            stripped = workdir / src.name  # pglast's parser ships with debug info: 27 MB, 3.6 MB stripped
            subprocess.run([strip, "--strip-unneeded", "-o", str(stripped), str(src)], check=True)
            src = stripped
        prepared.append((arc, src))
    for soname, path in _libraries(binaries).items():
        arc = "lib64/ld-linux-x86-64.so.2" if soname.startswith("ld-linux") else f"lib/x86_64-linux-gnu/{soname}"
        prepared.append((arc, path))
    entries: dict[str, tuple[str, object]] = {}
    for arc, src in prepared:
        parts = arc.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), ("dir", None))
        entries[arc] = ("file", src)
    for name in ("tmp", "etc"):
        entries[name] = ("dir", None)
    entries["usr/bin/python3"] = ("link", "python3.11")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(entries):
            kind, src = entries[name]
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.mtime = 0
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(src)
                tar.addfile(info)
            else:
                assert isinstance(src, Path)
                data = src.read_bytes()
                info.size = len(data)
                info.mode = 0o755 if os.access(src, os.X_OK) or ".so" in name else 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_archive(target: Path) -> Path:
    """Write the stand-in as a `docker save` archive (what `docker load` reads) and return its path."""
    with tempfile.TemporaryDirectory(prefix="electric-standin-") as workdir:
        layer = _layer(Path(workdir))
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin", f"PYTHONPATH=/{APP}", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8",
                    "PGGSSENCMODE=disable"],
            "Entrypoint": ["/usr/bin/python3.11", f"/{APP}/electric_standin_server.py"],
            "ExposedPorts": {"3000/tcp": {}},
            "Labels": {"org.postgressor.note": "VM-test stand-in for electricsql/electric; not Electric"},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [IMAGE], "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(target, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("layer/layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return target
