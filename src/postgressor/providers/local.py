"""Provider 'local': a Debian VM under QEMU on this machine, reached over a hostfwd SSH port."""

from __future__ import annotations

import shutil
from pathlib import Path

from postgressor.errors import UsageError
from postgressor.providers.base import Provider
from postgressor.sshconn import generate_keypair, pin_host_key, wait_for_ssh
from postgressor.state import HostRecord
from postgressor.vm import image, machine


class LocalProvider(Provider):
    name = "local"

    def validate(self) -> None:
        if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
            raise UsageError(
                "the local provider needs QEMU; install it (apt-get install qemu-system-x86 qemu-utils)"
            )
        if not image.base_image().exists() and image.missing_tools():
            raise UsageError(
                f"building the local VM image needs {', '.join(image.missing_tools())}; "
                "install them (apt-get install debootstrap e2fsprogs qemu-utils)"
            )

    @property
    def key_path(self) -> Path:
        return self.state.stack_dir / "id_ed25519"

    def _spec(self, public_key: str = "") -> machine.VMSpec:
        cfg = self.settings.local
        return machine.VMSpec(
            directory=self.state.stack_dir, image=image.base_image(), public_key=public_key,
            memory_mb=cfg.memory_mb, cpus=cfg.cpus, disk_gb=cfg.disk_gb, accel=cfg.accel,
            extra_ports=sorted({*self.settings.hardening.extra_ports, *cfg.forward_ports}),
        )  # fmt: skip

    def plan(self) -> list[str]:
        steps = []
        vm = self.state.find("vm")
        if vm is None:
            if not image.base_image().exists():
                steps.append("build the Debian bookworm base image with debootstrap (cached)")
            steps.append(f"create a {self.settings.local.disk_gb} GB VM disk and boot it with QEMU")
        elif machine.running_pid(self._spec().pid_file) is None:
            steps.append("boot the stack's VM (it is stopped)")
        return steps

    def provision(self) -> HostRecord:
        image.ensure_base_image(self.log)
        public_key = generate_keypair(self.key_path, f"postgressor-{self.state.stack}")
        return self._start(public_key)

    def ensure_running(self) -> HostRecord:
        public_key = self.key_path.with_suffix(".pub").read_text().strip()
        return self._start(public_key)

    def _start(self, public_key: str) -> HostRecord:
        spec = self._spec(public_key)
        vm = self.state.find("vm")
        ports = {int(g): int(h) for g, h in (vm.details.get("ports", {}) if vm else {}).items()}
        if machine.running_pid(spec.pid_file) is None or not ports:
            ports = {
                g: ports.get(g) or machine.free_port() for g in (*machine.GUEST_PORTS, *spec.extra_ports)
            }
            self.state.add("vm", self.state.stack, disk=str(spec.disk), ports=ports)
            running = machine.boot(spec, ports, self.log)
            self.state.add(
                "vm", self.state.stack, disk=str(spec.disk), ports=running.ports, accel=running.accel
            )
        pinned = self.state.host.host_key if self.state.host else ""
        host = HostRecord("127.0.0.1", ports[22], "root", str(self.key_path.resolve()), pinned)
        self.log(f"waiting for SSH on 127.0.0.1:{ports[22]}")
        seen = wait_for_ssh(host.address, host.port, timeout=self.settings.local.boot_timeout)
        pin_host_key(self.state, host, seen)
        return host

    def destroy(self) -> list[str]:
        removed = []
        spec = self._spec()
        if machine.stop(spec):
            removed.append("stopped the VM")
        if self.state.stack_dir.exists():
            shutil.rmtree(self.state.stack_dir)
            removed.append(f"deleted {self.state.stack_dir} (disk, keys)")
        return removed
