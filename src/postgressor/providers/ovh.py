"""Provider 'ovh': an OVHcloud Public Cloud instance (hourly billing, Debian 13 by default, user 'debian').

Public Cloud instances have no cloud firewall by default: the deploy's ufw (22/80/443) is the firewall.
"""

from __future__ import annotations

import os
from typing import Any

import ovh
import requests
from ovh import exceptions as ovherr

from postgressor.advisor.regions import resolve_region
from postgressor.errors import PostgressorError, UsageError
from postgressor.providers.base import SizeChange
from postgressor.providers.cloud import (
    NAME_PREFIX,
    CloudProvider,
    Found,
    LabelledServer,
    ResourceKind,
    stable_tag,
    user_data,
)

DEFAULT_FLAVOR = "d2-4"
CREDENTIAL_SOURCES = ("[ovh] in postgressor.toml, OVH_ENDPOINT / OVH_APPLICATION_KEY / OVH_APPLICATION_SECRET / "
                      "OVH_CONSUMER_KEY, ./ovh.conf, ~/.ovh.conf, /etc/ovh.conf")  # fmt: skip


def status_of(err: BaseException) -> int:
    response = getattr(err, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


class OVHProvider(CloudProvider):
    name = "ovh"
    title = "OVHcloud"
    kinds = ("ssh_key", "server")
    login_user = "debian"  # OVH's Debian images: NOPASSWD sudo
    api_errors = (ovherr.APIError, requests.RequestException)

    _client: ovh.Client | None = None

    def image(self) -> str:
        return self.settings.ovh.image

    # ---- credentials and client

    @property
    def client(self) -> ovh.Client:
        if self._client is None:
            cfg = self.settings.ovh
            endpoint = cfg.endpoint or os.environ.get("OVH_ENDPOINT") or None
            if endpoint and endpoint.startswith(("http://", "https://")):
                ovh.client.ENDPOINTS.setdefault(endpoint, endpoint.rstrip("/"))  # an API URL (e.g. a test's)
            secrets = {name: value.get_secret_value() if value is not None else None for name, value in
                       (("application_key", cfg.application_key), ("application_secret", cfg.application_secret),
                        ("consumer_key", cfg.consumer_key))}  # fmt: skip
            try:
                self._client = ovh.Client(endpoint=endpoint, timeout=(10, 60), **secrets)
            except ovherr.InvalidRegion:
                if endpoint is None:
                    raise UsageError(f"no OVHcloud API endpoint or keys: looked in {CREDENTIAL_SOURCES}; "
                                     "create keys at https://eu.api.ovh.com/createToken/") from None  # fmt: skip
                raise UsageError(f"unknown OVHcloud endpoint '{endpoint}'; use ovh-eu, ovh-ca or ovh-us") from None
            except ovherr.InvalidConfiguration as err:
                raise UsageError(
                    f"OVHcloud API credentials incomplete ({err}); looked in {CREDENTIAL_SOURCES}"
                ) from None
        return self._client

    @property
    def project(self) -> str:
        project = self.settings.ovh.project_id or os.environ.get("OVH_CLOUD_PROJECT_SERVICE", "")
        if not project:
            raise UsageError("no OVHcloud Public Cloud project: set [ovh] project_id or OVH_CLOUD_PROJECT_SERVICE "
                             "(the project id shown in the Public Cloud console)")  # fmt: skip
        return project

    def path(self, *parts: str) -> str:
        return "/".join(("/cloud/project", self.project, *parts))

    def validate(self) -> None:
        super().validate()
        _ = self.project
        _ = self.client

    def resolve(self, name: str) -> str:
        return resolve_region("ovh", name)

    def default_size(self) -> str:
        return DEFAULT_FLAVOR

    def ssh_timeout(self) -> float:
        return self.settings.ovh.ssh_timeout

    # ---- errors

    def transient(self, err: BaseException) -> bool:
        if isinstance(err, ovherr.HTTPError | ovherr.NetworkError | requests.ConnectionError | requests.Timeout):
            return True
        return isinstance(err, ovherr.APIError) and (status_of(err) == 429 or status_of(err) >= 500)

    def explain(self, err: BaseException) -> PostgressorError | None:
        if isinstance(err, ovherr.InvalidKey | ovherr.InvalidCredential | ovherr.NotCredential):
            return PostgressorError(f"OVHcloud rejected the API credentials ({err}); looked in {CREDENTIAL_SOURCES}; "
                                    "create new keys at https://eu.api.ovh.com/createToken/")  # fmt: skip
        if isinstance(err, ovherr.NotGrantedCall | ovherr.Forbidden):
            return PostgressorError(f"OVHcloud refused the call ({err}); the consumer key needs GET/POST/DELETE on "
                                    "/cloud/project/*")  # fmt: skip
        if isinstance(err, ovherr.BadParametersError) and "quota" in str(err).lower():
            return PostgressorError(f"OVHcloud project quota reached ({err}); delete unused instances or raise the "
                                    "project's quota in the console")  # fmt: skip
        return None

    # ---- resources

    def resource_kinds(self) -> dict[str, ResourceKind]:
        return {"ssh_key": ResourceKind(self._find_keys, lambda id: self._delete("sshkey", id)),
                "server": ResourceKind(self._find_instances, self._delete_instance)}  # fmt: skip

    def _find_keys(self) -> list[Found]:
        name = self.resource_name()
        return [Found(k["id"], {"name": name}) for k in self.client.get(self.path("sshkey")) if k.get("name") == name]

    def _find_instances(self) -> list[Found]:
        name = self.resource_name()
        return [self._found(i) for i in self.client.get(self.path("instance"), region=self.region)
                if i.get("name") == name and i.get("status") != "DELETED"]  # fmt: skip

    def list_labelled(self) -> list[LabelledServer]:
        """Instances in every region named ``postgressor-<stack>-<tag>`` whose tag is this project's for that
        stack (OVH instances carry no labels: the name is the label)."""
        found = []
        for i in self.client.get(self.path("instance")):
            name = str(i.get("name", ""))
            stack, _, tag = name.removeprefix(NAME_PREFIX).rpartition("-")
            if not name.startswith(NAME_PREFIX) or tag != stable_tag(self.identity, stack) or \
                    i.get("status") == "DELETED":
                continue
            found.append(LabelledServer(str(i["id"]), name, stack, self.identity, str(i.get("region", "")),
                                        str(i.get("status", "")), str(i.get("created", ""))))  # fmt: skip
        return found

    @staticmethod
    def _found(instance: dict[str, Any]) -> Found:
        return Found(str(instance["id"]), {"name": instance.get("name", ""), "flavor": instance.get("flavorId", "")})

    @staticmethod
    def _ipv4(instance: dict[str, Any]) -> str:
        return next((a["ip"] for a in instance.get("ipAddresses") or []
                     if a.get("type") == "public" and a.get("version") == 4), "")  # fmt: skip

    def _delete(self, what: str, id: str) -> bool:
        """DELETE /cloud/project/{id}/{what}/{id}; False when it was already gone."""
        try:
            self.client.delete(self.path(what, id))
        except ovherr.ResourceNotFoundError:
            return False
        return True

    def _delete_instance(self, id: str) -> None:
        if self._delete("instance", id):
            self.poll(f"deleting instance {id}", lambda: self._status(id), lambda s: s == "DELETED",
                      timeout=600, interval=3)  # fmt: skip

    def server_power(self, id: str) -> str:
        status = self._status(id)
        return {"ACTIVE": "running", "BUILD": "starting", "SHUTOFF": "off", "STOPPED": "off", "SHELVED": "off",
                "SHELVED_OFFLOADED": "off", "DELETED": "missing", "DELETING": "missing"}.get(status, status.lower())

    def _status(self, id: str) -> str:
        try:
            return str(self.client.get(self.path("instance", id)).get("status", ""))
        except ovherr.ResourceNotFoundError:
            return "DELETED"

    def _pick(self, what: str, items: list[dict[str, Any]], name: str) -> str:
        matches = sorted((i for i in items if i.get("name") == name), key=lambda i: str(i.get("creationDate", "")))
        if not matches:
            known = ", ".join(sorted({str(i.get("name")) for i in items})[:12])
            raise PostgressorError(f"OVHcloud has no {what} '{name}' in {self.region} (known: {known}); "
                                   f"pick one with {'--size' if what == 'flavor' else '[ovh] image'}")  # fmt: skip
        return str(matches[-1]["id"])

    # ---- resizing: POST /cloud/project/{serviceName}/instance/{instanceId}/resize {flavorId} ("Migrate your
    # instance to another flavor", api.ovh.com console, answers the instance). OVHcloud's guide resizes only to a
    # flavor with at least the instance's disk; checked here from the flavors' "disk" before any change.

    def _flavors(self) -> list[dict[str, Any]]:
        if self._flavor_list is None:
            self._flavor_list = [f for f in self.client.get(self.path("flavor"), region=self.region)
                                 if f.get("osType") == "linux"]  # fmt: skip
        return self._flavor_list

    _flavor_list: list[dict[str, Any]] | None = None

    def _flavor(self, id: str) -> dict[str, Any]:
        return next((f for f in self._flavors() if f.get("id") == id), {"id": id, "name": id})

    def read_size(self, id: str) -> dict[str, Any] | None:
        try:
            instance = self.client.get(self.path("instance", id))
        except ovherr.ResourceNotFoundError:
            return None
        return {"flavor": str(instance.get("flavorId", ""))}

    def asked_size(self, current: dict[str, Any]) -> dict[str, Any]:
        return {"flavor": self._pick("flavor", self._flavors(), self.size)}

    def size_names(self, size: dict[str, Any]) -> tuple[str, str]:
        name = str(self._flavor(size["flavor"]).get("name", size["flavor"]))
        return name, name

    def check_resize(self, id: str, current: dict[str, Any], asked: dict[str, Any]) -> tuple[str, ...]:
        old, new = self._flavor(current["flavor"]), self._flavor(asked["flavor"])
        if int(new.get("disk") or 0) < int(old.get("disk") or 0):
            bigger = ", ".join(sorted(str(f["name"]) for f in self._flavors()
                                      if int(f.get("disk") or 0) >= int(old.get("disk") or 0)))  # fmt: skip
            raise UsageError(
                f"OVHcloud cannot resize instance {id} from {old['name']} to {new['name']}: its disk "
                f"({new.get('disk')} GB) is smaller than the instance's ({old.get('disk')} GB) and OVHcloud resizes "
                f"only to a flavor with at least the same disk; pick one of {bigger}"
            )
        if int(new.get("disk") or 0) > int(old.get("disk") or 0):
            return (f"the disk grows to {new.get('disk')} GB with the flavor; OVHcloud cannot shrink it back, so "
                    "smaller flavors stay out of reach",)  # fmt: skip
        return ()

    def change_size(self, change: SizeChange) -> None:
        id, flavor = change.server, change.target["flavor"]
        self.client.post(self.path("instance", id, "resize"), flavorId=flavor)  # not retried: not idempotent
        # OpenStack passes through RESIZE (and VERIFY_RESIZE until the resize is confirmed) to ACTIVE, or SHUTOFF
        # for an instance that was stopped; ERROR when the resize failed.
        instance = self.poll("the resize", lambda: self.client.get(self.path("instance", id)),
                             lambda i: i.get("status") == "ERROR" or (i.get("flavorId") == flavor and
                                                                      i.get("status") in ("ACTIVE", "SHUTOFF")),
                             timeout=1800, interval=5)  # fmt: skip
        if instance.get("status") == "ERROR":
            raise PostgressorError(f"OVHcloud instance {id} is in ERROR after the resize; check it in the console "
                                   "(or open a ticket), then run 'postgressor up' again")  # fmt: skip

    def create_server(self, public_key: str) -> str:
        regions = self.api("list the project's regions", lambda: self.client.get(self.path("region")))
        if self.region not in regions:
            raise PostgressorError(f"OVHcloud project {self.project} cannot use region {self.region}; it has "
                                   f"{', '.join(sorted(regions))} (enable more in the console or pick --region)")
        name = self.resource_name()
        key = self.ensure("ssh_key", lambda: Found(self.client.post(
            self.path("sshkey"), name=name, publicKey=public_key, region=self.region)["id"], {"name": name}))
        flavor = self._pick("flavor", self.api("list flavors", lambda: [
            f for f in self.client.get(self.path("flavor"), region=self.region) if f.get("osType") == "linux"]),
            self.size)  # fmt: skip
        image = self._pick("image", self.api("list images", lambda: self.client.get(
            self.path("image"), region=self.region, osType="linux")), self.settings.ovh.image)  # fmt: skip
        server = self.ensure("server", lambda: self._found(self.client.post(
            self.path("instance"), flavorId=flavor, imageId=image, name=name, region=self.region,
            sshKeyId=key.id, userData=user_data(), monthlyBilling=False)))  # fmt: skip
        if self._status(server.id) in ("SHUTOFF", "STOPPED"):
            self.log(f"OVHcloud instance {server.id} is stopped; starting it")
            self.api("start the instance", lambda: self.client.post(self.path("instance", server.id, "start")))
        instance = self.poll("the instance start", lambda: self.client.get(self.path("instance", server.id)),
                             lambda i: i.get("status") in ("ACTIVE", "ERROR"), timeout=900, interval=5)  # fmt: skip
        if instance.get("status") != "ACTIVE":
            raise PostgressorError(f"OVHcloud instance {server.id} is in ERROR; 'postgressor destroy' removes it, "
                                   "then try again (another --region or --size if it repeats)")  # fmt: skip
        ipv4 = self._ipv4(instance)
        if not ipv4:
            raise PostgressorError(f"OVHcloud instance {server.id} has no public IPv4; postgressor needs one")
        return ipv4
