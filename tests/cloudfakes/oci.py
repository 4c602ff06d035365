"""A fake OCI API (identity + core, the calls postgressor makes), shaped like oci 2.189 deserialises.

Requests must carry the SDK's ``Authorization: Signature keyId="tenancy/user/fingerprint"`` header; the
signature itself is checked when the fake has the public key (the RSA key the test wrote). As oci 2.189
`oci/signer.py` signs them, POST/PUT/PATCH must sign ``content-length``, ``content-type`` and
``x-content-sha256`` too, and ``x-content-sha256`` must be the base64 SHA-256 of the body (else 401).

List calls are paginated as OCI's are: at most ``page_size`` items (or the request's ``limit``), and an
``opc-next-page`` header with the token to send as ``page`` while more remain (REFERENCE §4; the SDK's
`oci/pagination/pagination_utils.py` follows it). A just-launched instance can be left out of the next
``list_lag`` instance lists (a create whose answer was lost and that a lookup does not see yet: the case
``opc-retry-token`` exists for).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cloudfakes.base import FakeAPI, Reply, Request

TENANCY = "ocid1.tenancy.oc1..faketenancy"
USER = "ocid1.user.oc1..fakeuser"
FINGERPRINT = "11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff"
ADS = ("Uocm:AP-MUMBAI-1-AD-1",)
IMAGE_ID = "ocid1.image.oc1..ubuntu2404arm"
PREFIX = "/20160918"


def write_config(directory: Path, region: str = "ap-mumbai-1", fingerprint: str = FINGERPRINT) -> tuple[Path, Any]:
    """A throwaway RSA API key and an OCI config file pointing at it; returns (config path, private key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = directory / "oci_api_key.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    config = directory / "oci_config"
    config.write_text(f"[DEFAULT]\nuser={USER}\nfingerprint={fingerprint}\ntenancy={TENANCY}\nregion={region}\n"
                      f"key_file={pem}\n")
    return config, key


def error(status: int, code: str, message: str) -> Reply:
    return status, {"code": code, "message": message}


class FakeOCI(FakeAPI):
    def __init__(self, public_key: Any = None, ads: tuple[str, ...] = ADS, boot_polls: int = 1,
                 on_launch: Callable[[dict[str, Any]], str] | None = None) -> None:
        super().__init__()
        self.public_key = public_key
        self.ads = ads
        self.no_capacity: set[str] = set()  # ADs that answer "Out of host capacity"
        self.boot_polls = boot_polls
        self.on_launch = on_launch
        self.counter = itertools.count(1)
        self.items: dict[str, dict[str, Any]] = {}  # ocid -> resource (with a "_kind")
        self.launches = 0
        self.retry_tokens: dict[str, str] = {}
        self.page_size = 2  # small, so every list a provider makes must follow opc-next-page
        self.list_lag = 0  # instance lists that do not show the last launched instance yet
        self._lagging: str | None = None
        self.power_actions: list[tuple[str, str]] = []
        self.updates: list[dict[str, Any]] = []  # UpdateInstance bodies accepted

    # ---- helpers

    def _id(self, kind: str) -> str:
        return f"ocid1.{kind}.oc1.ap-mumbai-1.fake{next(self.counter):04d}"

    def _add(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        item = {"id": self._id(kind.lower()), "lifecycleState": "AVAILABLE", "timeCreated": "2026-11-01T00:00:00Z",
                **data, "_kind": kind}
        self.items[item["id"]] = item
        return item

    def of(self, kind: str, alive: bool = True) -> list[dict[str, Any]]:
        return [i for i in self.items.values() if i["_kind"] == kind
                and (not alive or i["lifecycleState"] not in ("TERMINATED", "TERMINATING"))]

    @staticmethod
    def view(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def _advance(self, item: dict[str, Any]) -> None:
        item["_polls"] = item.get("_polls", 0) + 1
        if item["lifecycleState"] in ("PROVISIONING", "STARTING") and item["_polls"] > self.boot_polls:
            item["lifecycleState"] = "RUNNING"
        elif item["lifecycleState"] == "STOPPING" and item["_polls"] > 1:
            item["lifecycleState"] = "STARTING" if item.pop("_reboot", False) else "STOPPED"
            item["_polls"] = 0
        elif item["lifecycleState"] == "TERMINATING" and item["_polls"] > 1:
            item["lifecycleState"] = "TERMINATED"

    def _list(self, kind: str, req: Request) -> Reply:
        items = [i for i in self.items.values() if i["_kind"] == kind
                 and i.get("compartmentId") == req.query.get("compartmentId")]
        for param, field in (("displayName", "displayName"), ("vcnId", "vcnId"), ("instanceId", "instanceId"),
                             ("lifecycleState", "lifecycleState")):
            if param in req.query:
                items = [i for i in items if i.get(field) == req.query[param]]
        if kind == "Instance" and self._lagging:
            items = [i for i in items if i["id"] != self._lagging]
            self.list_lag -= 1
            if self.list_lag <= 0:
                self._lagging = None
        start = int(req.query["page"].removeprefix("fakepage-")) if "page" in req.query else 0
        limit = min(int(req.query.get("limit", self.page_size)), self.page_size)
        page = items[start:start + limit]
        headers = {"opc-next-page": f"fakepage-{start + limit}"} if start + limit < len(items) else {}
        return 200, [self.view(i) for i in page], headers

    def _check_auth(self, req: Request) -> Reply | None:
        auth = req.headers.get("authorization", "")
        key_id = re.search(r'keyId="([^"]+)"', auth)
        if not auth.startswith("Signature ") or not key_id:
            return error(401, "NotAuthenticated", "The required information to authenticate was not provided.")
        if key_id.group(1) != f"{TENANCY}/{USER}/{FINGERPRINT}":
            return error(401, "NotAuthenticated", "The required information to authenticate was incorrect.")
        if req.method in ("POST", "PUT", "PATCH"):
            signed = dict(re.findall(r'(\w+)="([^"]*)"', auth)).get("headers", "").split()
            if not {"content-length", "content-type", "x-content-sha256"} <= set(signed):
                return error(401, "NotAuthenticated", "body headers are not signed")
            digest = base64.b64encode(hashlib.sha256(req.headers["x-raw-body"].encode()).digest()).decode()
            if req.headers.get("x-content-sha256") != digest:
                return error(401, "NotAuthenticated", "x-content-sha256 does not match the body")
        if self.public_key is not None and not self._signature_ok(req, auth):
            return error(401, "NotAuthenticated", "signature mismatch")
        return None

    def _signature_ok(self, req: Request, auth: str) -> bool:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', auth))
        lines = []
        for name in fields["headers"].split():
            if name == "(request-target)":
                lines.append(f"(request-target): {req.method.lower()} {req.headers['x-raw-url']}")
            else:
                lines.append(f"{name}: {req.headers.get(name, '')}")
        try:
            self.public_key.verify(base64.b64decode(fields["signature"]), "\n".join(lines).encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return False
        return True

    # ---- routes

    def route(self, req: Request) -> Reply:
        denied = self._check_auth(req)
        if denied:
            return denied
        if not req.path.startswith(PREFIX):
            return error(404, "NotFound", "unknown path")
        parts = req.path[len(PREFIX):].strip("/").split("/")
        collection, ident = parts[0], (parts[1] if len(parts) > 1 else None)
        handler = getattr(self, f"_r_{collection}", None)
        if handler is None:
            return error(404, "NotFound", "unknown path")
        if ident is not None and (ident not in self.items or (self.items[ident]["lifecycleState"] == "TERMINATED"
                                  and req.method != "GET")):
            return error(404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found.")
        return handler(req, ident)

    def _r_availabilityDomains(self, req: Request, ident: str | None) -> Reply:
        return 200, [{"name": ad, "id": f"ocid1.ad.{n}", "compartmentId": TENANCY} for n, ad in enumerate(self.ads)]

    def _r_images(self, req: Request, ident: str | None) -> Reply:
        if req.query.get("operatingSystem") != "Canonical Ubuntu" or req.query.get("shape") != "VM.Standard.A1.Flex":
            return 200, []
        return 200, [{"id": IMAGE_ID, "displayName": "Canonical-Ubuntu-24.04-aarch64-2026.10.01-0",
                      "operatingSystem": "Canonical Ubuntu", "operatingSystemVersion": "24.04",
                      "lifecycleState": "AVAILABLE", "compartmentId": None}]

    def _generic(self, kind: str, req: Request, ident: str | None, create: Callable[[dict[str, Any]], Reply]) -> Reply:
        if req.method == "GET" and ident is None:
            return self._list(kind, req)
        if req.method == "GET":
            item = self.items[ident]
            if item["_kind"] == "Instance":
                self._advance(item)
            elif item["lifecycleState"] == "TERMINATING":
                item["lifecycleState"] = "TERMINATED"
            return 200, self.view(item)
        if req.method == "POST" and ident is None:
            return create(req.body)
        if req.method == "DELETE":
            return self._delete(self.items[ident])
        return error(405, "NotAllowed", "method not allowed")

    def _delete(self, item: dict[str, Any]) -> Reply:
        kind, ident = item["_kind"], item["id"]
        live = lambda k, field: [i for i in self.of(k) if i.get(field) == ident]  # noqa: E731
        if kind == "Subnet" and any(i.get("_subnet") == ident for i in self.of("Instance")):
            return error(409, "Conflict", "The Subnet has references to VNICs")
        if kind == "Vcn" and (live("Subnet", "vcnId") or live("InternetGateway", "vcnId")
                              or [s for s in live("SecurityList", "vcnId") if not s.get("_default")]):
            return error(409, "Conflict", "The Vcn has dependent resources")
        if kind == "InternetGateway":
            for table in self.of("RouteTable"):
                if any(r["networkEntityId"] == ident for r in table["routeRules"]):
                    return error(409, "Conflict", "The Internet Gateway is used by a route table")
        if kind == "SecurityList" and any(ident in s["securityListIds"] for s in self.of("Subnet")):
            return error(409, "Conflict", "The security list is used by a subnet")
        item["lifecycleState"] = "TERMINATING"
        item["_polls"] = 0
        if kind == "Vcn":
            for child in self.items.values():
                if child.get("_default") and child.get("vcnId") == ident:
                    child["lifecycleState"] = "TERMINATED"
        if kind == "Instance":
            for attachment in self.of("VnicAttachment"):
                if attachment["instanceId"] == ident:
                    attachment["lifecycleState"] = "DETACHED"
        return 204, None

    def _r_vcns(self, req: Request, ident: str | None) -> Reply:
        def create(body: dict[str, Any]) -> Reply:
            vcn = self._add("Vcn", {"compartmentId": body["compartmentId"], "displayName": body["displayName"],
                                    "cidrBlocks": body["cidrBlocks"], "cidrBlock": body["cidrBlocks"][0],
                                    "freeformTags": body.get("freeformTags", {})})
            table = self._add("RouteTable", {"compartmentId": body["compartmentId"], "vcnId": vcn["id"],
                                             "routeRules": [], "_default": True, "displayName": "Default"})
            seclist = self._add("SecurityList", {"compartmentId": body["compartmentId"], "vcnId": vcn["id"],
                                                 "_default": True, "displayName": "Default", "freeformTags": {},
                                                 "ingressSecurityRules": [], "egressSecurityRules": []})
            vcn["defaultRouteTableId"], vcn["defaultSecurityListId"] = table["id"], seclist["id"]
            vcn["lifecycleState"] = "PROVISIONING"  # the first GET shows AVAILABLE
            return 200, self.view(vcn)
        if req.method == "GET" and ident and self.items[ident]["lifecycleState"] == "PROVISIONING":
            self.items[ident]["lifecycleState"] = "AVAILABLE"
        return self._generic("Vcn", req, ident, create)

    def _child(self, kind: str, body: dict[str, Any], **extra: Any) -> Reply:
        vcn = self.items.get(body["vcnId"])
        if vcn is None or vcn["_kind"] != "Vcn" or vcn["lifecycleState"] != "AVAILABLE":
            return error(404, "NotAuthorizedOrNotFound", "vcn not found or not available")
        item = self._add(kind, {"compartmentId": body["compartmentId"], "vcnId": body["vcnId"],
                                "displayName": body["displayName"], "freeformTags": body.get("freeformTags", {}),
                                **extra})
        return 200, self.view(item)

    def _r_internetGateways(self, req: Request, ident: str | None) -> Reply:
        return self._generic("InternetGateway", req, ident, lambda b: self._child(
            "InternetGateway", b, isEnabled=b["isEnabled"], routeTableId=None))

    def _r_securityLists(self, req: Request, ident: str | None) -> Reply:
        return self._generic("SecurityList", req, ident, lambda b: self._child(
            "SecurityList", b, ingressSecurityRules=b["ingressSecurityRules"],
            egressSecurityRules=b["egressSecurityRules"]))

    def _r_subnets(self, req: Request, ident: str | None) -> Reply:
        def create(body: dict[str, Any]) -> Reply:
            if body["routeTableId"] not in self.items or any(s not in self.items for s in body["securityListIds"]):
                return error(404, "NotAuthorizedOrNotFound", "route table or security list not found")
            return self._child("Subnet", body, cidrBlock=body["cidrBlock"], routeTableId=body["routeTableId"],
                               securityListIds=body["securityListIds"])
        return self._generic("Subnet", req, ident, create)

    def _r_routeTables(self, req: Request, ident: str | None) -> Reply:
        table = self.items[ident] if ident else None
        if table is None:
            return error(404, "NotAuthorizedOrNotFound", "not found")
        if req.method == "PUT":
            for rule in req.body.get("routeRules", []):
                if rule["networkEntityId"] not in self.items:
                    return error(400, "InvalidParameter", "route target does not exist")
            table["routeRules"] = req.body.get("routeRules", [])
        return 200, self.view(table)

    def _r_instances(self, req: Request, ident: str | None) -> Reply:
        if req.method == "POST" and ident is not None and "action" in req.query:
            return self._instance_action(self.items[ident], req.query["action"])
        if req.method == "PUT" and ident is not None:
            return self._update_instance(self.items[ident], req.body)
        return self._generic("Instance", req, ident, lambda body: self._launch(req, body))

    def _instance_action(self, item: dict[str, Any], action: str) -> Reply:
        """InstanceAction (core API 20160918): START from STOPPED, STOP from RUNNING; 200 with the Instance.
        Another action, or one the state does not allow, is refused as the service does."""
        moves = {"START": ("STOPPED", "STARTING"), "STOP": ("RUNNING", "STOPPING")}
        if action not in moves:
            return error(400, "InvalidParameter", f"Invalid action: {action}")
        before, after = moves[action]
        if item["lifecycleState"] != before:
            return error(409, "IncorrectState", f"Instance is in {item['lifecycleState']} state, cannot {action}")
        item["lifecycleState"], item["_polls"] = after, 0
        self.power_actions.append((item["id"], action))
        return 200, self.view(item)

    def _update_instance(self, item: dict[str, Any], body: dict[str, Any]) -> Reply:
        """UpdateInstance (PUT /instances/{id}, core API 20160918) for shape changes: "If the instance is running
        when you change the shape, the instance is rebooted" (UpdateInstanceDetails.shape), so a running one goes
        STOPPING, then STARTING, then RUNNING at the new size; a stopped one stays stopped. A1.Flex takes 1-80
        OCPUs and 1-64 GB of memory per OCPU, at most 512 GB (Compute Shapes page, as read for REFERENCE §4; not
        re-checked). The fake's only image is an A1 one, so another shape is refused as incompatible with it.
        Answers 200 with the Instance."""
        if item["lifecycleState"] not in ("RUNNING", "STOPPED"):
            return error(409, "IncorrectState", f"Instance is in {item['lifecycleState']} state, cannot update")
        shape = body.get("shape") or item["shape"]
        if shape != "VM.Standard.A1.Flex":
            return error(400, "InvalidParameter", f"Shape {shape} is not compatible with the instance's image")
        config = {**item["shapeConfig"], **(body.get("shapeConfig") or {})}
        ocpus, memory = config["ocpus"], config["memoryInGBs"]
        if not 1 <= ocpus <= 80 or not ocpus <= memory <= min(64 * ocpus, 512):
            return error(400, "InvalidParameter", f"The shape {shape} does not support {ocpus:g} OCPUs with "
                                                  f"{memory:g} GB of memory (1-64 GB per OCPU, at most 512 GB)")
        item["shape"], item["shapeConfig"] = shape, {"ocpus": ocpus, "memoryInGBs": memory}
        if item["lifecycleState"] == "RUNNING":
            item["lifecycleState"], item["_polls"], item["_reboot"] = "STOPPING", 0, True
        self.updates.append(body)
        return 200, self.view(item)

    def _launch(self, req: Request, body: dict[str, Any]) -> Reply:
        token = req.headers.get("opc-retry-token")
        if token and token in self.retry_tokens:
            return 200, self.view(self.items[self.retry_tokens[token]])
        ad = body["availabilityDomain"]
        if ad not in self.ads:
            return error(404, "NotAuthorizedOrNotFound", "availability domain not found")
        if ad in self.no_capacity:
            return error(500, "InternalError", "Out of host capacity.")
        subnet = self.items.get(body["createVnicDetails"]["subnetId"])
        if subnet is None or subnet["_kind"] != "Subnet":
            return error(404, "NotAuthorizedOrNotFound", "subnet not found")
        if body["sourceDetails"].get("imageId") != IMAGE_ID or body["shape"] != "VM.Standard.A1.Flex":
            return error(400, "InvalidParameter", "image/shape combination not supported")
        config = body.get("shapeConfig") or {}
        if config.get("ocpus", 0) <= 0 or config.get("memoryInGBs", 0) <= 0:
            return error(400, "InvalidParameter", "flexible shapes need ocpus and memoryInGBs")
        if "ssh_authorized_keys" not in body.get("metadata", {}):
            return error(400, "InvalidParameter", "no ssh_authorized_keys")
        instance = self._add("Instance", {
            "compartmentId": body["compartmentId"], "displayName": body["displayName"], "availabilityDomain": ad,
            "shape": body["shape"], "shapeConfig": {"ocpus": config["ocpus"], "memoryInGBs": config["memoryInGBs"]},
            "freeformTags": body.get("freeformTags", {}), "region": "ap-mumbai-1", "metadata": body["metadata"],
            "imageId": IMAGE_ID, "lifecycleState": "PROVISIONING", "_subnet": subnet["id"]})
        public_ip = self.on_launch(instance) if self.on_launch else f"198.51.100.{self.launches + 10}"
        vnic = self._add("Vnic", {"compartmentId": body["compartmentId"], "publicIp": public_ip,
                                  "privateIp": "10.77.1.2", "subnetId": subnet["id"], "isPrimary": True})
        self._add("VnicAttachment", {"compartmentId": body["compartmentId"], "instanceId": instance["id"],
                                     "vnicId": vnic["id"], "subnetId": subnet["id"], "availabilityDomain": ad,
                                     "lifecycleState": "ATTACHED"})
        self.launches += 1
        if self.list_lag:
            self._lagging = instance["id"]
        if token:
            self.retry_tokens[token] = instance["id"]
        return 200, self.view(instance)

    def _r_vnicAttachments(self, req: Request, ident: str | None) -> Reply:
        return self._list("VnicAttachment", req)

    def _r_vnics(self, req: Request, ident: str | None) -> Reply:
        if ident is None:
            return error(404, "NotFound", "unknown path")
        return 200, self.view(self.items[ident])
