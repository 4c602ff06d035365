"""The local provider's default image, which the README's first command boots: Debian built with debootstrap,
started with its own kernel and the stack's key on the kernel command line.

The deploys on top are tested on the golden box (the cloud image, as the clouds hand out); this checks what is
particular to this image: it builds, boots, takes the key, makes its own host keys and grows its root file system.
"""

from __future__ import annotations

from pathlib import Path

from postgressor.remote.ssh import generate_keypair, run, wait_for_ssh
from postgressor.state import HostRecord
from postgressor.vm import image, machine
from vmstack import require_vm_tools


def test_the_base_image_boots_and_takes_the_key_from_the_kernel_command_line(
    base_image: image.BaseImage, tmp_path: Path
) -> None:
    require_vm_tools()
    base = base_image  # built in the background while the tests that need no VM ran (conftest.py)
    key_path = tmp_path / "id_ed25519"
    public = generate_keypair(key_path, "postgressor-base-image-test")
    spec = machine.VMSpec(directory=tmp_path / "vm", image=base, public_key=public, accel="tcg")
    running = machine.boot(spec, None, lambda line: None)
    try:
        seen = wait_for_ssh("127.0.0.1", running.ports[22], timeout=600)
        assert seen.startswith("ssh-ed25519 ")
        host = HostRecord("127.0.0.1", running.ports[22], "root", str(key_path), seen)
        # One value per line (authorized_keys is written without a final newline).
        result = run(host, "hostname; df --output=size -BG / | tail -1; echo \"$(cat /root/.ssh/authorized_keys)\"; "
                           "systemctl is-active ssh", timeout=120)  # fmt: skip
        assert result.ok, result.stderr
        name, size, authorized, sshd = result.stdout.split("\n")[:4]
        assert name == "postgressor"
        assert int(size.strip().rstrip("G")) >= 14  # grown from the image's 3 GB to the VM's 16 GB disk
        assert authorized.split()[:2] == public.split()[:2]
        assert sshd == "active"
    finally:
        machine.stop(spec.pid_file)
