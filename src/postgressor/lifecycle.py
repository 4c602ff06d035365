"""The stack lifecycle as plain functions: up (provision, then deploy), deploy, plan, destroy, connection.

The CLI only renders; status lives in checks/status.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pyinfra.api import Host
from pyinfra.facts.server import Arch, LinuxDistribution

from postgressor.box.converge import DeployResult, Deploys, OpListener, run_deploys, ssh_inventory
from postgressor.box.converged import desired_digest
from postgressor.box.deploys.backup import CIPHER_MISMATCH, backup
from postgressor.box.deploys.base import base
from postgressor.box.deploys.postgres import postgresql
from postgressor.box.deploys.sync import caddy, electric, gateway
from postgressor.box.facts import SYSTEMD_BOOT_WAIT, BootFinished, CarriedSettings, PythonVersion, SecretDigest
from postgressor.box.gateway_bundle import gateway_bundle
from postgressor.box.layout import CIPHER_SECRET, RESTORED_MARKER
from postgressor.box.operations import digest as restore_digest
from postgressor.box.operations import read_restored_marker, same_secret
from postgressor.box.spec import BoxSpec, Distro, box_spec, distro_from_fact, image_distro, postgres_choice
from postgressor.checks.backups import pg_time
from postgressor.checks.recovery_end import UNCHECKED
from postgressor.config import REPO_PATH, REPO_PATH_RULE, Settings
from postgressor.day2 import destroy as safe_destroy
from postgressor.day2.backups import parse_target, record_short_restore
from postgressor.errors import ConfigError, PostgressorError, UsageError
from postgressor.opwatch import DetailListener, OpWatch
from postgressor.preflight import carried_keys, check_drops
from postgressor.preflight import check as preflight
from postgressor.providers import get_provider
from postgressor.providers.base import Log, Provider, SizeChange
from postgressor.remote.ssh import known_hosts_path, run
from postgressor.state import HostRecord, StackState, load_state, open_state, require_state

BOOT_TIMEOUT = 1200  # seconds the boot wait may take in all (a fresh cloud server's cloud-init takes minutes)

@dataclass
class UpResult:
    stack: str
    host: HostRecord
    deploy: DeployResult
    spec: BoxSpec
    restored_from: dict[str, str] = field(default_factory=dict)  # up --restore-from: path, target, label
    # Set by the run that finished an `up --restore-from` to the end of the archive when recovery stopped before it
    # (checks/recovery_end.py): the one line saying where and why; '' otherwise.
    restore_shortfall: str = ""

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
            **({"restored_from": self.restored_from} if self.restored_from else {}),
        }


@dataclass
class PlanResult:
    stack: str
    provider_steps: list[str]
    operations: list[dict[str, str]] = field(default_factory=list)
    note: str = ""
    postgres_note: str = ""  # PostgreSQL from PGDG, and why (PostgresChoice.note)


def _provider(settings: Settings, stack: str, log: Log) -> tuple[StackState, Provider]:
    state = open_state(settings.state_dir, stack, settings.provider)
    provider = get_provider(settings, state, log)
    provider.validate()
    return state, provider


def _new_box_postgres(settings: Settings, state: StackState, provider: Provider) -> str:
    """The PGDG line for a box not made yet, from its image's OS ("" when from the distro or the OS is unknown);
    a source that cannot give the version is refused here, before anything is created."""
    distro = image_distro(provider.image())
    return postgres_choice(settings, distro, state.pg_version).note if distro else ""


def postgres_note(settings: Settings, stack: str) -> str:
    """What ``up`` says before it creates the stack's box: where PostgreSQL will come from, when not the distro."""
    state = open_state(settings.state_dir, stack, settings.provider)
    if state.host is not None:
        return ""  # the deploy reads the box's own OS
    return _new_box_postgres(settings, state, get_provider(settings, state, lambda message: None))


@dataclass(frozen=True)
class BoxFacts:
    distro: Distro
    python: str  # "3.11"
    machine: str  # "x86_64" | "aarch64"
    carried: tuple[str, ...] = ()  # carried settings (preflight.CARRIED) the box's files hold now, by name


def wait_for_boot(box: Host, log: Log) -> None:
    """Wait until the box has finished booting (cloud-init holds the apt lock on fresh boxes; units still starting
    after a power-on would read as stopped), saying so on ``log``, and saying when systemd's wait ran out."""
    log("reading the box (once its boot has finished: cloud-init, systemd's start jobs)")
    if box.get_fact(BootFinished, _timeout=BOOT_TIMEOUT) is False:
        log(f"the box was still booting after {SYSTEMD_BOOT_WAIT} s (systemd's start jobs): going on as it is")


