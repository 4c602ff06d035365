"""Boot and stop a QEMU VM from the base image: one copy-on-write disk per stack, SSH via a hostfwd port."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from postgressor.errors import PostgressorError, UsageError
from postgressor.vm.image import BaseImage, cache_root

GUEST_PORTS = (22, 80, 443)


@dataclass
class VMSpec:
    directory: Path  # per-stack: disk, pid file, console log
    image: BaseImage
    public_key: str
    memory_mb: int = 2048
    cpus: int = 2
    disk_gb: int = 16
    accel: str = "auto"  # auto | kvm | tcg
    extra_ports: list[int] = field(default_factory=list)

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"


@dataclass
class RunningVM:
    pid: int
    ports: dict[int, int]  # guest port -> host port on 127.0.0.1
    accel: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def running_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"qemu" not in cmdline.read_bytes():
        return None  # a reused pid
    return pid


def create_disk(spec: VMSpec) -> None:
    spec.directory.mkdir(parents=True, exist_ok=True)
    if spec.disk.exists():
        return
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(spec.image.disk),
         str(spec.disk), f"{spec.disk_gb}G"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise PostgressorError(f"cannot create the VM disk: {proc.stderr.strip()}")


def _kvm_verdict_file() -> Path:
    return cache_root() / f"kvm-verdict-{os.uname().release}.json"


def _choose_accel(accel: str) -> str:
    if accel != "auto":
        return accel
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        return str(json.loads(_kvm_verdict_file().read_text())["accel"])
    except (OSError, ValueError, KeyError):
        return "kvm"


def _record_accel(accel: str) -> None:
    path = _kvm_verdict_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accel": accel}))


def qemu_command(spec: VMSpec, ports: dict[int, int], accel: str) -> list[str]:
    key = base64.b64encode(spec.public_key.strip().encode()).decode()
    forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in ports.items())
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        "qemu-system-x86_64", *cpu,
        "-smp", str(spec.cpus), "-m", str(spec.memory_mb),
        "-display", "none", "-serial", f"file:{spec.console_log}",
        "-kernel", str(spec.image.kernel), "-initrd", str(spec.image.initrd),
        "-append", f"root=/dev/vda rw console=ttyS0 net.ifnames=0 postgressor.authorized_key={key}",
        "-drive", f"file={spec.disk},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", f"user,id=n0,{forwards}", "-device", "virtio-net-pci,netdev=n0",
        "-daemonize", "-pidfile", str(spec.pid_file),
    ]  # fmt: skip


def _launch(spec: VMSpec, ports: dict[int, int], accel: str) -> int:
    spec.console_log.unlink(missing_ok=True)
    proc = subprocess.run(qemu_command(spec, ports, accel), capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PostgressorError(f"QEMU failed to start ({accel}): {last}")
    pid = running_pid(spec.pid_file)
    if pid is None:
        raise PostgressorError(f"QEMU exited right after start; see {spec.console_log}")
    return pid


def _booted(spec: VMSpec, timeout: float) -> bool:
    """True once the guest kernel has handed over to systemd (seen on the serial console)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if b"systemd" in spec.console_log.read_bytes():
                return True
        except OSError:
            pass
        time.sleep(1)
    return False


def boot(spec: VMSpec, ports: dict[int, int] | None, log: Callable[[str], None]) -> RunningVM:
    """Start the VM (reusing ``ports`` when given, so the stack's address stays stable)."""
    if shutil.which("qemu-system-x86_64") is None:
        raise UsageError(
            "the local provider needs QEMU; install it (apt-get install qemu-system-x86 qemu-utils)"
        )
    create_disk(spec)
    wanted = [*GUEST_PORTS, *spec.extra_ports]
    ports = {g: (ports or {}).get(g) or free_port() for g in wanted}
    accel = _choose_accel(spec.accel)
    log(f"booting the VM ({accel.upper()}, {spec.cpus} CPU, {spec.memory_mb} MB)")
    if accel == "kvm" and spec.accel == "auto":
        try:
            pid = _launch(spec, ports, accel)
            works = _booted(spec, 60)
        except PostgressorError:
            works = False
        _record_accel("kvm" if works else "tcg")
        if works:
            return RunningVM(pid=pid, ports=ports, accel=accel)
        log("KVM did not boot the guest; falling back to TCG (remembered for this host)")
        stop(spec)
        accel = "tcg"
    pid = _launch(spec, ports, accel)
    return RunningVM(pid=pid, ports=ports, accel=accel)


def stop(spec: VMSpec, timeout: float = 20) -> bool:
    """Stop the VM if it runs; True when a running VM was stopped."""
    pid = running_pid(spec.pid_file)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(spec.pid_file) is not None:
        time.sleep(0.2)
    if running_pid(spec.pid_file) is not None:
        os.kill(pid, signal.SIGKILL)
    spec.pid_file.unlink(missing_ok=True)
    return True
