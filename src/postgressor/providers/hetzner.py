"""Provider 'hetzner': a Hetzner Cloud server (Debian 13 by default, root login) behind a cloud firewall."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import requests
from hcloud import APIException, Client, HCloudException, exponential_backoff_function
from hcloud.actions import ActionFailedException, ActionTimeoutException
from hcloud.firewalls import Firewall, FirewallRule
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import Server
from hcloud.ssh_keys import SSHKey

from postgressor.advisor.catalogue import load
from postgressor.advisor.regions import resolve_region
from postgressor.errors import PostgressorError, UsageError
from postgressor.providers import retry
from postgressor.providers.base import SizeChange
from postgressor.providers.cloud import (
    OPEN_PORTS,
    PROJECT_LABEL,
    STACK_LABEL,
    CloudProvider,
    Found,
    LabelledServer,
    ResourceKind,
    user_data,
)

TRANSIENT_CODES = {
    "rate_limit_exceeded", "conflict", "bad_gateway", "timeout", "service_error", "server_error", "unavailable",
    "maintenance", "locked", "resource_in_use",  # in use: a firewall still detaching from a deleted server
}  # fmt: skip
MIN_DEFAULT_RAM_GB = 4
SHUTDOWN_TIMEOUT = 180  # seconds an ACPI shutdown may take before the server is powered off hard
ACTION_POLLS = 200  # polls of a change_type action (1, 2, 4, 8 then every 10 s: about half an hour)


class HetznerProvider(CloudProvider):
    name = "hetzner"
    title = "Hetzner"
    kinds = ("ssh_key", "firewall", "server")
    api_errors = (HCloudException, requests.RequestException)

    _client: Client | None = None

    def image(self) -> str:
        return self.settings.hetzner.image

    # ---- credentials and client

    def _token(self) -> tuple[str, str]:
        cfg = self.settings.hetzner.token
        if cfg is not None and cfg.get_secret_value():
            return cfg.get_secret_value(), "[hetzner] token / POSTGRESSOR_HETZNER__TOKEN"
        env = os.environ.get("HCLOUD_TOKEN", "")
        if env:
            return env, "HCLOUD_TOKEN"
        raise UsageError(
            "no Hetzner API token: looked in [hetzner] token, POSTGRESSOR_HETZNER__TOKEN and HCLOUD_TOKEN; "
            "create a Read & Write token in the Cloud console (Security > API tokens) and export HCLOUD_TOKEN"
        )

    @property
    def client(self) -> Client:
        if self._client is None:
            token, _ = self._token()
            client = Client(token=token, api_endpoint=self.settings.hetzner.api_endpoint,
                            application_name="postgressor", timeout=(10, 60), poll_max_retries=ACTION_POLLS,
                            poll_interval=exponential_backoff_function(base=1.0, multiplier=2, cap=10.0))  # fmt: skip
            # The SDK retries 429/502/504 with real sleeps and would repeat a POST /servers blindly;
            # our retry layer does it instead (injectable sleep, look-before-recreate).
            for base in (client._client, client._client_hetzner):
                base._retry_max_retries = 0
            self._client = client
        return self._client

    def validate(self) -> None:
        super().validate()
        self._token()

    def resolve(self, name: str) -> str:
        return resolve_region("hetzner", name)

    def default_size(self) -> str:
        """The cheapest x86 size in the catalogue offered in the region with at least 4 GB (cx23 in the EU)."""
        sizes = [s for s in load().sizes_of("hetzner")
                 if s.arch == "x86" and s.ram_gb >= MIN_DEFAULT_RAM_GB and s.offered_in(self.region)]  # fmt: skip
        if not sizes:
            raise UsageError(f"no default Hetzner size known for {self.region}; pass --size (e.g. cpx22)")
        return min(sizes, key=lambda s: s.price_in(self.region)).name

    def ssh_timeout(self) -> float:
        return self.settings.hetzner.ssh_timeout

    # ---- errors

    def transient(self, err: BaseException) -> bool:
        if isinstance(err, APIException):
            code = err.code
            return code in TRANSIENT_CODES or (isinstance(code, int) and (code == 429 or code >= 500))
        return isinstance(err, requests.ConnectionError | requests.Timeout)

    def explain(self, err: BaseException) -> PostgressorError | None:
        if not isinstance(err, APIException):
            return None
        code, message = err.code, err.message
        if code == "unauthorized":
            return PostgressorError(
                f"Hetzner rejected the API token from {self._token()[1]} ({message}); "
                "create a new Read & Write token in the Cloud console and set HCLOUD_TOKEN"
            )
        if code == "forbidden":
            return PostgressorError(f"Hetzner refused the call ({message}); the token must be Read & Write")
        if code == "resource_limit_exceeded":
            return PostgressorError(
                f"Hetzner project limit reached ({message}); delete unused resources or ask Hetzner to raise it"
            )
        if code in ("resource_unavailable", "placement_error"):
            others = ", ".join(r.code for r in load().regions_of("hetzner") if r.code != self.region)
            return PostgressorError(
                f"Hetzner cannot place a {self.size} server in {self.region} right now ({message}); "
                f"try another --region ({others}) or --size, or retry later"
            )
        if code == "invalid_input":
            return PostgressorError(
                f"Hetzner refused the request ({message}); check --size ({self.size}) and [hetzner] image "
                f"({self.settings.hetzner.image})"
            )
        return None

    # ---- resources

    def _selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels().items())

    def resource_kinds(self) -> dict[str, ResourceKind]:
        keys, firewalls, servers = self.client.ssh_keys, self.client.firewalls, self.client.servers
        return {
            "ssh_key": ResourceKind(
                lambda: [Found(str(k.id), {"name": k.name}) for k in keys.get_all(label_selector=self._selector())],
                lambda id: self._gone_ok(lambda: keys.delete(SSHKey(id=int(id))))),
            "firewall": ResourceKind(
                lambda: [Found(str(f.id), {"name": f.name})
                         for f in firewalls.get_all(label_selector=self._selector())],
                lambda id: self._gone_ok(lambda: firewalls.delete(Firewall(id=int(id))))),
            "server": ResourceKind(
                lambda: [self._server_found(s) for s in servers.get_all(label_selector=self._selector())],
                self._delete_server),
        }  # fmt: skip

    @staticmethod
    def _gone_ok(call: Callable[[], object]) -> None:
        try:
            call()
        except APIException as err:
            if err.code != "not_found":
                raise

    def list_labelled(self) -> list[LabelledServer]:
        """Servers in every location whose labels name this project (a label selector, one paged call)."""
        servers = self.client.servers.get_all(label_selector=f"{PROJECT_LABEL}={self.identity}")
        return [LabelledServer(
            str(s.id), s.name or "", (s.labels or {}).get(STACK_LABEL, ""), (s.labels or {}).get(PROJECT_LABEL, ""),
            _location(s), s.status or "", s.created.isoformat() if s.created else "",
        ) for s in servers]  # fmt: skip

    @staticmethod
    def _server_found(server: Any) -> Found:
        ipv4 = server.public_net.ipv4.ip if server.public_net and server.public_net.ipv4 else ""
        return Found(str(server.id), {"name": server.name, "ipv4": ipv4,
                                      "type": server.server_type.name if server.server_type else ""})  # fmt: skip

    def _delete_server(self, id: str) -> None:
        try:
            self.client.servers.delete(Server(id=int(id)))
        except APIException as err:
            if err.code != "not_found":
                raise
            return
        self.poll(f"deleting server {id}", lambda: self._exists(int(id)), lambda exists: not exists,
                  timeout=300, interval=2)  # fmt: skip

    def _exists(self, id: int) -> bool:
        try:
            self.client.servers.get_by_id(id)
        except APIException as err:
            if err.code == "not_found":
                return False
            raise
        return True

    def create_server(self, public_key: str) -> str:
        labels = self.labels()
        fw_labels: Any = labels  # the SDK annotates firewall labels as str; the API takes a mapping
        name = self.resource_name()
        key = self.ensure("ssh_key", lambda: Found(
            str(self.client.ssh_keys.create(name=name, public_key=public_key, labels=labels).id), {"name": name}))
        rules = [FirewallRule(direction="in", protocol="tcp", port=str(port), source_ips=["0.0.0.0/0", "::/0"],
                              description=f"postgressor {port}")
                 for port in sorted({*OPEN_PORTS, *self.settings.hardening.extra_ports})]  # fmt: skip
        firewall = self.ensure("firewall", lambda: Found(
            str(self.client.firewalls.create(name=name, rules=rules, labels=fw_labels).firewall.id), {"name": name}))

        actions: list[int] = []  # the create action of a server made in this run

        def create() -> Found:
            response = self.client.servers.create(
                name=name, server_type=ServerType(name=self.size), image=Image(name=self.settings.hetzner.image),
                ssh_keys=[SSHKey(id=int(key.id))], firewalls=[Firewall(id=int(firewall.id))],
                user_data=user_data(), labels=labels, location=Location(name=self.region),
            )  # fmt: skip
            if response.action is not None:
                actions.append(response.action.id)
            return self._server_found(response.server)

        found = self.ensure("server", create)
        self._power_on(int(found.id))
        server = self.poll("the server start", lambda: self._starting(int(found.id), actions),
                           lambda s: s.status == "running", timeout=600, interval=3)  # fmt: skip
        ipv4 = self._server_found(server).details["ipv4"]
        if not ipv4:
            raise PostgressorError(f"Hetzner server {found.id} has no public IPv4; postgressor needs one")
        return str(ipv4)


    def _starting(self, id: int, actions: list[int]) -> Any:
        """The server, unless its create action failed (``status: error`` with an ``error`` object)."""
        for action_id in actions:
            action = self.client.actions.get_by_id(action_id)
            if action.status == "error":
                error: Any = action.error or {}
                raise PostgressorError(
                    f"Hetzner could not create server {id} ({error.get('code', 'error')}: "
                    f"{error.get('message', 'action failed')}); 'postgressor destroy' removes it, then try again "
                    "(another --region or --size if it repeats)"
                )
        return self.client.servers.get_by_id(id)

    def server_power(self, id: str) -> str:
        try:
            status = str(self.client.servers.get_by_id(int(id)).status or "unknown")
        except APIException as err:
            if err.code == "not_found":
                return "missing"
            raise
        return {"initializing": "starting", "deleting": "missing"}.get(status, status)

    def _power_on(self, id: int) -> None:
        """Power on a server that is off (or being stopped); the caller then waits for "running"."""
        server = self.poll("the server to settle", lambda: self.client.servers.get_by_id(id),
                           lambda s: s.status != "stopping", timeout=300, interval=3)  # fmt: skip
        if server.status == "off":
            self.log(f"Hetzner server {id} is off; powering it on")
            self.api("power the server on", lambda: self.client.servers.power_on(Server(id=id)))


    # ---- resizing: POST /servers/{id}/actions/change_type (docs.hetzner.cloud/reference/cloud, "Change the Type
    # of a Server"): only on a server that is off, to a type of the same storage_type with an equal or bigger
    # disk; upgrade_disk=false keeps the disk, so a later downgrade stays possible. Then Hetzner starts it again.

    def read_size(self, id: str) -> dict[str, Any] | None:
        try:
            server = self.client.servers.get_by_id(int(id))
        except APIException as err:
            if err.code == "not_found":
                return None
            raise
        return {"type": server.server_type.name if server.server_type else ""}

    def asked_size(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"type": self.size}

    def size_names(self, size: dict[str, Any]) -> tuple[str, str]:
        return str(size["type"]), str(size["type"])

    def check_resize(self, id: str, current: dict[str, Any], asked: dict[str, Any]) -> tuple[str, ...]:
        server = self.client.servers.get_by_id(int(id))
        new = self.client.server_types.get_by_name(asked["type"])
        if new is None:
            known = ", ".join(s.name for s in load().sizes_of("hetzner"))
            raise UsageError(f"Hetzner has no server type '{asked['type']}'; pick another --size (e.g. {known})")
        old: Any = server.server_type
        disk = server.primary_disk_size or 0
        why = ""
        if new.architecture != old.architecture:
            why = f"it is {new.architecture} and the server's disk holds an {old.architecture} system"
        elif new.storage_type != old.storage_type:
            why = f"its disk is {new.storage_type} storage, the server's is {old.storage_type}; Hetzner keeps the kind"
        elif (new.disk or 0) < disk:
            why = (f"its disk ({new.disk} GB) is smaller than the server's ({disk} GB) and Hetzner never shrinks a "
                   f"disk; pick a type with at least {disk} GB")  # fmt: skip
        if why:
            raise UsageError(f"Hetzner cannot change server {id} from {old.name} to {new.name}: {why}")
        return (f"the disk stays {disk} GB (upgrade_disk=false), so a smaller type stays possible later",)

    def change_size(self, change: SizeChange) -> None:
        id = int(change.server)
        stopped_here = self._shut_down(id)
        try:
            action = self.client.servers.change_type(Server(id=id), ServerType(name=change.target["type"]),
                                                     upgrade_disk=False)  # fmt: skip
            action.wait_until_finished()  # the SDK's waiter: raises when the action ends in error
        except (HCloudException, requests.RequestException) as err:
            if stopped_here:
                self._restart(id)
            if isinstance(err, ActionFailedException | ActionTimeoutException):
                error: Any = err.action.error or {}
                raise PostgressorError(f"the change_type action {err.action.id} ended in "
                                       f"{error.get('code', err.action.status)}: {error.get('message', '')}"
                                       .rstrip(": ")) from None  # fmt: skip
            raise
        self._restart(id)

    def _shut_down(self, id: int) -> bool:
        """Stop the server for change_type: an ACPI shutdown (PostgreSQL stops cleanly), a hard power-off if it
        does not finish in time. False when it was off already."""
        servers = self.client.servers
        if servers.get_by_id(id).status == "off":
            return False
        self.log(f"shutting Hetzner server {id} down to change its type (PostgreSQL stops cleanly)")
        self.api("shut the server down", lambda: servers.shutdown(Server(id=id)))
        # The shutdown action only says the ACPI request was sent (API docs), so wait for "off".
        try:
            self.poll("the server to shut down", lambda: servers.get_by_id(id), lambda s: s.status == "off",
                      timeout=SHUTDOWN_TIMEOUT, interval=3)  # fmt: skip
        except PostgressorError:
            self.log(f"server {id} did not shut down within {SHUTDOWN_TIMEOUT} s; powering it off")
            self.api("power the server off", lambda: servers.power_off(Server(id=id))).wait_until_finished()
        return True

    def _restart(self, id: int) -> None:
        """Power the server on (unless change_type already did) and wait until it runs; never raises, so the
        error that led here is the one reported."""
        try:
            self._power_on(id)
            self.poll("the server start", lambda: self.client.servers.get_by_id(id),
                      lambda s: s.status == "running", timeout=600, interval=3)  # fmt: skip
        except (PostgressorError, HCloudException, requests.RequestException) as err:
            self.log(f"could not start server {id} again: {retry.short(err)}")


def _location(server: Any) -> str:
    """The server's location name (``location``; older API versions only had ``datacenter.location``)."""
    location = getattr(server, "location", None) or getattr(getattr(server, "datacenter", None), "location", None)
    return str(getattr(location, "name", "") or "")
