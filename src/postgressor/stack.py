"""The box verbs as plain functions: provision, deploy, plan, status, destroy. The CLI only renders."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from postgressor.backups import backup_status
from postgressor.config import Settings
from postgressor.deploys.backup import backup, backup_spec
from postgressor.deploys.box import base, postgresql
from postgressor.deploys.bundle import gateway_bundle
from postgressor.deploys.spec import BoxSpec, Distro, box_spec, distro_from_fact
from postgressor.deploys.sync import caddy, electric, gateway
from postgressor.engine import DeployResult, OpListener, run_deploys, ssh_inventory
from postgressor.errors import PostgressorError
from postgressor.opwatch import DetailListener, OpWatch
from postgressor.preflight import carried_keys, check_drops
from postgressor.preflight import check as preflight
from postgressor.providers import get_provider
from postgressor.providers.base import Log, Provider
from postgressor.sshconn import HostKeyMismatch, known_hosts_path, run
from postgressor.state import HostRecord, StackState, load_state, open_state, require_state

STATUS_SETTINGS = (
    "wal_level", "max_wal_senders", "max_replication_slots", "max_slot_wal_keep_size", "listen_addresses",
    "shared_buffers", "effective_cache_size", "work_mem", "max_connections", "password_encryption",
)  # fmt: skip


@dataclass
class UpResult:
    stack: str
    host: HostRecord
    deploy: DeployResult
    spec: BoxSpec

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "host": {"address": self.host.address, "port": self.host.port, "user": self.host.user},
            "postgres": {
                "version": self.spec.pg_version,
                "source": self.spec.source,
                "database": self.spec.database,
                "owner": self.spec.owner,
            },
            "deploy": self.deploy.as_dict(),
        }


@dataclass
class PlanResult:
    stack: str
    provider_steps: list[str]
    operations: list[dict[str, str]] = field(default_factory=list)
    note: str = ""


def _provider(settings: Settings, stack: str, log: Log) -> tuple[StackState, Provider]:
    state = open_state(settings.state_dir, stack, settings.provider)
    provider = get_provider(settings, state, log)
    provider.validate()
    return state, provider


@dataclass(frozen=True)
class BoxFacts:
    distro: Distro
    python: str  # "3.11"
    machine: str  # "x86_64" | "aarch64"
    carried: tuple[str, ...] = ()  # carried settings (preflight.CARRIED) the box's files hold now, by name


# Which carried settings the box holds, read from the files the deploys write (names only, never values).
CARRIED_ON_BOX = (
    ("supabase.jwt_secret", "^jwt_secret *=", "/etc/postgressor/gateway.toml"),
    ("supabase.jwks_url", "^jwks_url *=", "/etc/postgressor/gateway.toml"),
    ("backup.s3_key", "^repo1-s3-key=", "/etc/pgbackrest/pgbackrest.conf"),
    ("backup.s3_key_secret", "^repo1-s3-key-secret=", "/etc/pgbackrest/pgbackrest.conf"),
)


def read_box(host: HostRecord) -> BoxFacts:
    """Wait for cloud-init (it holds the apt lock on fresh boxes), then read the OS, Python and CPU, and which
    carried settings the box's files hold (names only)."""
    script = (
        "if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null 2>&1; fi; "
        "echo \"MACHINE=$(uname -m)\"; "
        "echo \"PYTHON=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null)\"; "
        + "".join(f"grep -qs '{pattern}' {path} && echo CARRIED={key}; " for key, pattern, path in CARRIED_ON_BOX)
        + "cat /etc/os-release"
    )
    result = run(host, script, timeout=900)
    if not result.ok:
        raise PostgressorError(f"cannot read /etc/os-release on {host.address}: {result.stderr.strip()}")
    lines = result.stdout.splitlines()
    carried = tuple(line.split("=", 1)[1] for line in lines if line.startswith("CARRIED="))
    pairs = [line for line in lines if "=" in line and not line.startswith("CARRIED=")]
    fields = dict(shlex.split(line)[0].split("=", 1) for line in pairs)
    major = fields.get("VERSION_ID", "0").split(".")[0]
    distro = distro_from_fact(
        {"name": fields.get("ID", ""), "major": int(major) if major.isdigit() else 0, "release_meta": fields}
    )
    return BoxFacts(distro, fields.get("PYTHON", ""), fields.get("MACHINE", ""), carried)


