"""postgressor's own pyinfra operations: each yields commands only when the box differs from the goal."""

from __future__ import annotations

import shlex
from collections.abc import Generator

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import File

from postgressor.deploys import facts

SECRETS_DIR = "/etc/postgressor/secrets"
MARKERS_DIR = "/var/lib/postgressor/applied"


def secret_path(name: str) -> str:
    return f"{SECRETS_DIR}/{name}"


def psql(sql: str, database: str = "postgres") -> str:
    """A psql call as the postgres superuser that stops at the first error."""
    return (
        f"cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {shlex.quote(database)} "
        f"-c {shlex.quote(sql)}"
    )


@operation()
def repair_interrupted_dpkg() -> Generator[str, None, None]:
    """Finish a package run that an earlier, interrupted deploy left half-configured."""
    if host.get_fact(facts.DpkgInterrupted):
        yield "DEBIAN_FRONTEND=noninteractive dpkg --configure -a --force-confdef --force-confold"


@operation()
def firewall(ports: list[int], sources: dict[int, str] | None = None) -> Generator[str, None, None]:
    """ufw: deny incoming by default, allow exactly ``ports`` (plus port→source rules), keep SSH open."""
    status = host.get_fact(facts.UfwStatus)
    wanted = {f"{port}/tcp" for port in ports}
    wanted |= {f"{port}/tcp {source}" for port, source in (sources or {}).items()}
    if status["default_incoming"] != "deny":
        yield "ufw default deny incoming"
        yield "ufw default allow outgoing"
    for rule in sorted(wanted - status["allowed"]):
        port, _, source = rule.partition(" ")
        yield f"ufw allow proto tcp from {source} to any port {port[:-4]}" if source else f"ufw allow {port}"
    for rule in sorted(status["allowed"] - wanted):
        port, _, source = rule.partition(" ")
        if source:
            yield f"ufw delete allow proto tcp from {source} to any port {port.split('/')[0]}"
        else:
            yield f"ufw delete allow {port}"
    if not status["active"]:
        yield "ufw --force enable"


@operation()
def swapfile(size_mb: int, path: str = "/swapfile") -> Generator[str, None, None]:
    """An active swap file of ``size_mb``; a half-made one from an interrupted run is rebuilt."""
    if host.get_fact(facts.ActiveSwap):
        return
    yield (
        f"swapoff {path} 2>/dev/null; rm -f {path}; fallocate -l {size_mb}M {path} && chmod 600 {path} "
        f"&& mkswap {path} >/dev/null && swapon {path}"
    )


@operation()
def role_password(role: str) -> Generator[str, None, None]:
    """Give ``role`` a generated password kept on the box in a root-only file, never in argv or logs."""
    path = secret_path(f"{role}.password")
    if host.get_fact(File, path=path):
        return
    # The password reaches psql on stdin through printf (a shell builtin), so it never shows in `ps`.
    yield (
        f"set -e; umask 077; install -d -m 0700 {SECRETS_DIR}; "
        f"tr -dc A-Za-z0-9 </dev/urandom | head -c 40 > {path}.new; "
        f'printf \'ALTER ROLE "%s" PASSWORD $$%s$$;\\n\' {shlex.quote(role)} "$(cat {path}.new)" '
        f"| (cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d postgres); "
        f"mv {path}.new {path}"
    )


@operation()
def sql_unless(check: str, apply: str, database: str = "postgres") -> Generator[str, None, None]:
    """Run ``apply`` unless the ``check`` query already returns true."""
    if host.get_fact(facts.PostgresScalar, sql=check, database=database) != "t":
        yield psql(apply, database)


def apply_config_command(version: int) -> str:
    """Reload PostgreSQL, then restart it only if a changed setting needs a restart."""
    unit = f"postgresql@{version}-main"
    load_time = psql("SELECT pg_conf_load_time()")
    pending = psql("SELECT coalesce(bool_or(pending_restart), false) FROM pg_settings")
    return (
        f"if ! systemctl is-active --quiet {unit}; then systemctl restart {unit}; else "
        f"before=$({load_time}); systemctl reload {unit}; "
        f'for i in $(seq 50); do [ "$({load_time})" != "$before" ] && break; sleep 0.2; done; '
        f'if [ "$({pending})" = t ]; then systemctl restart {unit}; fi; fi'
    )


@operation()
def postgres_config_current(version: int, paths: list[str]) -> Generator[str, None, None]:
    """Apply config files that an interrupted run wrote but never loaded (or left pending a restart)."""
    written = host.get_fact(facts.FileMtime, paths=paths)
    loaded = host.get_fact(facts.PostgresScalar, sql="SELECT floor(extract(epoch FROM pg_conf_load_time()))")
    pending = host.get_fact(facts.PostgresScalar, sql="SELECT bool_or(pending_restart) FROM pg_settings")
    if not loaded:
        return  # not installed or not running yet: the normal path starts it
    if written > int(float(loaded)) or pending == "t":
        yield apply_config_command(version)


def marked(command: str, marker: str) -> str:
    """``command``, then a marker file recording when its config was last applied."""
    return f"{command} && install -d {MARKERS_DIR} && touch {MARKERS_DIR}/{marker}"


@operation()
def reapply_if_stale(paths: list[str], marker: str, command: str) -> Generator[str, None, None]:
    """Re-run ``command`` when a config file is newer than its last application (an interrupted run)."""
    written = host.get_fact(facts.FileMtime, paths=paths)
    applied = host.get_fact(facts.FileMtime, paths=[f"{MARKERS_DIR}/{marker}"])
    if written > applied:
        yield marked(command, marker)
