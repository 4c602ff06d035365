"""Boot and stop a QEMU VM (the base image or a cloud image): one copy-on-write disk per stack, SSH via hostfwd."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from postgressor.errors import PostgressorError, UsageError
from postgressor.vm.cloudimage import CloudImage, write_seed
from postgressor.vm.image import BaseImage, cache_root

GUEST_PORTS = (22, 80, 443)


@dataclass
class VMSpec:
    directory: Path  # per-stack: disk, pid file, console log
    image: BaseImage | CloudImage
    public_key: str
    memory_mb: int = 2048
    cpus: int = 2
    disk_gb: int = 16
    accel: str = "auto"  # auto | kvm | tcg
    extra_ports: list[int] = field(default_factory=list)
    hostname: str = "postgressor"

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def seed(self) -> Path:
        return self.directory / "seed.iso"  # NoCloud seed, cloud images only

    @property
    def monitor(self) -> Path:
        return self.directory / "monitor.sock"  # QEMU's human monitor (HMP), root-only like the directory


@dataclass
class RunningVM:
    pid: int
    ports: dict[int, int]  # guest port -> host port on 127.0.0.1
    accel: str


def host_ports(guest_ports: Iterable[int], given: dict[int, int] | None = None) -> dict[int, int]:
    """``{guest port: host port on 127.0.0.1}``: the ``given`` ones kept, the others free ports, all different.

    The new ports are held bound together while they are chosen: ports taken one at a time can come back twice
    (the kernel may hand out a port again once its socket is closed), and QEMU then refuses the second forward."""
    given, guests = given or {}, list(guest_ports)
    chosen: dict[int, int] = {}
    for guest in guests:  # a given port another forward already has (a state saved by an older version) is chosen anew
        if given.get(guest) and given[guest] not in chosen.values():
            chosen[guest] = given[guest]
    wanted = [g for g in guests if g not in chosen]
    with contextlib.ExitStack() as held:
        while wanted:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in chosen.values():
                chosen[wanted.pop(0)] = port
    return chosen


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
    if isinstance(spec.image, CloudImage) and not spec.seed.exists():
        write_seed(spec.seed, public_key=spec.public_key, instance_id=f"iid-{spec.hostname}",
                   hostname=spec.hostname)  # fmt: skip
    if spec.disk.exists():
        return
    if isinstance(spec.image, CloudImage):
        backing, fmt = spec.image.path, spec.image.format
        size = max(spec.disk_gb << 30, spec.image.virtual_size)  # an overlay cannot shrink its image
    else:
        backing, fmt, size = spec.image.disk, "qcow2", spec.disk_gb << 30
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(spec.disk), str(size)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise PostgressorError(f"cannot create the VM disk: {proc.stderr.strip()}")


KVM_BOOT_TIMEOUT = 60  # seconds for a KVM guest to reach systemd before TCG is used instead


def _kvm_verdict_file() -> Path:
    return cache_root() / f"kvm-verdict-{os.uname().release}.json"


def _choose_accel(accel: str) -> tuple[str, str]:
    """The accelerator to boot with and, when it is TCG on 'auto', why KVM is not used."""
    if accel != "auto":
        return accel, ""
    if not os.path.exists("/dev/kvm"):
        return "tcg", "/dev/kvm does not exist (no hardware virtualisation, or the kvm module is not loaded)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not readable and writable by this user (add it to the 'kvm' group)"
    try:
        verdict = json.loads(_kvm_verdict_file().read_text())
    except (OSError, ValueError):
        return "kvm", ""
    if verdict.get("accel") == "tcg":
        why = verdict.get("reason") or "KVM did not boot the guest"
        return "tcg", f"{why} on an earlier run with this kernel (set local.accel = 'kvm' to try again)"
    return "kvm", ""


def _record_accel(accel: str, reason: str = "") -> None:
    path = _kvm_verdict_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accel": accel, "reason": reason}))


def _boot_args(spec: VMSpec) -> list[str]:
    if isinstance(spec.image, CloudImage):  # the image's own bootloader; cloud-init reads the seed
        return [
            "-drive", f"file={spec.seed.resolve()},if=ide,media=cdrom,readonly=on",
            "-smbios", "type=1,serial=ds=nocloud",
        ]  # fmt: skip
    key = base64.b64encode(spec.public_key.strip().encode()).decode()
    return [
        "-kernel", str(spec.image.kernel), "-initrd", str(spec.image.initrd),
        "-append", f"root=/dev/vda rw console=ttyS0 net.ifnames=0 postgressor.authorized_key={key}",
    ]  # fmt: skip


UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


def _monitor_args(spec: VMSpec) -> list[str]:
    """A monitor socket for inspecting the VM (``info``, ``savevm``); left out when its path is too long."""
    path = str(spec.monitor.resolve())
    return [] if len(path.encode()) > UNIX_PATH_MAX else ["-monitor", f"unix:{path},server=on,wait=off"]


def qemu_command(spec: VMSpec, ports: dict[int, int], accel: str) -> list[str]:
    forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in ports.items())
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        "qemu-system-x86_64", *cpu,
        "-smp", str(spec.cpus), "-m", str(spec.memory_mb),
        # absolute paths: a daemonized QEMU works from /, and saving its state reopens the disk by name
        "-display", "none", "-serial", f"file:{spec.console_log.resolve()}",
        "-drive", f"file={spec.disk.resolve()},if=virtio,format=qcow2,cache=unsafe",
        *_boot_args(spec),
        "-netdev", f"user,id=n0,{forwards}", "-device", "virtio-net-pci,netdev=n0",
        *_monitor_args(spec),
        "-daemonize", "-pidfile", str(spec.pid_file.resolve()),
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
    ports = host_ports(wanted, ports)
    accel, why_not_kvm = _choose_accel(spec.accel)
    log(f"booting the VM ({accel.upper()}, {spec.cpus} CPU, {spec.memory_mb} MB)")
    if why_not_kvm:
        log(f"using TCG (slow emulation), not KVM: {why_not_kvm}")
    if accel == "kvm" and spec.accel == "auto":
        reason = f"the guest did not reach systemd within {KVM_BOOT_TIMEOUT} s (see {spec.console_log.resolve()})"
        try:
            pid = _launch(spec, ports, accel)
            works = _booted(spec, KVM_BOOT_TIMEOUT)
        except PostgressorError as err:
            works, reason = False, str(err)
        _record_accel("kvm" if works else "tcg", "" if works else reason)
        if works:
            return RunningVM(pid=pid, ports=ports, accel=accel)
        log(f"KVM did not boot the guest: {reason}; falling back to TCG (remembered for this kernel)")
        stop(spec.pid_file)
        accel = "tcg"
    pid = _launch(spec, ports, accel)
    return RunningVM(pid=pid, ports=ports, accel=accel)


def stop(pid_file: Path, timeout: float = 20) -> bool:
    """Stop the VM whose QEMU wrote ``pid_file`` if it runs; True when a running VM was stopped."""
    pid = running_pid(pid_file)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(pid_file) is not None:
        time.sleep(0.2)
    if running_pid(pid_file) is not None:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
