"""`postgressor up --provider hetzner` end to end: a fake Hetzner API whose servers are real local VMs.

Creating a server through the fake boots a Debian VM (postgressor.vm) with the public key the provider
registered through the fake's POST /ssh_keys. Its disk is a copy-on-write copy of the run's golden box, as a
Hetzner server created from a snapshot image of a running box: a cold boot of a crash-consistent disk, with a
new root key, whose deploy then converges what is there instead of installing from scratch.

A Hetzner server answers SSH on port 22 of its public IPv4; the VM's SSH is a QEMU hostfwd, so the fake
gives each VM a dedicated loopback address (127.0.0.77) and QEMU binds the forward on 127.0.0.77:22 (nothing
else listens there: this machine runs no sshd). The provider code is therefore exactly what runs against
Hetzner: port 22, the server's ipv4, no test switch.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from golden_stack import write_box_files

from cloudfakes.hetzner import TOKEN, FakeHetzner
from postgressor.box.layout import CADDY_STORAGE
from postgressor.vm import cloudimage, machine
from vmstack import Golden, Stack, require_vm_tools

VM_ADDRESS = "127.0.0.77"


def _port_22_free(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 22))
        except OSError:
            return False
    return True


class VMServers:
    """The fake's server hooks: boot a VM on create (with the registered key), stop it on delete."""

    def __init__(self, root: Path, golden: Golden) -> None:
        self.root = root
        self.golden = golden
        self.specs: dict[int, machine.VMSpec] = {}
        self.api: FakeHetzner | None = None

    def create(self, server: dict[str, Any], body: dict[str, Any]) -> str:
        assert self.api is not None and not self.specs, "one VM at a time on this machine"
        keys = [self.api.ssh_keys[k]["public_key"] for k in body["ssh_keys"]]
        # A new instance-id and key in the NoCloud seed: cloud-init runs its per-instance steps again (new host
        # keys, the registered root key), as on a server Hetzner creates from a snapshot image.
        spec = machine.VMSpec(directory=self.root / str(server["id"]), image=cloudimage.inspect(self.golden.image),
                              public_key=keys[0], memory_mb=2048, cpus=2, accel="tcg",
                              hostname=f"hetzner-{server['id']}")  # fmt: skip
        spec.directory.mkdir(parents=True)
        overlay = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                                  str(self.golden.disk), str(spec.disk)], capture_output=True, text=True)  # fmt: skip
        assert overlay.returncode == 0, overlay.stderr
        machine.create_disk(spec)  # writes the seed; the disk is there already
        self._boot(spec)
        self.specs[server["id"]] = spec
        return VM_ADDRESS

    def power(self, server: dict[str, Any], action: str) -> None:
        """Off stops QEMU (the disk stays); on boots the same disk again, as a server powered on does."""
        spec = self.specs[server["id"]]
        if action == "poweron":
            self._boot(spec)
        else:
            machine.stop(spec.pid_file)

    def _boot(self, spec: machine.VMSpec) -> None:
        command = machine.qemu_command(spec, {22: 22}, "tcg")
        command = [arg.replace("hostfwd=tcp:127.0.0.1:22-:22", f"hostfwd=tcp:{VM_ADDRESS}:22-:22") for arg in command]
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    def delete(self, server: dict[str, Any]) -> None:
        spec = self.specs.pop(server["id"], None)
        if spec is not None:
            machine.stop(spec.pid_file)

    def stop_all(self) -> None:
        for spec in self.specs.values():
            machine.stop(spec.pid_file)