def deploys_for(
    spec: BoxSpec, facts: BoxFacts, host: HostRecord, settings: Settings
) -> list[tuple[Callable[..., Any], dict[str, Any]]]:
    plan: list[tuple[Callable[..., Any], dict[str, Any]]] = [(base, {"spec": spec}), (postgresql, {"spec": spec})]
    if settings.backup.enabled:
        plan.append((backup, {"spec": spec, "backup": backup_spec(settings, spec)}))
    if spec.sync is None:
        return plan
    if not facts.python:
        raise PostgressorError(f"{host.address} has no python3; the gateway needs it (apt-get install python3)")
    bundle = gateway_bundle(facts.python, facts.machine)
    return [*plan, (electric, {"spec": spec}), (gateway, {"spec": spec, "bundle": bundle}),
            (caddy, {"spec": spec, "public_address": host.address})]  # fmt: skip


def deploy_host(
    settings: Settings,
    state: StackState,
    host: HostRecord,
    listener: OpListener,
    dry_run: bool = False,
    drop: frozenset[str] = frozenset(),
    detail: DetailListener | None = None,
) -> tuple[BoxSpec, DeployResult]:
    check_drops(settings, state.deployed_keys, state.stack, drop)
    facts = read_box(host)
    # Also what the box's own files hold: a box deployed before names were recorded, or from elsewhere.
    check_drops(settings, sorted({*state.deployed_keys, *facts.carried}), state.stack, drop)
    spec = box_spec(settings, facts.distro)
    inventory = ssh_inventory(host, known_hosts_path(state))
    watch = OpWatch(host, listener, detail)
    try:
        result = run_deploys(inventory, deploys_for(spec, facts, host, settings), watch, dry_run=dry_run)
    finally:
        watch.close()
    if not dry_run and not result.failed:
        state.deployed_at = datetime.now(UTC).isoformat(timespec="seconds")
        state.deployed_keys = carried_keys(settings)
        state.save()
    return spec, result


def up(
    settings: Settings, stack: str, log: Log, listener: OpListener, detail: DetailListener | None = None
) -> UpResult:
    preflight(settings)
    existing = load_state(settings.state_dir, stack)
    if existing is not None and existing.host is not None:
        check_drops(settings, existing.deployed_keys, stack)  # before the provider starts anything
    state, provider = _provider(settings, stack, log)
    host = provider.provision()
    spec, result = deploy_host(settings, state, host, listener, detail=detail)
    return UpResult(stack, host, result, spec)


def deploy(
    settings: Settings,
    stack: str,
    log: Log,
    listener: OpListener,
    drop: frozenset[str] = frozenset(),
    detail: DetailListener | None = None,
) -> UpResult:
    """Re-run the deploys on the stack's box; ``drop`` names carried settings to remove on purpose."""
    preflight(settings)
    state = require_state(settings.state_dir, stack)
    check_drops(settings, state.deployed_keys, stack, drop)
    settings = settings.model_copy(update={"provider": state.provider})
    provider = get_provider(settings, state, log)
    host = provider.ensure_running()
    spec, result = deploy_host(settings, state, host, listener, drop=drop, detail=detail)
    return UpResult(stack, host, result, spec)


