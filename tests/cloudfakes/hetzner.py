"""A fake Hetzner Cloud API (the subset postgressor uses), shaped like hcloud 2.27 expects.

Errors as the API docs give them (REFERENCE §4): ``{"error": {"code", "message", "details"}}``; deleting a
firewall still applied to a server is 422 ``resource_in_use`` ("Firewall must not be in use to be deleted"),
also for ``detach_lag`` attempts after its server's delete was accepted (the delete action still running).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from cloudfakes.base import FakeAPI, Reply, Request, match_labels

TOKEN = "test-hcloud-token"
LOCATIONS = {"fsn1": "DE", "nbg1": "DE", "hel1": "FI", "ash": "US", "hil": "US", "sin": "SG"}
# name -> (cores, memory GB, disk GB, architecture, storage_type), as GET /server_types answers them.
SERVER_TYPES = {
    "cx23": (2, 4.0, 40, "x86", "local"), "cx33": (4, 8.0, 80, "x86", "local"),
    "cpx12": (1, 2.0, 40, "x86", "local"), "cpx22": (2, 4.0, 80, "x86", "local"),
    "cpx32": (4, 8.0, 160, "x86", "local"), "cax11": (2, 4.0, 40, "arm", "local"),
}  # fmt: skip
IMAGES = {"debian-12", "debian-13", "ubuntu-24.04"}
# Called when a server is created (e.g. to boot a VM); returns the server's public IPv4.
OnCreate = Callable[[dict[str, Any], dict[str, Any]], str]


def error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message, "details": {}}}


class FakeHetzner(FakeAPI):
    def __init__(self, on_create: OnCreate | None = None, on_delete: Callable[[dict[str, Any]], None] | None = None,
                 boot_polls: int = 2, on_power: Callable[[dict[str, Any], str], None] | None = None) -> None:
        super().__init__()
        self.ids = itertools.count(1001)
        self.ssh_keys: dict[int, dict[str, Any]] = {}
        self.firewalls: dict[int, dict[str, Any]] = {}
        self.servers: dict[int, dict[str, Any]] = {}
        self.on_create = on_create
        self.on_delete = on_delete
        self.on_power = on_power  # (server, "poweron" | "poweroff" | "shutdown") when the power state changes
        self.boot_polls = boot_polls  # GETs a server answers "initializing" before "running"
        self.created_servers = 0
        self.detach_lag = 0  # firewall deletes refused as in use after the server's DELETE was accepted
        self._detaching: dict[int, int] = {}  # firewall id -> refusals left
        self.actions: dict[int, dict[str, Any]] = {}
        # command -> the error object its actions end with (answered "running" first, "error" when read back)
        self.failing_actions: dict[str, dict[str, Any]] = {}
        self.power_actions: list[tuple[int, str]] = []
        self.change_types: list[tuple[int, str, bool]] = []  # (server, type, upgrade_disk) accepted

    # ---- helpers

    @staticmethod
    def _page(name: str, items: list[dict[str, Any]], req: Request) -> Reply:
        selector = req.query.get("label_selector", "")
        if "name" in req.query:
            items = [i for i in items if i["name"] == req.query["name"]]
        items = [i for i in items if match_labels(i["labels"], selector)]
        per_page = int(req.query.get("per_page", 25))
        page = int(req.query.get("page", 1))
        chunk = items[(page - 1) * per_page: page * per_page]
        last = max(1, -(-len(items) // per_page))
        return 200, {name: chunk, "meta": {"pagination": {
            "page": page, "per_page": per_page, "previous_page": page - 1 or None,
            "next_page": page + 1 if page < last else None, "last_page": last, "total_entries": len(items)}}}

    def _action(self, command: str, resource: int, kind: str) -> dict[str, Any]:
        action = {"id": next(self.ids), "command": command, "status": "success", "progress": 100,
                  "started": "2026-11-01T00:00:00+00:00", "finished": "2026-11-01T00:00:01+00:00",
                  "resources": [{"id": resource, "type": kind}], "error": None}
        self.actions[action["id"]] = action
        if command in self.failing_actions:
            failed = {**action, "status": "error", "error": self.failing_actions[command]}
            self.actions[action["id"]] = failed
            return {**action, "status": "running", "progress": 0, "finished": None}
        return action

    def _actions(self, req: Request, ident: int | None) -> Reply:
        if req.method == "GET" and ident in self.actions:
            return 200, {"action": self.actions[ident]}
        return error(404, "not_found", f"action with ID '{ident}' not found")

    @staticmethod
    def server_type(name: str) -> dict[str, Any]:
        cores, memory, disk, arch, storage = SERVER_TYPES[name]
        return {"id": sorted(SERVER_TYPES).index(name) + 1, "name": name, "description": name.upper(),
                "category": "shared", "cores": cores, "memory": memory, "disk": disk, "prices": [],
                "storage_type": storage, "cpu_type": "shared", "architecture": arch, "deprecation": None,
                "locations": []}  # fmt: skip

    def _server_types(self, req: Request, ident: int | None) -> Reply:
        if req.method == "GET" and ident is None:
            return self._page("server_types", [{**self.server_type(n), "labels": {}} for n in SERVER_TYPES], req)
        return error(404, "not_found", f"server_type with ID '{ident}' not found")

    def _server_view(self, server: dict[str, Any]) -> dict[str, Any]:
        # initializing (created) and starting (powered on) turn running after boot_polls GETs; stopping turns off.
        if server["status"] in ("initializing", "starting", "stopping") and not (
                server["status"] == "initializing" and "create_server" in self.failing_actions):
            server["polls"] += 1
            if server["polls"] > self.boot_polls:
                server["status"] = "off" if server["status"] == "stopping" else "running"
        return {k: v for k, v in server.items() if k != "polls"}

    # ---- routes

    def route(self, req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return error(401, "unauthorized", "unable to authenticate")
        parts = req.path.strip("/").split("/")
        if parts[0] != "v1" or len(parts) < 2:
            return error(404, "not_found", "no such endpoint")
        collection, ident = parts[1], (int(parts[2]) if len(parts) > 2 else None)
        handler = getattr(self, f"_{collection}", None)
        if handler is None:
            return error(404, "not_found", "no such endpoint")
        return handler(req, ident)

    def _ssh_keys(self, req: Request, ident: int | None) -> Reply:
        if req.method == "GET" and ident is None:
            return self._page("ssh_keys", list(self.ssh_keys.values()), req)
        if req.method == "POST":
            body = req.body
            if any(k["name"] == body["name"] or k["public_key"] == body["public_key"] for k in self.ssh_keys.values()):
                return error(409, "uniqueness_error", "SSH key with the same fingerprint already exists")
            key = {"id": next(self.ids), "name": body["name"], "public_key": body["public_key"],
                   "fingerprint": "aa:bb", "labels": body.get("labels", {}), "created": "2026-11-01T00:00:00+00:00"}
            self.ssh_keys[key["id"]] = key
            return 201, {"ssh_key": key}
        if req.method == "DELETE" and ident in self.ssh_keys:
            del self.ssh_keys[ident]
            return 204, None
        return error(404, "not_found", f"ssh_key with ID '{ident}' not found")

    def _firewalls(self, req: Request, ident: int | None) -> Reply:
        if req.method == "GET" and ident is None:
            return self._page("firewalls", list(self.firewalls.values()), req)
        if req.method == "POST":
            body = req.body
            rules = []
            for rule in body.get("rules", []):
                missing = {"direction", "protocol", "port", "source_ips"} - set(rule)
                if missing:
                    return error(422, "invalid_input", f"rule lacks {sorted(missing)}")
                rules.append({"direction": rule["direction"], "source_ips": rule["source_ips"],
                              "destination_ips": rule.get("destination_ips", []), "protocol": rule["protocol"],
                              "port": rule["port"], "description": rule.get("description")})
            fw = {"id": next(self.ids), "name": body["name"], "labels": body.get("labels", {}), "rules": rules,
                  "applied_to": [], "created": "2026-11-01T00:00:00+00:00"}
            self.firewalls[fw["id"]] = fw
            return 201, {"firewall": fw, "actions": []}
        if req.method == "DELETE" and ident in self.firewalls:
            if self._detaching.get(ident, 0) > 0:
                self._detaching[ident] -= 1
                return error(422, "resource_in_use", "Firewall must not be in use to be deleted")
            if any(f["id"] == ident for s in self.servers.values() for f in s["public_net"]["firewalls"]):
                return error(422, "resource_in_use", "Firewall must not be in use to be deleted")
            del self.firewalls[ident]
            return 204, None
        return error(404, "not_found", f"firewall with ID '{ident}' not found")

    def _servers(self, req: Request, ident: int | None) -> Reply:
        if req.method == "POST" and ident in self.servers and req.path.endswith("/actions/change_type"):
            return self._change_type(self.servers[ident], req.body)
        if req.method == "POST" and ident in self.servers and "/actions/" in req.path:
            return self._server_action(self.servers[ident], req.path.rsplit("/", 1)[1])
        if req.method == "GET" and ident is None:
            return self._page("servers", [self._server_view(s) for s in self.servers.values()], req)
        if req.method == "GET" and ident in self.servers:
            return 200, {"server": self._server_view(self.servers[ident])}
        if req.method == "POST":
            return self._create_server(req.body)
        if req.method == "DELETE" and ident in self.servers:
            server = self.servers.pop(ident)
            for fw in server["public_net"]["firewalls"]:
                self._detaching[fw["id"]] = self.detach_lag
            if self.on_delete:
                self.on_delete(server)
            return 200, {"action": self._action("delete_server", ident, "server")}
        return error(404, "not_found", f"server with ID '{ident}' not found")

    def _server_action(self, server: dict[str, Any], action: str) -> Reply:
        """poweron/poweroff as the API documents them: 201 with the action ("start_server"/"stop_server");
        powering on a running server (or off an off one) is accepted and changes nothing."""
        commands = {"poweron": ("start_server", "off", "starting"), "poweroff": ("stop_server", "running", "stopping"),
                    # an ACPI request: its action only says it was sent; the server turns off after boot_polls GETs
                    "shutdown": ("shutdown_server", "running", "stopping")}  # fmt: skip
        if action not in commands:
            return error(404, "not_found", f"no action {action!r}")
        command, before, after = commands[action]
        if server["status"] == before:
            server["status"], server["polls"] = after, 0
            if self.on_power:
                self.on_power(server, action)
        self.power_actions.append((server["id"], action))
        return 201, {"action": self._action(command, server["id"], "server")}

    def _change_type(self, server: dict[str, Any], body: dict[str, Any]) -> Reply:
        """POST /servers/{id}/actions/change_type as the API reference documents it ("Change the Type of a
        Server", docs.hetzner.cloud/reference/cloud): the server must be off (``server_not_stopped``); only to a
        type of the same storage_type with an equal or bigger disk (``invalid_server_type``); upgrade_disk=false
        keeps the disk size; afterwards Hetzner "starts it again". The docs give the codes, not the HTTP
        statuses (the SDK reads only the code): 422 here. An arm type for an x86 server is refused the same way.
        A scripted ``failing_actions["change_server_type"]`` ends the action in error and changes nothing."""
        if set(body) != {"server_type", "upgrade_disk"} or not isinstance(body["upgrade_disk"], bool):
            return error(422, "invalid_input", "server_type and upgrade_disk (boolean) are required")
        if server["status"] != "off":
            return error(422, "server_not_stopped", "The action requires a stopped server")
        name = body["server_type"]
        if name not in SERVER_TYPES:
            return error(422, "invalid_input", f"unknown server type {name!r}")
        new, old = self.server_type(name), server["server_type"]
        if new["storage_type"] != old["storage_type"] or new["architecture"] != old["architecture"] \
                or new["disk"] < server["primary_disk_size"]:
            return error(422, "invalid_server_type", "The server type does not fit for the given server or is "
                                                     "deprecated")  # fmt: skip
        action = self._action("change_server_type", server["id"], "server")
        if "change_server_type" not in self.failing_actions:
            server["server_type"] = new
            if body["upgrade_disk"]:
                server["primary_disk_size"] = new["disk"]
            server["status"], server["polls"] = "starting", 0
        self.change_types.append((server["id"], name, body["upgrade_disk"]))
        return 201, {"action": action}

    def _create_server(self, body: dict[str, Any]) -> Reply:
        if body.get("location") not in LOCATIONS:
            return error(422, "invalid_input", f"unknown location {body.get('location')!r}")
        if body["server_type"] not in SERVER_TYPES:
            return error(422, "invalid_input", f"unknown server type {body['server_type']!r}")
        if body["image"] not in IMAGES:
            return error(422, "invalid_input", f"unknown image {body['image']!r}")
        if any(s["name"] == body["name"] for s in self.servers.values()):
            return error(409, "uniqueness_error", "server name is already used")
        for key in body.get("ssh_keys", []):
            if key not in self.ssh_keys and key not in [k["name"] for k in self.ssh_keys.values()]:
                return error(422, "invalid_input", f"ssh key {key} not found")
        firewalls = [f["firewall"] for f in body.get("firewalls", [])]
        if any(f not in self.firewalls for f in firewalls):
            return error(422, "invalid_input", "firewall not found")
        if len(body.get("user_data", "")) > 32 * 1024:
            return error(422, "invalid_input", "user_data exceeds 32 KiB")
        ident = next(self.ids)
        server = {
            "id": ident, "name": body["name"], "status": "initializing", "created": "2026-11-01T00:00:00+00:00",
            "labels": body.get("labels", {}), "polls": 0,
            "server_type": self.server_type(body["server_type"]),
            "location": {"id": 1, "name": body["location"], "country": LOCATIONS[body["location"]],
                         "city": body["location"], "network_zone": "eu-central"},
            "image": {"id": 2, "name": body["image"], "type": "system", "os_flavor": "debian"},
            "public_net": {"ipv4": {"id": next(self.ids), "ip": "", "blocked": False, "dns_ptr": ""},
                           "ipv6": None, "floating_ips": [],
                           "firewalls": [{"id": f, "status": "applied"} for f in firewalls]},
            "private_net": [], "volumes": [], "rescue_enabled": False, "locked": False,
            "backup_window": None, "outgoing_traffic": 0, "ingoing_traffic": 0, "included_traffic": 21990232555520,
            "primary_disk_size": SERVER_TYPES[body["server_type"]][2],
            "protection": {"delete": False, "rebuild": False}, "iso": None,
            "placement_group": None, "load_balancers": [],
        }
        ip = self.on_create(server, body) if self.on_create else f"192.0.2.{ident % 250}"
        server["public_net"]["ipv4"]["ip"] = ip
        self.servers[ident] = server
        self.created_servers += 1
        return 201, {"server": self._server_view(server), "action": self._action("create_server", ident, "server"),
                     "next_actions": [], "root_password": None}