@pytest.fixture(scope="module")
def hetzner_stack(
    golden: Golden, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, FakeHetzner, VMServers]]:
    require_vm_tools()
    if not _port_22_free(VM_ADDRESS):
        pytest.fail(f"{VM_ADDRESS}:22 is taken; this test forwards the VM's SSH there", pytrace=False)
    vms = VMServers(tmp_path_factory.mktemp("vms"), golden)
    api = FakeHetzner(on_create=vms.create, on_delete=vms.delete, on_power=vms.power)
    vms.api = api
    api.start()
    project = tmp_path_factory.mktemp("project")
    (project / "postgressor.toml").write_text(
        'provider = "hetzner"\n\n[hetzner]\n'
        f'api_endpoint = "{api.url}/v1"\nssh_timeout = 900\n\n'
        '[postgres]\nsource = "distro"   # PGDG is unreachable from the test machine\n'
        + write_box_files(project)  # the golden box's own configuration: nothing to drop
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HCLOUD_TOKEN", TOKEN)
        stack = Stack(project, {})
        try:
            stack.up_result = stack.cli_json("up", "--provider", "hetzner", "--region", "nuremberg", "--yes")
            yield stack, api, vms
        finally:
            stack.cli("destroy", "--yes", "--skip-final-backup", check=False, timeout=300)
            vms.stop_all()
            api.stop()
    assert not api.bugs, api.bugs


def test_up_created_one_hetzner_server_and_deployed_to_it(hetzner_stack: tuple[Stack, FakeHetzner, VMServers]) -> None:
    stack, api, _ = hetzner_stack
    result = stack.up_result
    assert result["host"] == {"address": VM_ADDRESS, "port": 22, "user": "root"}
    assert result["deploy"]["failed"] == 0 and result["deploy"]["operations"]
    assert api.created_servers == 1
    server = next(iter(api.servers.values()))
    assert server["location"]["name"] == "nbg1" and server["server_type"]["name"] == "cx23"
    assert server["labels"]["postgressor-stack"] == "default"
    assert [r["port"] for r in next(iter(api.firewalls.values()))["rules"]] == ["22", "80", "443"]
    kinds = [r.kind for r in stack.state.resources]
    assert kinds == ["cloud", "ssh_key", "firewall", "server"]


def test_status_reaches_postgres_on_the_server(hetzner_stack: tuple[Stack, FakeHetzner, VMServers]) -> None:
    stack, _, _ = hetzner_stack
    # Exit 1 also flags other sections (backups, sync) that are not this test's subject: check the box part.
    report = json.loads(stack.cli("--json", "status", check=False).stdout)
    assert report["reachable"] is True and report["provider"] == "hetzner", report.get("error")
    assert report["host"] == f"{VM_ADDRESS}:22"
    assert report["service"] == "active"
    assert report["postgres"]["settings"]["wal_level"] == "logical"


def test_second_up_powers_the_stopped_server_on_and_reuses_it(
        hetzner_stack: tuple[Stack, FakeHetzner, VMServers]) -> None:  # fmt: skip
    stack, api, vms = hetzner_stack
    # A power cut in the middle of certmagic's in-place write leaves Caddy's certificate metadata empty
    # (caddyserver/caddy#6481; Debian ships Caddy 2.6): Caddy 2.6 then refuses to start. The cut is made so.
    cut = stack.sh(f"find {CADDY_STORAGE}/certificates -name '*.json' -exec truncate -s 0 {{}} + -print; sync")
    assert cut.ok and cut.stdout.strip(), cut.stderr
    # Stopped from outside (Hetzner's console, or the provider): the API says "off" and the VM is down.
    server_id = next(iter(api.servers))
    hcloud = httpx.Client(base_url=f"{api.url}/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert hcloud.post(f"/servers/{server_id}/actions/poweroff").status_code == 201
    assert machine.running_pid(vms.specs[server_id].pid_file) is None
    off = json.loads(stack.cli("--json", "status", check=False).stdout)
    assert off["power"] in ("off", "stopping") and off["reachable"] is False, off
    again = stack.cli_json("up", "--provider", "hetzner", "--region", "nuremberg", "--yes")
    assert again["deploy"]["failed"] == 0
    # Every service came back by itself at boot (the deploy started none of them), Caddy with a new certificate.
    started = [op["name"] for op in again["deploy"]["operations"]
               if op["name"].endswith(" running") and op["status"] != "unchanged"]  # fmt: skip
    assert started == [], started
    assert stack.sh(f"find {CADDY_STORAGE} -type f -size 0 | wc -l").stdout.strip() == "0"
    assert (server_id, "poweron") in api.power_actions and api.servers[server_id]["status"] == "running"
    assert api.created_servers == 1 and len(api.servers) == 1
    assert api.calls("POST", "/v1/servers") == 1


def test_destroy_deletes_everything_and_stops_the_vm(hetzner_stack: tuple[Stack, FakeHetzner, VMServers]) -> None:
    stack, api, vms = hetzner_stack
    specs = list(vms.specs.values())
    assert specs and machine.running_pid(specs[0].pid_file) is not None
    out = json.loads(stack.cli("--json", "destroy", "--yes", "--skip-final-backup").stdout)
    assert out["ok"] is True
    assert api.servers == {} and api.firewalls == {} and api.ssh_keys == {}
    assert machine.running_pid(specs[0].pid_file) is None
    assert not (stack.project / ".postgressor" / "default.json").exists()
