"""A provisioned local VM stack and helpers to drive and inspect it (shared by the VM test modules)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from postgressor.remote.ssh import CommandResult, known_hosts_path, run, wait_for_ssh, write_known_hosts
from postgressor.state import HostRecord, StackState, load_state
from postgressor.vm import cloudimage, machine


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
            raise AssertionError(f"postgressor {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
                                 f"{self.diagnostics()}")
        return proc

    def diagnostics(self) -> str:
        """What the box says about its services, for a failure message ('' when it cannot be asked)."""
        units = " ".join(f"-u {u}" for u in ("electric", "caddy", "postgressor-gateway", "postgresql@*", "docker"))
        try:
            result = self.sh(f"systemctl --failed --no-legend --no-pager; journalctl -b {units} -n 60 --no-pager "
                             "-o short-monotonic | cut -c1-300", timeout=60)  # fmt: skip
        except Exception as err:  # the box may be down: that is the failure being reported
            return f"\n(no diagnostics from the box: {type(err).__name__}: {err})"
        return f"\n--- on the box: failed units, then the journal ---\n{result.stdout}{result.stderr}"

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


REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")


def vm_tools_problem() -> str:
    """What is missing to run the VM tests ('' when nothing is)."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"VM tests need {', '.join(missing)}: run scripts/setup or apt-get install them"
    if os.geteuid() != 0:
        return "VM tests build the base image with debootstrap and need root"
    return ""


def require_vm_tools() -> None:
    """VM tests never skip silently: a missing tool is a failure that says what to install."""
    problem = vm_tools_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


# --- One provisioned box per run, restored for each module -------------------------------------------------
# `up` under TCG takes many minutes, so the run provisions once (the golden stack), saves the paused VM's RAM
# and device state with QEMU's migration to a file, and gives each module its own copy: a new project with the
# golden's state file and keys, a qcow2 overlay on the golden's disk, and QEMU started with `-incoming` from the
# saved state. The copy resumes where the golden paused, in seconds; what a module does to it is thrown away.


@dataclass
class Golden:
    """A provisioned stack whose VM was paused and saved; ``vm_state`` is QEMU's migration stream."""

    project: Path
    up_result: dict[str, Any]
    image: Path  # the cloud image under the golden's disk
    memory_mb: int
    cpus: int
    extra_ports: list[int]

    @property
    def stack_dir(self) -> Path:
        return self.project / ".postgressor" / "default"

    @property
    def disk(self) -> Path:
        return self.stack_dir / "disk.qcow2"

    @property
    def vm_state(self) -> Path:
        return self.stack_dir / "vm-state.bin"


def hmp(monitor: Path, command: str, timeout: float = 600) -> str:
    """Send one command to QEMU's human monitor and return what it printed before the next prompt."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(monitor))
        reply = b""
        while not reply.endswith(b"(qemu) "):  # the banner, then the first prompt
            reply += sock.recv(65536) or b"(qemu) "
        sock.sendall(command.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"(qemu) "):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply.decode(errors="replace")


def save_golden(box: Stack, image: Path, memory_mb: int, cpus: int, extra_ports: list[int]) -> Golden:
    """Pause ``box``'s VM, write its RAM and devices to a file, and stop QEMU; its disk becomes a backing file."""
    golden = Golden(box.project, box.up_result, image, memory_mb, cpus, extra_ports)
    monitor = golden.stack_dir / "monitor.sock"
    # The saved RAM holds the guest's page cache, but a cold boot of the disk (the fake Hetzner's servers) sees
    # only what reached it: flush first, or files written in the last seconds are empty there.
    flushed = box.sh("sync")
    assert flushed.ok, flushed.stderr
    hmp(monitor, "stop")
    hmp(monitor, f'migrate "exec:cat > {golden.vm_state}"')  # without -d the monitor waits for the end
    status = hmp(monitor, "info migrate")
    assert "Migration status: completed" in status, status
    with socket.socket(socket.AF_UNIX) as sock:  # `quit` closes the monitor without a prompt
        sock.connect(str(monitor))
        sock.sendall(b"quit\n")
        time.sleep(1)
    deadline = time.monotonic() + 60
    while machine.running_pid(golden.stack_dir / "qemu.pid") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert machine.running_pid(golden.stack_dir / "qemu.pid") is None, "the golden QEMU did not quit"
    (golden.stack_dir / "qemu.pid").unlink(missing_ok=True)
    record = {"up_result": golden.up_result, "image": str(image), "memory_mb": memory_mb, "cpus": cpus,
              "extra_ports": extra_ports}  # fmt: skip
    (golden.project / GOLDEN_RECORD).write_text(json.dumps(record))
    return golden


