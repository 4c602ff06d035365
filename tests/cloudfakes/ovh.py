"""A fake OVHcloud API (/auth/time and the Public Cloud calls postgressor makes), checking request signatures."""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

import ovh.client

from cloudfakes.base import FakeAPI, Reply, Request

APP_KEY, APP_SECRET, CONSUMER_KEY = "fake-app-key", "fake-app-secret", "fake-consumer-key"
PROJECT = "0123456789abcdef0123456789abcdef"
REGIONS = ("GRA11", "SBG5", "SGP1", "AP-SOUTH-MUM-1")
FLAVORS = {"d2-4": "flavor-d2-4", "d2-8": "flavor-d2-8", "b3-8": "flavor-b3-8", "b3-16": "flavor-b3-16"}
IMAGES = {13: "2026-10-01T00:00:00Z", 12: "2025-10-01T00:00:00Z"}  # Debian major: creationDate
# name -> (vcpus, ram MB, disk GB), as the catalogue lists them
FLAVOR_SPECS = {"d2-4": (2, 4000, 50), "d2-8": (4, 8000, 50), "b3-8": (2, 8000, 50), "b3-16": (4, 16000, 100)}


def error(status: int, message: str, code: str | None = None) -> Reply:
    body: dict[str, Any] = {"message": message}
    if code:
        body["errorCode"] = code
    return status, body