def plan(settings: Settings, stack: str, log: Log) -> PlanResult:
    preflight(settings)
    state, provider = _provider(settings, stack, log)
    steps = provider.plan()
    result = PlanResult(stack, steps)
    if state.host is None or steps:
        result.note = "the box does not run yet: every deploy operation will run after it is created"
        return result
    _, dry = deploy_host(settings, state, state.host, lambda name, report: None, dry_run=True)
    result.operations = [{"name": op.name, "status": op.status} for op in dry.operations]
    return result


def status(settings: Settings, stack: str) -> dict[str, Any]:
    state = require_state(settings.state_dir, stack)
    assert state.host is not None
    names = ",".join(f"'{n}'" for n in STATUS_SETTINGS)
    query = (
        "SELECT json_build_object('version', current_setting('server_version'), "  # noqa: S608 (constants)
        f"'settings', (SELECT json_object_agg(name, setting || coalesce(unit, '')) FROM pg_settings "
        f"WHERE name IN ({names})), "
        "'slots', (SELECT coalesce(json_agg(json_build_object('name', slot_name, 'plugin', plugin, "
        "'type', slot_type, 'active', active, 'wal_status', wal_status, 'retained_bytes', "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn))), '[]'::json) FROM pg_replication_slots))"
    )
    script = (
        "v=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1); "
        'echo "service=$(systemctl is-active postgresql@$v-main 2>/dev/null)"; '
        f"cd / && runuser -u postgres -- psql -XAtq -c {shlex.quote(query)}"
    )
    if settings.sync_enabled():
        script += (
            "; for u in electric postgressor-gateway caddy; do echo \"unit_$u=$(systemctl is-active $u)\"; done; "
            "echo \"electric_health=$(curl -s -o /dev/null -m 5 -w '%{http_code}' http://127.0.0.1:3000/v1/health)\""
        )
    report: dict[str, Any] = {"stack": stack, "provider": state.provider, "reachable": False,
                              "host": f"{state.host.address}:{state.host.port}"}  # fmt: skip
    try:
        result = run(state.host, script, timeout=60)
    except HostKeyMismatch:
        raise
    except PostgressorError as err:
        report["error"] = str(err)
        return report
    report["reachable"] = True
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line and line[0] != "{")
    report["service"] = values.get("service", "unknown")
    pg_line = next((line for line in result.stdout.splitlines() if line.startswith("{")), "")
    try:
        report["postgres"] = json.loads(pg_line) if pg_line else None
    except ValueError:
        report["postgres"] = None
    if report["postgres"] is None:
        report["error"] = (result.stderr.strip().splitlines() or ["PostgreSQL did not answer"])[-1]
    if settings.sync_enabled():
        units = {k.removeprefix("unit_"): v for k, v in values.items() if k.startswith("unit_")}
        report["sync"] = {"units": units, "electric_health": values.get("electric_health", "")}
        broken = [u for u, active in units.items() if active != "active"]
        if broken or values.get("electric_health") != "200":
            report.setdefault("error", f"sync not healthy: inactive {broken or 'none'}, Electric health "
                                       f"{values.get('electric_health') or 'no answer'}")  # fmt: skip
    if settings.backup.enabled:
        report["backup"] = backup_status(state.host)
        if report["backup"].get("error"):
            report.setdefault("error", report["backup"]["error"])
    report["deployed_at"] = state.deployed_at
    return report


def destroy(settings: Settings, stack: str, log: Log) -> list[str]:
    state = load_state(settings.state_dir, stack)
    if state is None:
        raise PostgressorError(f"stack '{stack}' has no state file; nothing recorded to destroy")
    settings = settings.model_copy(update={"provider": state.provider})
    provider = get_provider(settings, state, log)
    removed = provider.destroy()
    state.delete()
    return removed


def connection(settings: Settings, stack: str, log: Log) -> tuple[HostRecord, StackState]:
    """Connection details of a stack's running box (starting a stopped local VM first)."""
    state = require_state(settings.state_dir, stack)
    settings = settings.model_copy(update={"provider": state.provider})
    return get_provider(settings, state, log).ensure_running(), state