GOLDEN_RECORD = "golden.json"  # what load_golden needs to reuse a saved golden project


def load_golden(project: Path) -> Golden:
    """A golden saved earlier (save_golden), to develop VM tests without a new `up`; ValueError when none is."""
    record = project / GOLDEN_RECORD
    if not record.is_file():
        raise ValueError(f"{project} holds no saved golden ({GOLDEN_RECORD} is missing)")
    fields = json.loads(record.read_text())
    golden = Golden(project, fields["up_result"], Path(fields["image"]), fields["memory_mb"], fields["cpus"],
                    fields["extra_ports"])  # fmt: skip
    if not (golden.disk.is_file() and golden.vm_state.is_file()):
        raise ValueError(f"{project} lacks the golden's disk or saved state")
    return golden


def resume_incoming(monitor: Path, timeout: float = 300) -> None:
    """Wait until QEMU has read the saved state (``-incoming``), then run the VM: it was saved paused, and a VM
    migrated while paused stays paused on arrival."""
    deadline = time.monotonic() + timeout
    while "inmigrate" in (status := hmp(monitor, "info status")) or "VM status" not in status:
        assert time.monotonic() < deadline, f"the saved state was not read within {timeout} s: {status[-200:]}"
        time.sleep(0.5)
    if "VM status: running" not in status:
        hmp(monitor, "cont")
    assert "VM status: running" in hmp(monitor, "info status"), "the restored copy does not run"


LEFT_BEHIND = {"disk.qcow2", "qemu.pid", "monitor.sock", "console.log", "vm-state.bin", "known_hosts", GOLDEN_RECORD}


def restore(golden: Golden, project: Path) -> Stack:
    """A new project running a copy of the golden box, resumed from its saved state, with fresh host ports.

    The copy's clock is set to this machine's: the guest's stood still while the golden was saved."""
    shutil.copytree(golden.project, project, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in LEFT_BEHIND or n.startswith("pytest")])
    stack_dir = project / ".postgressor" / "default"
    state_text = (project / ".postgressor" / "default.json").read_text()
    data = json.loads(state_text.replace(str(golden.project), str(project)))
    vm = next(r for r in data["resources"] if r["kind"] == "vm")
    ports = machine.host_ports(int(g) for g in vm["details"]["ports"])
    vm["details"]["ports"] = {str(g): h for g, h in ports.items()}
    data["host"]["port"] = ports[22]
    (project / ".postgressor" / "default.json").write_text(json.dumps(data, indent=2))
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(golden.disk),
         str(stack_dir / "disk.qcow2")], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    spec = machine.VMSpec(
        directory=stack_dir, image=cloudimage.inspect(golden.image),
        public_key=(stack_dir / "id_ed25519.pub").read_text(), memory_mb=golden.memory_mb, cpus=golden.cpus,
        accel="tcg", extra_ports=golden.extra_ports, hostname="postgressor-default",
    )  # fmt: skip
    assert (stack_dir / "seed.iso").is_file(), "the copy boots from the golden's NoCloud seed too"
    command = [*machine.qemu_command(spec, ports, "tcg"), "-incoming", f"exec:cat {golden.vm_state}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    try:
        resume_incoming(spec.monitor)
        box = Stack(project, golden.up_result)
        host = box.host
        seen = wait_for_ssh(host.address, host.port, timeout=300)
        assert seen == host.host_key, "the restored copy must show the golden's host key"
        write_known_hosts(known_hosts_path(box.state), replace(host))
        clock = box.sh(f"date -u -s @{time.time():.3f} >/dev/null && date -u +%s")
        assert clock.ok and abs(int(clock.stdout.strip()) - time.time()) < 30, clock
    except BaseException:
        machine.stop(spec.pid_file)  # no copy left running when it cannot be used
        raise
    return box


@contextmanager
def restored(golden: Golden, project: Path) -> Iterator[Stack]:
    """``restore``, then ``destroy`` the copy (its overlay and QEMU) at the end; the golden is untouched."""
    require_vm_tools()
    box = restore(golden, project)
    try:
        yield box
    finally:
        box.cli("destroy", "--yes", "--skip-final-backup", check=False, timeout=120)
