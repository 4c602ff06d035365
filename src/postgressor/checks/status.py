"""`postgressor status`: one SSH command reads PostgreSQL, its settings and slots, the sync units and backups."""

from __future__ import annotations

import json
from typing import Any

from postgressor.box.layout import (
    CADDY_UNIT,
    ELECTRIC_SLOT,
    LOSING_SLOT_STATE,
    LOST_SLOT_STATE,
    PGBACKREST_LOCAL_REPO,
    SYNC_UNITS,
    electric_health_url,
    postgres_unit,
    psql,
)
from postgressor.checks.backups import backup_status
from postgressor.checks.recovery_end import short_restore_warning
from postgressor.config import Settings
from postgressor.errors import PostgressorError
from postgressor.providers import get_provider
from postgressor.remote.ssh import HostKeyMismatch, run
from postgressor.state import StackState, recorded_version, require_state

LOCAL_REPOSITORY_NOTE = (
    f"the backup repository is on the box's own disk ({PGBACKREST_LOCAL_REPO}): it undoes mistakes but does not "
    "survive the loss of the box; configure an S3 repository ([backup] s3_*) for that"
)

STATUS_SETTINGS = (
    "wal_level", "max_wal_senders", "max_replication_slots", "max_slot_wal_keep_size", "listen_addresses",
    "shared_buffers", "effective_cache_size", "work_mem", "max_connections", "password_encryption",
)  # fmt: skip


def power_state(settings: Settings, state: StackState) -> str:
    """The server's power state from its provider (``Provider.power_state``), or "unknown (why)" when the
    provider cannot be asked (no credentials here, API down): status then goes on over SSH."""
    try:
        provider = get_provider(settings.model_copy(update={"provider": state.provider}), state, lambda line: None)
        return provider.power_state()
    except PostgressorError as err:
        return f"unknown ({err})"


SIZE_UNITS = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def slot_problems(postgres: dict[str, Any], warn_share: float) -> tuple[str, list[str]]:
    """(the first lost slot as one line, or ''; warnings) for the slots in ``postgres`` (status's SQL report).

    A ``lost`` slot lost WAL it needs (``max_slot_wal_keep_size`` was exceeded): its consumer cannot stream any
    more. An ``unreserved`` one is about to. One retaining ``warn_share`` of that limit or more is a warning."""
    lost = ""
    warnings = []
    limit = _setting_bytes(postgres.get("settings", {}).get("max_slot_wal_keep_size", ""))
    for slot in postgres.get("slots") or []:
        name, retained = slot.get("name"), slot.get("retained_bytes")
        wal_status = slot.get("wal_status")
        if wal_status == LOST_SLOT_STATE and not lost:
            fix = ("run 'postgressor deploy': it rebuilds Electric's shapes and slot, and clients resync"
                   if name == ELECTRIC_SLOT else "drop it and create it again in its consumer")  # fmt: skip
            lost = (f"replication slot {name} is lost: PostgreSQL removed WAL it still needed "
                    f"(max_slot_wal_keep_size), so its consumer can no longer stream; {fix}")  # fmt: skip
        elif wal_status == LOSING_SLOT_STATE and not lost:
            lost = (f"replication slot {name} is unreserved: PostgreSQL will remove WAL it still needs at the next "
                    "checkpoint (max_slot_wal_keep_size); start its consumer now, or it will be lost")  # fmt: skip
        elif limit and retained is not None and float(retained) >= warn_share * limit:
            warnings.append(f"replication slot {name} retains {float(retained) / (1 << 20):.0f} MB of WAL, "
                            f"{float(retained) / limit:.0%} of max_slot_wal_keep_size: is its consumer "
                            "running and keeping up?")  # fmt: skip
    return lost, warnings


def _setting_bytes(value: str) -> int:
    """``"1024MB"`` -> bytes; 0 for -1 (no limit) or anything unreadable."""
    for unit, size in SIZE_UNITS.items():
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return int(value[: -len(unit)]) * size
    return 0


def status(settings: Settings, stack: str) -> dict[str, Any]:
    """The stack's health as data: ``reachable``, ``service``, ``postgres`` (version, settings, slots), ``sync``
    and ``backup`` when enabled, ``warnings`` and ``notes`` (lines that do not fail status; a local backup
    repository is noted), and ``error`` (the first problem) when anything is broken."""
    state = require_state(settings.state_dir, stack)
    assert state.host is not None
    unit = postgres_unit(recorded_version(state))
    names = ",".join(f"'{n}'" for n in STATUS_SETTINGS)
    query = (
        "SELECT json_build_object('version', current_setting('server_version'), "  # noqa: S608 (constants)
        f"'settings', (SELECT json_object_agg(name, setting || coalesce(unit, '')) FROM pg_settings "
        f"WHERE name IN ({names})), "
        "'slots', (SELECT coalesce(json_agg(json_build_object('name', slot_name, 'plugin', plugin, "
        "'type', slot_type, 'active', active, 'wal_status', wal_status, 'retained_bytes', "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn))), '[]'::json) FROM pg_replication_slots))"
    )
    script = f'echo "service=$(systemctl is-active {unit} 2>/dev/null)"; {psql(query)}'
    if settings.sync_enabled():
        script += (
            f"; for u in {' '.join((*SYNC_UNITS, CADDY_UNIT))}; do echo \"unit_$u=$(systemctl is-active $u)\"; done; "
            f"echo \"electric_health=$(curl -s -o /dev/null -m 5 -w '%{{http_code}}' {electric_health_url()})\""
        )
    power = power_state(settings, state)
    report: dict[str, Any] = {"stack": stack, "provider": state.provider, "reachable": False,
                              "host": f"{state.host.address}:{state.host.port}", "power": power}  # fmt: skip
    if power == "missing":
        report["error"] = f"the server is gone at {state.provider}; 'postgressor destroy' clears the records"
        return report
    if power in ("off", "stopping"):
        report["error"] = f"the server is {power}; 'postgressor up' starts it and waits for SSH"
        return report
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
    else:
        lost, warnings = slot_problems(report["postgres"], settings.electric.slot_warn_share)
        if lost:
            report["error"] = lost
        if warnings:
            report["warnings"] = warnings
    if settings.sync_enabled():
        units = {k.removeprefix("unit_"): v for k, v in values.items() if k.startswith("unit_")}
        report["sync"] = {"units": units, "electric_health": values.get("electric_health", "")}
        broken = [u for u, active in units.items() if active != "active"]
        if broken or values.get("electric_health") != "200":
            report.setdefault("error", f"sync not healthy: inactive {broken or 'none'}, Electric health "
                                       f"{values.get('electric_health') or 'no answer'}")  # fmt: skip
    if settings.backup.enabled:
        if not settings.backup.s3:
            report["notes"] = [LOCAL_REPOSITORY_NOTE]
        report["backup"] = backup_status(state.host)
        if report["backup"].get("error"):
            report.setdefault("error", report["backup"]["error"])
        short = short_restore_warning(state.short_restore, report["backup"].get("last_backup"))
        if short:
            report["warnings"] = [*report.get("warnings", []), short]
    report["deployed_at"] = state.deployed_at
    return report
