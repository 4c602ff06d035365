"""The caddy.service drop-in that repairs Caddy's storage after a power cut, run by sh on a storage tree.

A cut during certmagic's in-place write leaves an empty file (caddyserver/caddy#6481, fixed in Caddy 2.9;
Debian 12 and 13 ship 2.6), and Caddy 2.6 then refuses to start. Its storage layout (certmagic storage.go,
KeyBuilder): certificates/<issuer>/<name>/<name>.{crt,key,json}, pki/authorities/<ca>/{root,intermediate}.*,
locks/<name>.lock."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import jinja2
import pytest

from postgressor.box.deploys.base import template
from postgressor.box.layout import CADDY_STORAGE


def exec_start_pre(storage: Path) -> str:
    rendered = jinja2.Template(Path(template("caddy-storage-repair.conf.j2")).read_text(),
                               undefined=jinja2.StrictUndefined).render(storage=CADDY_STORAGE)  # fmt: skip
    (line,) = re.findall(r"^ExecStartPre=-/bin/sh -c '(.*)'$", rendered, re.MULTILINE)
    assert "%" not in line.replace("%%", "")  # systemd specifiers: none meant
    return line.replace("$$", "$").replace("%%", "%").replace(CADDY_STORAGE, str(storage))  # systemd's unescaping


def put(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "caddy"
    for name in ("good.example", "203.0.113.7"):
        for ext in ("crt", "key", "json"):
            put(root, f"certificates/local/{name}/{name}.{ext}", f"{ext} of {name}\n")
    for name in ("root", "intermediate"):
        for ext in ("crt", "key"):
            put(root, f"pki/authorities/local/{name}.{ext}", f"{name} {ext}\n")
    put(root, "instance.uuid", "c0ffee\n")
    return root


def run(storage: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", exec_start_pre(storage)], capture_output=True, text=True, timeout=30)


def test_an_empty_certificate_file_removes_that_certificate_only(storage: Path) -> None:
    (storage / "certificates/local/203.0.113.7/203.0.113.7.json").write_text("")
    proc = run(storage)
    assert proc.returncode == 0, proc.stderr
    assert not (storage / "certificates/local/203.0.113.7").exists()
    assert (storage / "certificates/local/good.example/good.example.json").read_text() == "json of good.example\n"
    assert (storage / "pki/authorities/local/root.key").exists()
    assert "removing certificates/local/203.0.113.7 (an empty file in it: an interrupted write)" in proc.stdout


def test_an_empty_authority_file_removes_that_authority(storage: Path) -> None:
    (storage / "pki/authorities/local/root.key").write_text("")
    put(storage, "locks/issue_cert_x.lock", "")
    assert run(storage).returncode == 0
    assert not (storage / "pki/authorities/local").exists()  # Caddy makes a new local CA
    assert not (storage / "locks/issue_cert_x.lock").exists()
    assert (storage / "certificates/local/good.example").exists() and (storage / "instance.uuid").exists()


def test_a_healthy_storage_is_left_alone(storage: Path) -> None:
    before = sorted(p.relative_to(storage) for p in storage.rglob("*"))
    proc = run(storage)
    assert proc.returncode == 0 and proc.stdout == ""
    assert sorted(p.relative_to(storage) for p in storage.rglob("*")) == before


def test_no_storage_yet_is_fine(tmp_path: Path) -> None:
    assert run(tmp_path / "absent").returncode == 0


def test_systemd_reads_the_drop_in(tmp_path: Path) -> None:
    rendered = jinja2.Template(Path(template("caddy-storage-repair.conf.j2")).read_text()).render(storage=CADDY_STORAGE)
    unit = tmp_path / "caddy-repair-check.service"
    unit.write_text("[Unit]\nDescription=check\n" + rendered.replace("[Service]", "[Service]\nExecStart=/bin/true"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert f"{unit}:" not in proc.stderr, proc.stderr  # systemd names the file and line of what it ignores


def test_links_are_never_followed_and_odd_names_are_one_word(storage: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    put(outside, "etc/empty", "")
    put(outside, "keep/data", "precious\n")
    (storage / "certificates/linked").symlink_to(outside)  # certificates/linked/etc holds an empty file
    (storage / "pki/authorities/evil").symlink_to(outside / "etc")
    put(storage, "certificates/local/odd name\nwith newline/x.json", "")
    assert run(storage).returncode == 0
    assert (outside / "etc/empty").exists() and (outside / "keep/data").read_text() == "precious\n"
    assert not (storage / "certificates/local/odd name\nwith newline").exists()
    assert (storage / "certificates/local/good.example").exists()