class FakeOVH(FakeAPI):
    def __init__(self, regions: tuple[str, ...] = REGIONS, boot_polls: int = 1,
                 on_create: Callable[[dict[str, Any]], str] | None = None) -> None:
        super().__init__()
        self.failed_builds = 0  # instances whose build ends in ERROR
        self.regions = regions
        self.boot_polls = boot_polls
        self.on_create = on_create
        self.counter = itertools.count(1)
        self.ssh_keys: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.power_actions: list[tuple[str, str]] = []
        self.resizes: list[tuple[str, str]] = []  # (instance, flavorId) accepted
        self.failed_resizes = 0  # resizes that end in ERROR

    def register(self, name: str = "fake-ovh") -> str:
        """Add this server to ovh.client.ENDPOINTS (the SDK accepts only known names); returns the name."""
        ovh.client.ENDPOINTS[name] = f"{self.url}/1.0"
        return name

    def _signature_ok(self, req: Request) -> bool:
        h = req.headers
        if h.get("x-ovh-application") != APP_KEY:
            return False
        target = f"{self.url}{h['x-raw-url']}"
        expected = "$1$" + hashlib.sha1("+".join(
            [APP_SECRET, h.get("x-ovh-consumer", ""), req.method, target, h["x-raw-body"], h.get("x-ovh-timestamp", "")]
        ).encode()).hexdigest()
        return h.get("x-ovh-signature") == expected

    def route(self, req: Request) -> Reply:
        if req.path == "/1.0/auth/time":
            return 200, int(time.time())
        if req.headers.get("x-ovh-application") != APP_KEY:
            return error(403, "This application key is invalid", "INVALID_KEY")
        if req.headers.get("x-ovh-consumer") != CONSUMER_KEY:
            return error(403, "This credential does not exist", "INVALID_CREDENTIAL")
        if not self._signature_ok(req):
            return error(400, "Invalid signature")
        prefix = f"/1.0/cloud/project/{PROJECT}/"
        if not req.path.startswith(prefix):
            return error(404, "This service does not exist")
        parts = req.path[len(prefix):].strip("/").split("/")
        handler = getattr(self, f"_{parts[0]}", None)
        if handler is None:
            return error(404, "Got an invalid (or empty) URL")
        return handler(req, parts[1] if len(parts) > 1 else None)

    def _region(self, req: Request, ident: str | None) -> Reply:
        return 200, list(self.regions)

    def _flavor(self, req: Request, ident: str | None) -> Reply:
        region = req.query.get("region")
        return 200, [{"id": f"{fid}-{region}", "name": name, "region": region, "osType": "linux",
                      "vcpus": FLAVOR_SPECS[name][0], "ram": FLAVOR_SPECS[name][1], "disk": FLAVOR_SPECS[name][2],
                      "available": True} for name, fid in FLAVORS.items()]  # fmt: skip

    def _image(self, req: Request, ident: str | None) -> Reply:
        # Named as OVHcloud names them: "Debian 12" (ovh/public-cloud-roadmap#431), "Debian 13" (#1199)
        region = req.query.get("region")
        return 200, [{"id": f"img-debian{major}-{region}", "name": f"Debian {major}", "region": region,
                      "type": "linux", "status": "active", "creationDate": created}
                     for major, created in IMAGES.items()]  # fmt: skip

    def _sshkey(self, req: Request, ident: str | None) -> Reply:
        if req.method == "GET" and ident is None:
            return 200, list(self.ssh_keys.values())
        if req.method == "POST":
            body = req.body
            if body.get("region") and body["region"] not in self.regions:
                return error(400, f"Invalid region {body['region']}")
            if any(k["name"] == body["name"] for k in self.ssh_keys.values()):
                return error(409, "SSH key with this name already exists")
            key = {"id": uuid.uuid4().hex[:24], "name": body["name"], "publicKey": body["publicKey"],
                   "regions": [body["region"]] if body.get("region") else list(self.regions)}
            self.ssh_keys[key["id"]] = key
            return 200, key
        if req.method == "DELETE" and ident in self.ssh_keys:
            del self.ssh_keys[ident]
            return 200, None
        return error(404, f"SSH key {ident} not found")

    def _view(self, instance: dict[str, Any]) -> dict[str, Any]:
        instance["_polls"] += 1
        if instance["status"] == "RESIZE" and instance["_polls"] > self.boot_polls:
            failed = self.failed_resizes > 0
            self.failed_resizes -= failed
            instance["status"] = "ERROR" if failed else instance.pop("_resumes")
            if not failed:
                instance["flavorId"] = instance["_resize_to"]
        if instance.get("_starting") and instance["_polls"] > self.boot_polls:  # OpenStack: SHUTOFF until active
            instance["status"], instance["_starting"] = "ACTIVE", False
        if instance["status"] == "BUILD" and instance["_polls"] > self.boot_polls and self.failed_builds:
            self.failed_builds -= 1
            instance["status"] = "ERROR"  # a build that failed (OpenStack's ERROR state): no addresses
        elif instance["status"] == "BUILD" and instance["_polls"] > self.boot_polls:
            instance["status"] = "ACTIVE"
            instance["ipAddresses"] = [{"ip": instance["_ip"], "type": "public", "version": 4},
                                       {"ip": "2001:db8::1", "type": "public", "version": 6}]
        return {k: v for k, v in instance.items() if not k.startswith("_")}

    def _instance(self, req: Request, ident: str | None) -> Reply:
        action = req.path.rstrip("/").rsplit("/", 1)[1]
        if req.method == "POST" and ident in self.instances and action in ("start", "stop"):
            return self._power(self.instances[ident], action)
        if req.method == "POST" and ident in self.instances and action == "resize":
            return self._resize(self.instances[ident], req.body)
        if req.method == "GET" and ident is None:
            region = req.query.get("region")
            return 200, [self._view(i) for i in self.instances.values() if not region or i["region"] == region]
        if req.method == "GET" and ident in self.instances:
            return 200, self._view(self.instances[ident])
        if req.method == "POST":
            return self._create(req.body)
        if req.method == "DELETE" and ident in self.instances:
            del self.instances[ident]
            return 200, None
        return error(404, f"Instance {ident} not found")

    def _resize(self, instance: dict[str, Any], body: dict[str, Any]) -> Reply:
        """POST …/instance/{id}/resize {flavorId} ("Migrate your instance to another flavor"; answers the
        instance). From ACTIVE or SHUTOFF only (OpenStack's rule; else 409). OVHcloud's guide allows only a
        flavor with at least the same disk: a smaller one is a 400 here, with a message of the fake's own (the
        real wording is not verified). Then RESIZE for boot_polls GETs, and back to the status it had at the new
        flavor (OVHcloud confirms the resize itself, as far as its API shows: it has no confirm call; not
        verified); ``failed_resizes`` ends it in ERROR at the old flavor instead."""
        flavors = {f"{fid}-{instance['region']}": name for name, fid in FLAVORS.items()}
        if set(body or {}) != {"flavorId"} or body["flavorId"] not in flavors:
            return error(400, "Invalid flavorId")
        if instance["status"] not in ("ACTIVE", "SHUTOFF") or instance.get("_starting"):
            return error(409, f"Instance {instance['id']} is {instance['status']}, cannot resize")
        old, new = FLAVOR_SPECS[flavors[instance["flavorId"]]], FLAVOR_SPECS[flavors[body["flavorId"]]]
        if new[2] < old[2]:
            return error(400, f"Cannot resize to a flavor with a smaller disk ({new[2]} GB < {old[2]} GB)")
        instance["_resumes"], instance["_resize_to"] = instance["status"], body["flavorId"]
        instance["status"], instance["_polls"] = "RESIZE", 0
        self.resizes.append((instance["id"], body["flavorId"]))
        return 200, self._view(instance)

    def _power(self, instance: dict[str, Any], action: str) -> Reply:
        """start (SHUTOFF -> ACTIVE) and stop (ACTIVE -> SHUTOFF), answered with null like the API's void
        operations. As in OpenStack (nova: task_state powering-on, vm_state stopped) a started instance shows
        SHUTOFF for boot_polls more GETs, then ACTIVE. Another state: 409."""
        before = "SHUTOFF" if action == "start" else "ACTIVE"
        if instance["status"] != before or instance.get("_starting"):
            return error(409, f"Instance {instance['id']} is {instance['status']}, cannot {action}")
        instance["_polls"] = 0
        if action == "start":
            instance["_starting"] = True
        else:
            instance["status"] = "SHUTOFF"
        self.power_actions.append((instance["id"], action))
        return 200, None

    def _create(self, body: dict[str, Any]) -> Reply:
        region = body.get("region")
        if region not in self.regions:
            return error(400, f"Invalid region {region}")
        if body.get("flavorId") != f"{FLAVORS.get('d2-4')}-{region}" and body.get("flavorId") not in {
                f"{fid}-{region}" for fid in FLAVORS.values()}:
            return error(400, "Invalid flavorId")
        if body.get("imageId") not in {f"img-debian{major}-{region}" for major in IMAGES}:
            return error(400, "Invalid imageId")
        if body.get("sshKeyId") not in self.ssh_keys:
            return error(400, "Invalid sshKeyId")
        if body.get("monthlyBilling") is not False:
            return error(400, "postgressor should bill hourly")
        ident = str(uuid.uuid4())
        instance = {"id": ident, "name": body["name"], "status": "BUILD", "region": region,
                    "flavorId": body["flavorId"], "imageId": body["imageId"], "sshKeyId": body["sshKeyId"],
                    "created": "2026-11-01T00:00:00Z", "ipAddresses": [], "monthlyBilling": None, "_polls": 0,
                    "_ip": self.on_create(body) if self.on_create else f"203.0.113.{next(self.counter) + 10}",
                    "_user_data": body.get("userData", "")}
        self.instances[ident] = instance
        self.created += 1
        return 200, self._view(instance)