def read_box(box: Host) -> BoxFacts:
    """Read the OS, Python and CPU as pyinfra facts, in the connection the deploy then uses."""
    release = box.get_fact(LinuxDistribution)
    distro = distro_from_fact(dict(release))
    carried: list[str] = box.get_fact(CarriedSettings)
    return BoxFacts(distro, box.get_fact(PythonVersion), box.get_fact(Arch), tuple(carried))


def check_cipher_custody(box: Host, spec: BoxSpec) -> None:
    """Refuse (exit 2, before any change) a user-held passphrase that differs from the one the box's repository
    already uses: only SHA-256 digests are compared, the box's value never leaves it."""
    held = spec.backup.cipher_pass if spec.backup is not None else ""
    if not held:
        return
    on_box: str = box.get_fact(SecretDigest, secret=CIPHER_SECRET)
    if on_box and not same_secret(held, on_box):
        raise ConfigError(CIPHER_MISMATCH)


def deploys_for(spec: BoxSpec, facts: BoxFacts, host: HostRecord) -> Deploys:
    """The deploys for ``spec``, in order: base, PostgreSQL, backups if enabled, then Electric, gateway, Caddy."""
    deploys: Deploys = [(base, {"spec": spec}), (postgresql, {"spec": spec})]
    if spec.backup is not None:
        deploys.append((backup, {"spec": spec}))
    if spec.sync is None:
        return deploys
    if not facts.python:
        raise PostgressorError(f"{host.address} has no python3; the gateway needs it (apt-get install python3)")
    bundle = gateway_bundle(facts.python, facts.machine)
    return [*deploys, (electric, {"spec": spec}), (gateway, {"spec": spec, "bundle": bundle}),
            (caddy, {"spec": spec, "public_address": host.address})]  # fmt: skip


def deploy_host(
    settings: Settings,
    state: StackState,
    host: HostRecord,
    listener: OpListener,
    dry_run: bool = False,
    drop: frozenset[str] = frozenset(),
    detail: DetailListener | None = None,
    log: Log = lambda message: None,
) -> tuple[BoxSpec, DeployResult]:
    """One SSH connection: wait for the box's boot (said on ``log``), read its facts, build its spec, add the
    deploys and run them."""
    check_drops(settings, state.deployed_keys, state.stack, drop)
    specs: list[BoxSpec] = []

    def deploys_for_box(box: Host) -> Deploys:
        found = read_box(box)
        # Also what the box's own files hold: a box deployed before names were recorded, or from elsewhere.
        check_drops(settings, sorted({*state.deployed_keys, *found.carried}), state.stack, drop)
        spec = with_restore(box_spec(settings, found.distro, state.pg_version), state)
        check_cipher_custody(box, spec)
        specs.append(spec)
        if not dry_run:  # recorded first: a cut-off run may already have installed this version
            state.pg_version = spec.pg_version
            state.save()
        return deploys_for(spec, found, host)

    def desired(deploys: Deploys) -> str:
        sync = specs[0].sync
        return desired_digest(deploys, [sync.image_archive] if sync is not None and sync.image_archive else [])

    watch = OpWatch(host, listener, detail)
    try:
        result = run_deploys(ssh_inventory(host, known_hosts_path(state)), deploys_for_box, watch, dry_run=dry_run,
                             desired=desired, wait_ready=lambda box: wait_for_boot(box, log))  # fmt: skip
    finally:
        watch.close()
    if dry_run:
        return specs[0], result
    if unfinished_restore(state):
        record_restore(host, state)  # also after a failed pass: the restore may have run before what failed
    if not result.failed:
        state.deployed_at = datetime.now(UTC).isoformat(timespec="seconds")
        state.deployed_keys = carried_keys(settings)
    state.save()
    return specs[0], result


