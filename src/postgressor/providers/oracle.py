"""Provider 'oracle': an OCI instance (Ubuntu, user 'ubuntu') in its own VCN, subnet and security list.

Default shape VM.Standard.A1.Flex at 2 OCPU / 12 GB, inside the Always Free limits. A1 launches often fail
with "Out of host capacity": every availability domain is tried, with backoff between rounds.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import oci
import requests
from oci.circuit_breaker import NoCircuitBreakerStrategy
from oci.core import models as core
from oci.exceptions import ClientError, ServiceError

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

DEFAULT_SHAPE = "VM.Standard.A1.Flex"
FREE_OCPUS, FREE_MEMORY_GB = 2, 12
IMAGE_OS, IMAGE_VERSION = "Canonical Ubuntu", "24.04"
VCN_CIDR, SUBNET_CIDR = "10.77.0.0/16", "10.77.1.0/24"
DEAD = ("TERMINATING", "TERMINATED")
RESIZE_TIMEOUT = 1800  # seconds for an instance to come back at its new shape


def is_capacity(err: BaseException) -> bool:
    return isinstance(err, ServiceError) and "capacity" in str(err.message or "").lower()


class OracleProvider(CloudProvider):
    name = "oracle"
    title = "Oracle Cloud"
    kinds = ("vcn", "internet_gateway", "security_list", "subnet", "server")
    login_user = "ubuntu"  # Canonical's images: NOPASSWD sudo
    api_errors = (ServiceError, oci.exceptions.RequestException, oci.exceptions.ConnectTimeout,
                  requests.RequestException)  # fmt: skip

    _config: dict[str, Any] | None = None
    _clients: tuple[Any, Any, Any] | None = None

    def image(self) -> str:
        return self.settings.oracle.image_id or f"the newest {IMAGE_OS} {IMAGE_VERSION} image for the shape"

    # ---- configuration and clients

    def _source(self) -> tuple[Path, str]:
        cfg = self.settings.oracle
        path = cfg.config_file or Path(os.environ.get("OCI_CONFIG_FILE") or "~/.oci/config")
        return path.expanduser(), cfg.profile or os.environ.get("OCI_CLI_PROFILE") or "DEFAULT"

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            path, profile = self._source()
            where = f"{path} [{profile}]"
            try:
                config = oci.config.from_file(str(path), profile)
            except oci.exceptions.ConfigFileNotFound:
                raise UsageError(
                    f"no OCI config file at {path} (looked at [oracle] config_file, OCI_CONFIG_FILE, ~/.oci/config); "
                    "create one with 'oci setup config' or the console's API keys page"
                ) from None
            except oci.exceptions.ProfileNotFound:
                raise UsageError(
                    f"profile {profile} is not in {path}; set [oracle] profile or OCI_CLI_PROFILE"
                ) from None
            except (ClientError, ValueError) as err:
                raise UsageError(f"OCI config {where} is invalid ({retry.short(err)}); fix it there") from None
            if self.settings.oracle.pass_phrase is not None:
                config["pass_phrase"] = self.settings.oracle.pass_phrase.get_secret_value()
            try:
                oci.config.validate_config(config)
            except ClientError as err:
                raise UsageError(f"OCI config {where} is invalid ({retry.short(err)}); fix it there") from None
            self._config = config
        return self._config

    def region_hint(self) -> str:
        return str(self.config.get("region", ""))  # the home region: Always Free lives only there

    @property
    def clients(self) -> tuple[Any, Any, Any]:
        """(compute, network, identity), signed with the config's API key, SDK retries off (ours apply)."""
        if self._clients is None:
            config = {**self.config, "region": self.region}
            kwargs: dict[str, Any] = {"circuit_breaker_strategy": NoCircuitBreakerStrategy(), "timeout": (10, 60)}
            if self.settings.oracle.endpoint:
                kwargs["service_endpoint"] = self.settings.oracle.endpoint
            try:
                self._clients = (oci.core.ComputeClient(config, **kwargs),
                                 oci.core.VirtualNetworkClient(config, **kwargs),
                                 oci.identity.IdentityClient(config, **kwargs))  # fmt: skip
            except (ClientError, OSError, ValueError) as err:
                raise UsageError(
                    f"cannot load the OCI API key {config.get('key_file')} named in {self._source()[0]} "
                    f"({retry.short(err)}); check key_file (and [oracle] pass_phrase)"
                ) from None
        return self._clients

    @property
    def compartment(self) -> str:
        return self.settings.oracle.compartment_id or str(self.config["tenancy"])

    def validate(self) -> None:
        _ = self.config
        super().validate()
        cfg = self.settings.oracle
        if self.size == DEFAULT_SHAPE and (cfg.ocpus > FREE_OCPUS or cfg.memory_gb > FREE_MEMORY_GB):
            self.log(f"{cfg.ocpus:g} OCPU / {cfg.memory_gb:g} GB is beyond the A1 Always Free limit "
                     f"({FREE_OCPUS} OCPU / {FREE_MEMORY_GB} GB): it will be billed")  # fmt: skip

    def resolve(self, name: str) -> str:
        return resolve_region("oracle", name)

    def default_size(self) -> str:
        return DEFAULT_SHAPE

    def ssh_timeout(self) -> float:
        return self.settings.oracle.ssh_timeout

    # ---- errors

    def transient(self, err: BaseException) -> bool:
        if isinstance(err, ServiceError):
            if is_capacity(err):
                return False
            return err.status == 429 or err.status >= 500 or (err.status == 409 and err.code in
                                                                ("Conflict", "IncorrectState"))  # fmt: skip
        return isinstance(err, oci.exceptions.RequestException | oci.exceptions.ConnectTimeout
                          | requests.ConnectionError | requests.Timeout)  # fmt: skip

    def explain(self, err: BaseException) -> PostgressorError | None:
        if not isinstance(err, ServiceError):
            return None
        path, profile = self._source()
        if err.status == 401:
            return PostgressorError(
                f"OCI rejected the API key of profile {profile} in {path} ({err.code}); check user, fingerprint "
                "and key_file there, and that the public key is uploaded to that user"
            )
        if err.code in ("LimitExceeded", "QuotaExceeded"):
            return PostgressorError(
                f"OCI service limit reached in {self.region} ({err.message}); terminate other instances, lower "
                "[oracle] ocpus/memory_gb, or request a limit increase"
            )
        if err.code == "NotAuthorizedOrNotFound":
            return PostgressorError(
                f"OCI says not authorized or not found ({err.message}); check [oracle] compartment_id "
                f"({self.compartment}) and your IAM policies"
            )
        return None

    # ---- resources

    def _all(self, fn: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return list(oci.pagination.list_call_get_all_results(fn, *args, **kwargs).data)

    def _mine(self, items: list[Any]) -> list[Any]:
        labels = self.labels()
        return [i for i in items if i.lifecycle_state not in DEAD
                and all((i.freeform_tags or {}).get(k) == v for k, v in labels.items())]  # fmt: skip

    def _vcn_ids(self) -> list[str]:
        recorded = self.state.find("vcn")
        found = [f.id for f in self.find_all("vcn")]
        return list(dict.fromkeys(([recorded.id] if recorded else []) + found))

    def resource_kinds(self) -> dict[str, ResourceKind]:
        compute, network, _ = self.clients

        kinds = {
            "vcn": ResourceKind(self._find_vcns, network.delete_vcn),
            "internet_gateway": ResourceKind(lambda: self._find_in_vcns(network.list_internet_gateways),
                                             self._delete_gateway),
            "security_list": ResourceKind(lambda: self._find_in_vcns(network.list_security_lists),
                                          network.delete_security_list),
            "subnet": ResourceKind(lambda: self._find_in_vcns(network.list_subnets), network.delete_subnet),
            "server": ResourceKind(self._find_instances,
                                   lambda id: compute.terminate_instance(id, preserve_boot_volume=False)),
        }  # fmt: skip
        return {kind: ResourceKind(r.find_all, self._deleter(kind, r.delete)) for kind, r in kinds.items()}

    def _find_vcns(self) -> list[Found]:
        _, network, _ = self.clients
        vcns = self._mine(self._all(network.list_vcns, self.compartment, display_name=self.resource_name()))
        return [Found(v.id, {"route_table": v.default_route_table_id}) for v in vcns]

    def _find_instances(self) -> list[Found]:
        compute, _, _ = self.clients
        instances = self._mine(self._all(compute.list_instances, self.compartment, display_name=self.resource_name()))
        return [Found(i.id, {"availability_domain": i.availability_domain, **_size_of(i)}) for i in instances]

    def _find_in_vcns(self, lister: Any) -> list[Found]:
        found: list[Found] = []
        for vcn in self._vcn_ids():
            found += [Found(r.id, {"vcn": vcn}) for r in self._mine(self._all(lister, self.compartment, vcn_id=vcn))]
        return found

    def _delete_gateway(self, id: str) -> None:
        _, network, _ = self.clients
        self._unroute(id)
        network.delete_internet_gateway(id)

    def _deleter(self, kind: str, call: Callable[[str], object]) -> Callable[[str], None]:
        """Delete (a missing one is fine), then wait until OCI reports it TERMINATED."""

        def delete(id: str) -> None:
            try:
                call(id)
            except ServiceError as err:
                if err.status != 404:
                    raise
            self.poll(f"deleting the {kind} {id}", lambda: self._state_of(kind, id), lambda s: s == "TERMINATED",
                      timeout=600, interval=3)  # fmt: skip

        return delete

    def list_labelled(self) -> list[LabelledServer]:
        """Live instances of the compartment, in the provider's region, whose freeform tags name this project."""
        compute, _, _ = self.clients
        found = []
        for i in self._all(compute.list_instances, self.compartment):
            tags = i.freeform_tags or {}
            if i.lifecycle_state in DEAD or tags.get(PROJECT_LABEL) != self.identity or STACK_LABEL not in tags:
                continue
            found.append(LabelledServer(i.id, i.display_name or "", tags[STACK_LABEL], tags[PROJECT_LABEL],
                                        self.region, str(i.lifecycle_state), str(i.time_created or "")))  # fmt: skip
        return found

    def _getter(self, kind: str) -> Any:
        compute, network, _ = self.clients
        return {"vcn": network.get_vcn, "internet_gateway": network.get_internet_gateway,
                "security_list": network.get_security_list, "subnet": network.get_subnet,
                "server": compute.get_instance}[kind]  # fmt: skip

    def server_power(self, id: str) -> str:
        state = self._state_of("server", id)
        return {"RUNNING": "running", "STOPPED": "off", "STARTING": "starting", "PROVISIONING": "starting",
                "STOPPING": "stopping", "TERMINATING": "missing", "TERMINATED": "missing"}.get(state, state.lower())

    def _state_of(self, kind: str, id: str) -> str:
        try:
            return str(self._getter(kind)(id).data.lifecycle_state)
        except ServiceError as err:
            if err.status == 404:
                return "TERMINATED"
            raise

    def _unroute(self, gateway: str) -> None:
        """Drop route rules that point at ``gateway`` (OCI refuses to delete a gateway still routed to)."""
        _, network, _ = self.clients
        table_id = network.get_internet_gateway(gateway).data.route_table_id
        vcn = network.get_vcn(network.get_internet_gateway(gateway).data.vcn_id).data
        for rt in {table_id, vcn.default_route_table_id} - {None}:
            rules = network.get_route_table(rt).data.route_rules or []
            keep = [r for r in rules if r.network_entity_id != gateway]
            if len(keep) != len(rules):
                network.update_route_table(rt, core.UpdateRouteTableDetails(route_rules=keep))

    def _wait_available(self, kind: str, found: Found) -> None:
        self.poll(f"the {kind} to become available", lambda: self._state_of(kind, found.id),
                  lambda s: s in ("AVAILABLE", "TERMINATED"), timeout=300, interval=2)  # fmt: skip

    def create_server(self, public_key: str) -> str:
        compute, network, _ = self.clients
        name, compartment, tags = self.resource_name(), self.compartment, self.labels()
        common: dict[str, Any] = {"compartment_id": compartment, "display_name": name, "freeform_tags": tags}

        vcn = self.ensure("vcn", lambda: self._vcn_found(network.create_vcn(
            core.CreateVcnDetails(cidr_blocks=[VCN_CIDR], **common)).data))
        self._wait_available("vcn", vcn)
        gateway = self.ensure("internet_gateway", lambda: Found(network.create_internet_gateway(
            core.CreateInternetGatewayDetails(vcn_id=vcn.id, is_enabled=True, **common)).data.id, {"vcn": vcn.id}))
        self._wait_available("internet_gateway", gateway)
        self.api("route 0.0.0.0/0 to the internet gateway", lambda: self._route(vcn, gateway.id))
        ingress = [core.IngressSecurityRule(protocol="6", source="0.0.0.0/0", description=f"postgressor {port}",
                                            tcp_options=core.TcpOptions(destination_port_range=core.PortRange(
                                                min=port, max=port)))
                   for port in sorted({*OPEN_PORTS, *self.settings.hardening.extra_ports})]  # fmt: skip
        egress = [core.EgressSecurityRule(protocol="all", destination="0.0.0.0/0")]
        seclist = self.ensure("security_list", lambda: Found(network.create_security_list(
            core.CreateSecurityListDetails(vcn_id=vcn.id, ingress_security_rules=ingress,
                                           egress_security_rules=egress, **common)).data.id, {"vcn": vcn.id}))
        subnet = self.ensure("subnet", lambda: Found(network.create_subnet(core.CreateSubnetDetails(
            vcn_id=vcn.id, cidr_block=SUBNET_CIDR, route_table_id=vcn.details["route_table"],
            security_list_ids=[seclist.id], **common)).data.id, {"vcn": vcn.id}))  # fmt: skip
        self._wait_available("subnet", subnet)
        image = self.settings.oracle.image_id or self.api("find the Ubuntu image", self._image)
        server = self.ensure("server", lambda: self._launch(subnet.id, image, public_key, common))
        settled = self.poll("the instance to settle", lambda: self._state_of("server", server.id),
                            lambda s: s != "STOPPING", timeout=600, interval=5)  # fmt: skip
        if settled == "STOPPED":
            self.log(f"OCI instance {server.id} is stopped; starting it")
            self.api("start the instance", lambda: compute.instance_action(server.id, "START"))
        instance = self.poll("the instance start", lambda: compute.get_instance(server.id).data,
                             lambda i: i.lifecycle_state in ("RUNNING", *DEAD), timeout=900, interval=5)  # fmt: skip
        if instance.lifecycle_state != "RUNNING":
            raise PostgressorError(
                f"OCI instance {server.id} is {instance.lifecycle_state}; run 'postgressor up' again"
            )
        return str(self.poll("the public IP", lambda: self._public_ip(server.id), bool, timeout=300, interval=3))

    @staticmethod
    def _vcn_found(vcn: Any) -> Found:
        return Found(vcn.id, {"route_table": vcn.default_route_table_id})

    def _route(self, vcn: Found, gateway: str) -> None:
        _, network, _ = self.clients
        table = vcn.details["route_table"]
        rules = network.get_route_table(table).data.route_rules or []
        if not any(r.network_entity_id == gateway and r.destination == "0.0.0.0/0" for r in rules):
            rule = core.RouteRule(destination="0.0.0.0/0", destination_type="CIDR_BLOCK", network_entity_id=gateway)
            network.update_route_table(table, core.UpdateRouteTableDetails(route_rules=[*rules, rule]))

    def _image(self) -> str:
        compute, _, _ = self.clients
        images = self._all(compute.list_images, self.compartment, operating_system=IMAGE_OS,
                           operating_system_version=IMAGE_VERSION, shape=self.size, sort_by="TIMECREATED",
                           sort_order="DESC", lifecycle_state="AVAILABLE")  # fmt: skip
        if not images:
            raise PostgressorError(
                f"OCI lists no {IMAGE_OS} {IMAGE_VERSION} image for {self.size} in {self.region}; "
                "set [oracle] image_id to an Ubuntu image OCID"
            )
        return str(images[0].id)

    def _launch(self, subnet: str, image: str, public_key: str, common: dict[str, Any]) -> Found:
        """Try every availability domain; on 'Out of host capacity' everywhere, back off and go round again."""
        compute, _, identity = self.clients
        cfg = self.settings.oracle
        ads = [ad.name for ad in identity.list_availability_domains(self.compartment).data]
        shape_config = (core.LaunchInstanceShapeConfigDetails(ocpus=cfg.ocpus, memory_in_gbs=cfg.memory_gb)
                        if self.size.endswith(".Flex") else None)  # fmt: skip
        metadata = {"ssh_authorized_keys": public_key, "user_data": base64.b64encode(user_data().encode()).decode()}
        delays = retry.Backoff(attempts=cfg.capacity_rounds, base=30, cap=300, sleep=self.backoff.sleep).delays()
        refused: dict[str, str] = {}
        for round_no in range(cfg.capacity_rounds):
            for n, ad in enumerate(ads):
                details = core.LaunchInstanceDetails(
                    availability_domain=ad, shape=self.size, shape_config=shape_config, metadata=metadata,
                    source_details=core.InstanceSourceViaImageDetails(
                        image_id=image, boot_volume_size_in_gbs=cfg.boot_volume_gb),
                    create_vnic_details=core.CreateVnicDetails(subnet_id=subnet, assign_public_ip=True),
                    **common,
                )  # fmt: skip
                try:
                    token = f"pgsr-{self.creation_token}-{round_no}-{n}"
                    instance = compute.launch_instance(details, opc_retry_token=token).data
                    return Found(instance.id, {"availability_domain": ad, **_size_of(instance)})
                except ServiceError as err:
                    if not (is_capacity(err) or err.code == "NotAuthorizedOrNotFound"):
                        raise
                    refused[ad] = "out of host capacity" if is_capacity(err) else "shape not offered"
                    self.log(f"{ad}: {refused[ad]}")
            delay = next(delays, None)
            if delay is not None:
                self.log(f"no capacity in any availability domain; retrying in {delay:.0f} s")
                self.backoff.sleep(delay)
        tried = ", ".join(f"{ad} ({why})" for ad, why in refused.items())
        raise PostgressorError(
            f"OCI could not place a {self.size} ({cfg.ocpus:g} OCPU / {cfg.memory_gb:g} GB) in {self.region} after "
            f"{cfg.capacity_rounds} rounds: {tried}; try another --region, a smaller shape ([oracle] ocpus, "
            "memory_gb or --size), or retry later ('postgressor up' resumes)"
        )

    # ---- resizing: UpdateInstance with a shape and, for flexible shapes, OCPUs and memory (core API 20160918,
    # UpdateInstanceDetails): "If the instance is running when you change the shape, the instance is rebooted."

    def resize_requested(self) -> bool:
        return bool(self.settings.size) or bool({"ocpus", "memory_gb"} & self.settings.oracle.model_fields_set)

    def read_size(self, id: str) -> dict[str, Any] | None:
        compute, _, _ = self.clients
        try:
            instance = compute.get_instance(id).data
        except ServiceError as err:
            if err.status == 404:
                return None
            raise
        return None if instance.lifecycle_state in DEAD else _size_of(instance)

    def asked_size(self, current: dict[str, Any]) -> dict[str, Any]:
        cfg, chosen = self.settings.oracle, self.settings.oracle.model_fields_set
        return {"shape": self.settings.size or current["shape"],
                "ocpus": cfg.ocpus if "ocpus" in chosen else current["ocpus"],
                "memory_gb": cfg.memory_gb if "memory_gb" in chosen else current["memory_gb"]}  # fmt: skip

    def size_names(self, size: dict[str, Any]) -> tuple[str, str]:
        shape, ocpus, memory = size["shape"], size["ocpus"], size["memory_gb"]
        if not shape.endswith(".Flex"):
            return shape, shape
        priced = f"{shape.removeprefix('VM.Standard.')} {ocpus:g} OCPU / {memory:g} GB"
        if shape == DEFAULT_SHAPE and ocpus <= FREE_OCPUS and memory <= FREE_MEMORY_GB and \
                self.region == self.region_hint():
            priced += " (Always Free)"  # as billing_plan names it: the A1 limit, home region only
        return f"{shape} {ocpus:g} OCPU / {memory:g} GB", priced

    def change_size(self, change: SizeChange) -> None:
        compute, _, _ = self.clients
        target, id = change.target, change.server
        config = (core.UpdateInstanceShapeConfigDetails(ocpus=target["ocpus"], memory_in_gbs=target["memory_gb"])
                  if target["shape"].endswith(".Flex") else None)  # fmt: skip
        details = core.UpdateInstanceDetails(shape=target["shape"], shape_config=config)
        self.api("update the instance's shape", lambda: compute.update_instance(id, details))  # same values: idempotent
        self.log(f"OCI instance {id} reboots into its new shape; waiting until it runs")

        def settled(response: Any) -> bool:
            instance = response.data
            return instance.lifecycle_state in DEAD or (
                at_size(instance, target) and instance.lifecycle_state in ("RUNNING", "STOPPED"))

        try:
            final = oci.wait_until(compute, self.api("read the instance", lambda: compute.get_instance(id)),
                                   evaluate_response=settled, max_interval_seconds=15,
                                   max_wait_seconds=RESIZE_TIMEOUT).data  # fmt: skip
        except oci.exceptions.MaximumWaitTimeExceeded:
            raise PostgressorError(f"OCI instance {id} did not come back at its new shape within "
                                   f"{RESIZE_TIMEOUT} s") from None  # fmt: skip
        if final.lifecycle_state in DEAD:
            raise PostgressorError(f"OCI instance {id} is {final.lifecycle_state}")

    def _public_ip(self, instance: str) -> str:
        compute, network, _ = self.clients
        attachments = self._all(compute.list_vnic_attachments, self.compartment, instance_id=instance)
        for attachment in attachments:
            if attachment.lifecycle_state == "ATTACHED":
                return str(network.get_vnic(attachment.vnic_id).data.public_ip or "")
        return ""


def at_size(instance: Any, target: dict[str, Any]) -> bool:
    """True when ``instance`` has the ``target`` shape; for a Flex shape, its OCPUs and memory too (a fixed shape
    has its own, whatever the request carried)."""
    if not target["shape"].endswith(".Flex"):
        return bool(instance.shape == target["shape"])
    return _size_of(instance) == target


def _size_of(instance: Any) -> dict[str, Any]:
    """An instance's shape, OCPUs and memory, as the state records them."""
    config = instance.shape_config
    return {"shape": instance.shape, "ocpus": float(config.ocpus) if config else 0.0,
            "memory_gb": float(config.memory_in_gbs) if config else 0.0}  # fmt: skip
