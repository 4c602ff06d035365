"""Provider 'local': a Debian VM under QEMU on this machine, reached over a hostfwd SSH port.

The VM boots the cached debootstrap image, or the cloud image set in ``local.image`` (with a NoCloud seed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from postgressor.errors import UsageError
from postgressor.providers.base import Provider
from postgressor.remote.ssh import generate_keypair, wait_for_ssh
from postgressor.state import HostRecord
from postgressor.vm import cloudimage, image, machine

DEBOOTSTRAP = "debootstrap"  # the state's record of a VM made from the built image


class LocalProvider(Provider):
    name = "local"

    _cloud_image: cloudimage.CloudImage | None = None

    def validate(self) -> None:
        if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
            raise UsageError(
                "the local provider needs QEMU; install it (apt-get install qemu-system-x86 qemu-utils)"
            )
        if self.settings.local.image:
            self._vm_image()
        elif not image.base_image().exists() and image.missing_tools():
            raise UsageError(
                f"building the local VM image needs {', '.join(image.missing_tools())}; "
                "install them (apt-get install debootstrap e2fsprogs qemu-utils)"
            )

    def resize_hint(self) -> str:
        return "the VM's memory and CPUs are [local] memory_mb and cpus, applied when it is created"

    @property
    def key_path(self) -> Path:
        return self.state.stack_dir / "id_ed25519"

    @property
    def pid_file(self) -> Path:
        return self.state.stack_dir / "qemu.pid"

    def _vm_image(self) -> image.BaseImage | cloudimage.CloudImage:
        path = self.settings.local.image
        if path is None:
            return image.base_image()
        if self._cloud_image is None:
            self._cloud_image = cloudimage.inspect(path.expanduser())
        return self._cloud_image

    def _image_label(self) -> str:
        vm_image = self._vm_image()
        return str(vm_image.path) if isinstance(vm_image, cloudimage.CloudImage) else DEBOOTSTRAP

    def _spec(self, public_key: str) -> machine.VMSpec:
        cfg = self.settings.local
        return machine.VMSpec(
            directory=self.state.stack_dir, image=self._vm_image(), public_key=public_key,
            memory_mb=cfg.memory_mb, cpus=cfg.cpus, disk_gb=cfg.disk_gb, accel=cfg.accel,
            extra_ports=sorted({*self.settings.hardening.extra_ports, *cfg.forward_ports}),
            hostname=f"postgressor-{self.state.stack}",
        )  # fmt: skip

    def image(self) -> str:
        path = self.settings.local.image
        return path.name if path else f"Debian {image.SUITE} (debootstrap)"

    def plan(self) -> list[str]:
        steps = []
        vm = self.state.find("vm")
        if vm is None:
            if self.settings.local.image:
                steps.append(f"write a NoCloud seed for the cloud image {self._image_label()}")
            elif not image.base_image().exists():
                steps.append(f"build the Debian {image.SUITE} base image with debootstrap (cached)")
            steps.append(f"create a {self.settings.local.disk_gb} GB VM disk and boot it with QEMU")
        elif machine.running_pid(self.pid_file) is None:
            steps.append("boot the stack's VM (it is stopped)")
        return steps

    def provision(self) -> HostRecord:
        if not self.settings.local.image:
            image.ensure_base_image(self.log)
        public_key = generate_keypair(self.key_path, f"postgressor-{self.state.stack}")
        return self._start(public_key)

    def ensure_running(self) -> HostRecord:
        public_key = self.key_path.with_suffix(".pub").read_text().strip()
        return self._start(public_key)

    def _start(self, public_key: str) -> HostRecord:
        vm = self.state.find("vm")
        label = self._image_label()
        made_from = vm.details.get("image", DEBOOTSTRAP) if vm else label
        if made_from != label:
            raise UsageError(
                f"stack {self.state.stack!r} was made from {made_from}, but local.image now says {label}; "
                "set it back, or run 'postgressor destroy' first"
            )
        spec = self._spec(public_key)
        ports = {int(g): int(h) for g, h in (vm.details.get("ports", {}) if vm else {}).items()}
        if machine.running_pid(spec.pid_file) is None or not ports:
            ports = machine.host_ports((*machine.GUEST_PORTS, *spec.extra_ports), ports)
            self.state.add("vm", self.state.stack, disk=str(spec.disk), ports=ports, image=label)
            running = machine.boot(spec, ports, self.log)
            self.state.add(
                "vm", self.state.stack, disk=str(spec.disk), ports=running.ports, accel=running.accel,
                image=label,
            )  # fmt: skip
        pinned = self.state.host.host_key if self.state.host else ""
        host = HostRecord("127.0.0.1", ports[22], "root", str(self.key_path.resolve()), pinned)
        self.log(f"waiting for SSH on 127.0.0.1:{ports[22]}")
        seen = wait_for_ssh(host.address, host.port, timeout=self.settings.local.boot_timeout)
        return self.pin(host, seen)

    def power_state(self) -> str:
        if self.state.find("vm") is None:
            return "missing"
        return "running" if machine.running_pid(self.pid_file) is not None else "off"

    def destroy(self) -> list[str]:
        removed = []
        if machine.stop(self.pid_file):
            removed.append("stopped the VM")
        if self.state.stack_dir.exists():
            shutil.rmtree(self.state.stack_dir)
            removed.append(f"deleted {self.state.stack_dir} (disk, keys)")
        return removed