def restore_source(settings: Settings, stack: str, path: str | None, target: str | None) -> dict[str, str]:
    """``{"path", "target"}`` for ``up --restore-from PATH [--target-time T]`` ({} without it), or one UsageError
    line before anything is made. PATH is the old stack's s3_path in this stack's bucket; it must not be this
    stack's own, so the new stack never writes into the old one's history."""
    if path is None:
        if target is not None:
            raise UsageError("--target-time needs --restore-from PATH (a running stack restores with "
                             "'postgressor restore --to-time')")  # fmt: skip
        return {}
    backup = settings.backup
    if not backup.enabled or not backup.s3_endpoint:
        raise UsageError("--restore-from reads an S3 repository: set [backup] s3_* and cipher_pass as the old "
                         "stack's (same bucket, keys and passphrase) with a new s3_path")  # fmt: skip
    if not REPO_PATH.match(path):
        raise UsageError(f"--restore-from {path!r}: {REPO_PATH_RULE}")
    if path == backup.s3_path:  # REPO_PATH admits one spelling per path: equal text is the same path
        raise UsageError(f"--restore-from {path} is this stack's own backup.s3_path: give the new stack another "
                         "backup.s3_path, so it never writes into the old stack's history")  # fmt: skip
    moment = parse_target(target, "--target-time") if target else None
    if moment is not None and moment > datetime.now(UTC):  # recovery would stop short of it and refuse to start
        raise UsageError(f"--target-time {pg_time(moment)} is in the future; leave it out to restore the newest "
                         "archived state")  # fmt: skip
    source = {"path": path, "target": pg_time(moment) if moment else ""}
    state = load_state(settings.state_dir, stack)
    if state is not None and state.host is not None:
        recorded = {k: state.restored_from.get(k) for k in source}
        if recorded != source:  # the same restore, unfinished, is resumed
            raise UsageError(f"stack '{stack}' already has a server: a running stack restores with 'postgressor "
                             "restore'; --restore-from makes a new stack (--stack NEW)")  # fmt: skip
    return source


def with_restore(spec: BoxSpec, state: StackState) -> BoxSpec:
    """``spec`` with the restore recorded in ``state`` (``up --restore-from``) while it is unfinished: once its label
    is recorded it is done, and a server that replaces this one later starts from this stack's own backups."""
    if not state.restored_from or state.restored_from.get("label") or spec.backup is None:
        return spec
    backup = replace(spec.backup, restore_from=state.restored_from["path"],
                     restore_target=state.restored_from.get("target", ""))  # fmt: skip
    return replace(spec, backup=backup)


def size_change(settings: Settings, stack: str, log: Log) -> SizeChange | None:
    """The resize ``up`` would make to the stack's existing server (its size read from the provider), None when
    there is none; a UsageError when the provider cannot make it (a smaller disk, a provider without sizes)."""
    if load_state(settings.state_dir, stack) is None:
        return None
    _, provider = _provider(settings, stack, log)
    return provider.size_change()


def up(
    settings: Settings,
    stack: str,
    log: Log,
    listener: OpListener,
    detail: DetailListener | None = None,
    resize: SizeChange | None = None,
    restore: dict[str, str] | None = None,
) -> UpResult:
    """Provision and deploy. A size setting that differs from the existing server's resizes it first, but only
    the change ``resize`` confirms (``size_change`` as the user saw it); then the deploy re-tunes PostgreSQL.
    ``restore`` (``restore_source``) is recorded first: the deploy restores from it once, resumed by any later run."""
    preflight(settings)
    existing = load_state(settings.state_dir, stack)
    if existing is not None and existing.host is not None:
        check_drops(settings, existing.deployed_keys, stack)  # before the provider starts anything
    state, provider = _provider(settings, stack, log)
    if restore and {k: state.restored_from.get(k) for k in restore} != restore:
        state.restored_from = dict(restore)
        state.save()
    if state.host is None:
        _new_box_postgres(settings, state, provider)  # an impossible postgres.source: refused before anything is made
    change = provider.size_change()
    if change is not None:
        if change != resize:
            raise UsageError(f"stack '{stack}' would resize its server ({change.describe()}) without a confirmed "
                             "resize; run 'postgressor up' and confirm (or pass --yes)")  # fmt: skip
        provider.resize(change)
    host = provider.provision()
    restoring = unfinished_restore(state)
    spec, result = deploy_host(settings, state, host, listener, detail=detail, log=log)
    return UpResult(stack, host, result, spec, dict(state.restored_from) if restore else {},
                    restore_shortfall(state) if restoring else "")  # fmt: skip


