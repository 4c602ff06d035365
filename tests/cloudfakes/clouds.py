"""One adapter per provider over its fake, so the same fault tests run against Hetzner, OCI and OVH."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudfakes import hetzner, oci, ovh
from cloudfakes.base import FakeAPI
from cloudfakes.harness import Recorder, quick_backoff, settings, state_for
from postgressor.config import Settings
from postgressor.providers.cloud import CloudProvider
from postgressor.providers.hetzner import HetznerProvider
from postgressor.providers.oracle import OracleProvider
from postgressor.providers.ovh import OVHProvider

NAMES = ("hetzner", "oracle", "ovh")


@dataclass
class Cloud:
    name: str
    api: Any  # FakeHetzner | FakeOCI | FakeOVH
    settings: Settings
    cls: type[CloudProvider]
    create: tuple[str, str]  # method and path regex of the server create call
    server_error: tuple[int, Any]  # a 5xx as the provider sends it
    rate_limited: tuple[int, Any]
    secrets: tuple[str, ...]  # must never appear in state or messages
    user: str

    def provider(self, rec: Recorder, hook: Callable[[str], None] | None = None, **changes: Any) -> CloudProvider:
        cfg = self.settings.model_copy(update=changes) if changes else self.settings
        return self.cls(cfg, state_for(cfg), rec.log, backoff=quick_backoff(rec), hook=hook)

    def count(self, kind: str) -> int:
        """Live resources of ``kind`` on the fake (what would be billed or left behind)."""
        api = self.api
        if self.name == "hetzner":
            return len({"ssh_key": api.ssh_keys, "firewall": api.firewalls, "server": api.servers}[kind])
        if self.name == "ovh":
            return len({"ssh_key": api.ssh_keys, "server": api.instances}[kind])
        oci_kind = {"vcn": "Vcn", "internet_gateway": "InternetGateway", "subnet": "Subnet",
                    "server": "Instance"}.get(kind)
        if kind == "security_list":
            return len([s for s in api.of("SecurityList") if not s.get("_default")])
        assert oci_kind is not None, kind
        return len(api.of(oci_kind))

    def leftovers(self, kinds: tuple[str, ...]) -> dict[str, int]:
        return {kind: n for kind in kinds if (n := self.count(kind))}


def config_for(cloud: Cloud, tmp_path: Path) -> None:
    """postgressor.toml pointing the CLI at the cloud's fake, with the credentials the fake accepts."""
    s = cloud.settings
    if cloud.name == "hetzner":
        text = f'[hetzner]\napi_endpoint = "{s.hetzner.api_endpoint}"\ntoken = "{s.hetzner.token.get_secret_value()}"\n'
    elif cloud.name == "oracle":
        text = f'[oracle]\nconfig_file = "{s.oracle.config_file}"\nendpoint = "{s.oracle.endpoint}"\n'
    else:
        text = (f'region = "{s.region}"\n[ovh]\nendpoint = "{s.ovh.endpoint}"\napplication_key = "{ovh.APP_KEY}"\n'
                f'application_secret = "{ovh.APP_SECRET}"\nconsumer_key = "{ovh.CONSUMER_KEY}"\n'
                f'project_id = "{ovh.PROJECT}"\n')  # fmt: skip
    (tmp_path / "postgressor.toml").write_text(f'provider = "{cloud.name}"\nstate_dir = "{s.state_dir}"\n{text}')


@contextmanager
def started(name: str, tmp: Path, **overrides: Any) -> Iterator[Cloud]:
    state_dir = tmp / ".postgressor"
    if name == "hetzner":
        api: FakeAPI = hetzner.FakeHetzner().start()
        cfg = settings(state_dir, name, hetzner={"token": hetzner.TOKEN, "api_endpoint": f"{api.url}/v1"},
                       **overrides)
        cloud = Cloud(name, api, cfg, HetznerProvider, ("POST", "/v1/servers"),
                      (503, {"error": {"code": "unavailable", "message": "service unavailable", "details": {}}}),
                      (429, {"error": {"code": "rate_limit_exceeded", "message": "limit", "details": {}}}),
                      (hetzner.TOKEN,), "root")
    elif name == "oracle":
        path, key = oci.write_config(tmp)
        api = oci.FakeOCI(public_key=key.public_key(), ads=("AD-1", "AD-2", "AD-3")).start()
        cfg = settings(state_dir, name, oracle={"config_file": path, "endpoint": api.url}, **overrides)
        cloud = Cloud(name, api, cfg, OracleProvider, ("POST", "/20160918/instances"),
                      (503, {"code": "ServiceUnavailable", "message": "try again"}),
                      (429, {"code": "TooManyRequests", "message": "Too many requests for the tenancy"}),
                      (), "ubuntu")
    else:
        api = ovh.FakeOVH().start()
        cfg = settings(state_dir, name, region="GRA11", **{"ovh": {
            "endpoint": api.register(f"fake-ovh-{id(api)}"), "application_key": ovh.APP_KEY,
            "application_secret": ovh.APP_SECRET, "consumer_key": ovh.CONSUMER_KEY, "project_id": ovh.PROJECT},
            **overrides})
        cloud = Cloud(name, api, cfg, OVHProvider, ("POST", f"/1.0/cloud/project/{ovh.PROJECT}/instance"),
                      (500, {"message": "Internal server error"}),
                      (429, {"message": "Too many requests"}), (ovh.APP_SECRET, ovh.CONSUMER_KEY), "debian")
    try:
        yield cloud
    finally:
        api.stop()
    assert not api.bugs, api.bugs
