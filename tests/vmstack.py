"""A provisioned local VM stack and helpers to drive and inspect it (shared by the VM test modules)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from postgressor.remote.ssh import CommandResult, run
from postgressor.state import HostRecord, StackState, load_state


@dataclass
class Stack:
    """A project directory with a provisioned local VM stack, and helpers to drive and inspect it."""

    project: Path
    up_result: dict[str, Any]

    def cli(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "postgressor", *args],
            cwd=self.project, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"postgressor {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def cli_json(self, *args: str, timeout: float = 1800) -> dict[str, Any]:
        return json.loads(self.cli("--json", *args, timeout=timeout).stdout)

    @property
    def state(self) -> StackState:
        state = load_state(self.project / ".postgressor", "default")
        assert state is not None
        return state

    @property
    def host(self) -> HostRecord:
        host = self.state.host
        assert host is not None
        return host

    def forwarded(self, guest_port: int) -> int:
        vm = self.state.find("vm")
        assert vm is not None
        return int(vm.details["ports"][str(guest_port)])

    def sh(self, command: str, timeout: float = 300) -> CommandResult:
        return run(self.host, command, timeout=timeout)


@contextmanager
def provisioned(project: Path) -> Iterator[Stack]:
    """`postgressor up` in ``project`` (its postgressor.toml written already); destroyed afterwards."""
    require_vm_tools()
    box = Stack(project, {})
    try:
        box.up_result = box.cli_json("up")
        yield box
    finally:
        box.cli("destroy", "--yes", "--skip-final-backup", check=False, timeout=120)


def write_project(project: Path) -> None:
    project.mkdir(parents=True, exist_ok=True)
    (project / "postgressor.toml").write_text(
        'provider = "local"\n\n[local]\nmemory_mb = 2048\ncpus = 2\nforward_ports = [5432, 8080]\n'
    )


REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")


def require_vm_tools() -> None:
    """VM tests never skip silently: a missing tool is a failure that says what to install."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"VM tests need {', '.join(missing)}: run scripts/setup or apt-get install them", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("VM tests build the base image with debootstrap and need root", pytrace=False)