def record_restore(host: HostRecord, state: StackState) -> None:
    """After a deploy with the recorded `up --restore-from`: once the box's restored marker says this restore ran,
    its backup label and, when recovery stopped short of the archive, the line saying so (also kept for status)."""
    try:
        marker = read_restored_marker(run(host, f"cat {RESTORED_MARKER} 2>/dev/null").stdout)
    except PostgressorError:
        return  # unreadable now: the next run reads it
    if marker.digest != restore_digest(state.restored_from["path"], state.restored_from.get("target", "")):
        return  # the pass ended before the restore
    state.restored_from["label"] = marker.label
    if marker.shortfall:
        state.restored_from["short_of_archive"] = marker.shortfall
    if not marker.checked:
        state.restored_from["note"] = UNCHECKED
    if marker.shortfall:
        record_short_restore(state, marker.shortfall, marker.read_at)


def unfinished_restore(state: StackState) -> bool:
    """Whether the next deploy runs the recorded `up --restore-from` (it has no label yet)."""
    return bool(state.restored_from) and not state.restored_from.get("label")


def restore_shortfall(state: StackState) -> str:
    return state.restored_from.get("short_of_archive", "") if state.restored_from.get("label") else ""


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
    restoring = unfinished_restore(state)
    spec, result = deploy_host(settings, state, host, listener, drop=drop, detail=detail, log=log)
    return UpResult(stack, host, result, spec, restore_shortfall=restore_shortfall(state) if restoring else "")


def plan(settings: Settings, stack: str, log: Log) -> PlanResult:
    preflight(settings)
    state, provider = _provider(settings, stack, log)
    steps = provider.plan()
    result = PlanResult(stack, steps)
    power = provider.power_state() if state.host is not None else "missing"
    if power == "missing":
        result.note = "the box does not run yet: every deploy operation will run after it is created"
        result.postgres_note = _new_box_postgres(settings, state, provider)
        return result
    if power in ("off", "stopping", "starting"):
        result.note = f"the server is {power}: 'up' starts it; the deploy's operations are planned once it runs"
        return result
    assert state.host is not None  # "missing" otherwise
    spec, dry = deploy_host(settings, state, state.host, lambda name, report: None, dry_run=True, log=log)
    result.postgres_note = spec.postgres_note
    result.operations = [{"name": op.name, "status": op.status} for op in dry.operations]
    return result


def destroy_question(settings: Settings, stack: str) -> str:
    """What ``destroy`` asks: what goes and where the backups live; UsageError first if it would refuse anyway."""
    state = load_state(settings.state_dir, stack)
    if state is None:  # destroy itself says there is nothing to destroy, after the confirmation
        return f"Destroy stack '{stack}' and its server, with all data on it?"
    backups = safe_destroy.backups_of(settings)
    problem = safe_destroy.refusal(state, backups, skip_final_backup=False)
    if problem:
        raise UsageError(problem)
    return safe_destroy.question(state, backups)


def destroy(settings: Settings, stack: str, log: Log, skip_final_backup: bool = False) -> list[str]:
    """Remove the stack's server and records; returns what was removed, then (last) what was kept.

    A stack holding a database is refused (UsageError) when its only backups live on the server, unless
    ``skip_final_backup``; with an S3 repository a final full backup is taken and verified first (a failure
    raises PostgressorError and destroys nothing)."""
    state = _recorded(settings, stack)
    backups = safe_destroy.backups_of(settings)
    problem = safe_destroy.refusal(state, backups, skip_final_backup)
    if problem:
        raise UsageError(problem)
    settings = settings.model_copy(update={"provider": state.provider})
    provider = get_provider(settings, state, log)
    final = None
    if backups.off_box and safe_destroy.holds_data(state) and not skip_final_backup:
        log("taking a final full backup to S3 before the server goes")
        final = safe_destroy.final_backup(provider.ensure_running(), log)
    removed = provider.destroy()
    state.delete()
    kept = safe_destroy.remaining(final, backups, safe_destroy.no_final_backup(state, skip_final_backup))
    return [*removed, *([kept] if kept else [])]


def _recorded(settings: Settings, stack: str) -> StackState:
    state = load_state(settings.state_dir, stack)
    if state is None:
        raise PostgressorError(f"stack '{stack}' has no state file; nothing recorded to destroy")
    return state


def connection(settings: Settings, stack: str, log: Log) -> tuple[HostRecord, StackState]:
    """Connection details of a stack's running box (starting a stopped local VM first)."""
    state = require_state(settings.state_dir, stack)
    settings = settings.model_copy(update={"provider": state.provider})
    return get_provider(settings, state, log).ensure_running(), state
