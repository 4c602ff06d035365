"""The sync deploys: Electric in Docker, the auth gateway in its own virtualenv, Caddy in front."""

from __future__ import annotations

import ipaddress
import shlex
from io import StringIO
from typing import Any

from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from postgressor.box.deploys.base import apply_on_change, template
from postgressor.box.gated import gated_apply, gateway_probe, keep_last_good
from postgressor.box.gateway_bundle import GatewayBundle
from postgressor.box.grammar import hostname_problem
from postgressor.box.layout import (
    CADDY_STORAGE,
    CADDY_UNIT,
    ELECTRIC_ENV,
    ELECTRIC_SLOT,
    ELECTRIC_STORAGE,
    ELECTRIC_UNIT,
    GATEWAY_CONFIG,
    GATEWAY_ENV,
    GATEWAY_HOME,
    GATEWAY_UNIT,
    GATEWAY_USER,
    IMAGES_DIR,
    LOOPBACK_GUARD_RULE,
    LOOPBACK_GUARD_UNIT,
    POSTGRES_PORT,
    electric_health_url,
    secret_path,
)
from postgressor.box.operations import (
    applied,
    composed_file,
    digest,
    docker_image,
    electric_slot_usable,
    generated_secret,
    http_ready,
    loopback_guarded,
    system_user,
)
from postgressor.box.quoting import caddyfile_token, systemd_word
from postgressor.box.spec import BoxSpec
from postgressor.errors import UsageError

# Open files for the gateway and for Caddy: sized for LIVE_CONNECTIONS held long-polls (two sockets
# each, plus listeners, logs and the JWKS client), with room to spare. bench/gateway.py measures it.
LIVE_CONNECTIONS = 10_000
NOFILE = 1 << 20  # what Caddy's own unit sets (dist/init/caddy.service); never lower it
CADDY_DROPIN = "/etc/systemd/system/caddy.service.d/50-postgressor-limits.conf"
CADDY_REPAIR_DROPIN = "/etc/systemd/system/caddy.service.d/50-postgressor-storage.conf"
CADDYFILE = "/etc/caddy/Caddyfile"
CADDY_ADMIN = "http://127.0.0.1:2019/config/"  # Caddy's admin API: answers once a config is loaded
ELECTRIC_FILES = [ELECTRIC_ENV, f"/etc/systemd/system/{ELECTRIC_UNIT}.service"]
GATEWAY_FILES = [GATEWAY_CONFIG, GATEWAY_ENV, f"/etc/systemd/system/{GATEWAY_UNIT}.service"]


@deploy("Electric")
def electric(spec: BoxSpec) -> None:
    sync = spec.sync
    assert sync is not None
    files.template(name="Loopback guard unit", src=template("loopback-guard.service.j2"),
                   dest=f"/etc/systemd/system/{LOOPBACK_GUARD_UNIT}.service", mode="644",
                   rule=LOOPBACK_GUARD_RULE)  # fmt: skip
    loopback_guarded(name="Loopback stays loopback (raw-table drop for 127.0.0.0/8 from outside)",
                     unit=LOOPBACK_GUARD_UNIT, rule=LOOPBACK_GUARD_RULE)  # fmt: skip
    daemon = files.template(name="Docker bridge address", src=template("docker-daemon.json.j2"),
                            dest="/etc/docker/daemon.json", mode="644", bridge=f"{sync.bridge_ip}/"
                            f"{sync.bridge_network.split('/')[1]}")  # fmt: skip
    apply_on_change("Docker", "systemctl restart docker", "docker", ["/etc/docker/daemon.json"], daemon)
    systemd.service(name="Docker running", service="docker", running=True, enabled=True)
    files.template(name="PostgreSQL starts after Docker", src=template("postgresql-after-docker.conf.j2"),
                   dest="/etc/systemd/system/postgresql@.service.d/50-after-docker.conf", mode="644")  # fmt: skip

    generated_secret(name="Electric secret", name_on_box="electric_secret")
    files.directory(name="Electric storage", path=ELECTRIC_STORAGE, mode="700")
    database_url = (
        f"postgresql://electric:$(cat {secret_path('electric.password')})@host.docker.internal:{POSTGRES_PORT}/"
        f"{spec.database}?sslmode=disable"
    )
    env_lines = [
        f"DATABASE_URL={database_url}",
        f"ELECTRIC_SECRET=$(cat {secret_path('electric_secret')})",
        f"ELECTRIC_STORAGE_DIR={ELECTRIC_STORAGE}",
        f"ELECTRIC_PORT={sync.electric_port}",
    ]
    health = electric_health_url(sync.electric_port)
    keep_last_good(name="Electric: keep the working configuration", files=ELECTRIC_FILES, url=health)
    composed_file(name="Electric environment (0600)", path=ELECTRIC_ENV, lines=env_lines)
    archive = ""
    if sync.image_archive:
        archive = f"{IMAGES_DIR}/electric.tar"
        files.put(name="Electric image archive", src=sync.image_archive, dest=archive, mode="600")
    docker_image(name=f"Electric image {sync.image}", image=sync.image, archive=archive)
    files.template(name="Electric unit", src=template("electric.service.j2"),
                   dest=f"/etc/systemd/system/{ELECTRIC_UNIT}.service", mode="644", image=systemd_word(sync.image),
                   port=sync.electric_port, env_file=ELECTRIC_ENV)  # fmt: skip
    # A changed version, unit or environment recreates the container (health-gated); nothing else does.
    gated_apply(
        name="Electric container current",
        label="Electric",
        unit=ELECTRIC_UNIT,
        files=ELECTRIC_FILES,
        apply=f"systemctl daemon-reload && systemctl enable {ELECTRIC_UNIT} && systemctl restart {ELECTRIC_UNIT}",
        url=health,
        timeout=sync.health_timeout,
        marker="electric",
        digest=digest(sync.image, str(sync.electric_port), *env_lines),
    )
    systemd.service(name="Electric running", service=ELECTRIC_UNIT, running=True, enabled=True)
    electric_slot_usable(name="Electric's replication slot usable (rebuilt when lost)", slot=ELECTRIC_SLOT,
                         unit=ELECTRIC_UNIT, storage=ELECTRIC_STORAGE, database=spec.database)  # fmt: skip
    http_ready(
        name="Electric healthy (/v1/health = 200)",
        url=health,
        timeout=sync.health_timeout,
        unit=ELECTRIC_UNIT,
    )


@deploy("Gateway")
def gateway(spec: BoxSpec, bundle: GatewayBundle) -> None:
    sync = spec.sync
    assert sync is not None
    system_user(name="Gateway user", user=GATEWAY_USER, home="/nonexistent", login_shell="/usr/sbin/nologin")
    files.directory(name="Gateway home", path=GATEWAY_HOME, mode="755")
    files.sync(name="Gateway wheels", src=str(bundle.wheels), dest=f"{GATEWAY_HOME}/wheels", delete=True,
               exclude=[".complete"])  # fmt: skip
    files.put(name="Gateway code", src=str(bundle.source_tar), dest=f"{GATEWAY_HOME}/gateway.tar", mode="644")
    venv = f"{GATEWAY_HOME}/venv"
    requirements = " ".join(shlex.quote(r) for r in bundle.requirements)
    applied(
        name="Gateway installed",
        marker="gateway-install",
        digest=bundle.digest,
        command=(
            f"set -e; [ -x {venv}/bin/python ] || python3 -m venv {venv}; "
            f"{venv}/bin/pip install --quiet --no-index --find-links {GATEWAY_HOME}/wheels {requirements}; "
            f"rm -rf {GATEWAY_HOME}/lib.new && mkdir -p {GATEWAY_HOME}/lib.new && "
            f"tar -xf {GATEWAY_HOME}/gateway.tar -C {GATEWAY_HOME}/lib.new && "
            f"rm -rf {GATEWAY_HOME}/lib && mv {GATEWAY_HOME}/lib.new {GATEWAY_HOME}/lib"
        ),
    )

    gateway_health = f"http://127.0.0.1:{sync.gateway_port}/health"
    keep_last_good(name="Gateway: keep the working configuration", files=GATEWAY_FILES, url=gateway_health)
    files.put(name="Gateway config (0600)", src=StringIO(sync.gateway_config), dest=GATEWAY_CONFIG,
              user=GATEWAY_USER, group=GATEWAY_USER, mode="600")  # fmt: skip
    env_lines = [f"ELECTRIC_SECRET=$(cat {secret_path('electric_secret')})"]
    composed_file(name="Gateway environment (0600)", path=GATEWAY_ENV, lines=env_lines)
    files.template(name="Gateway unit", src=template("gateway.service.j2"),
                   dest=f"/etc/systemd/system/{GATEWAY_UNIT}.service", mode="644", nofile=NOFILE)  # fmt: skip
    # The new settings first run beside the live gateway (the probe); only then is the live one restarted.
    gated_apply(
        name="Gateway process current",
        label="the gateway",
        unit=GATEWAY_UNIT,
        files=GATEWAY_FILES,
        apply=f"systemctl daemon-reload && systemctl enable {GATEWAY_UNIT} && systemctl restart {GATEWAY_UNIT}",
        url=gateway_health,
        timeout=60,
        marker="gateway",
        digest=digest(bundle.digest, sync.gateway_config, *env_lines, _template_text("gateway.service.j2"),
                      str(NOFILE)),
        probe=gateway_probe(GATEWAY_CONFIG, GATEWAY_ENV, GATEWAY_HOME),
    )
    systemd.service(name="Gateway running", service=GATEWAY_UNIT, running=True, enabled=True)
    http_ready(name="Gateway healthy", url=gateway_health, timeout=60, unit=GATEWAY_UNIT)


@deploy("HTTPS")
def caddy(spec: BoxSpec, public_address: str) -> None:
    sync = spec.sync
    assert sync is not None
    # With a domain the certificate may take a while: Caddy's admin API says it runs on a loaded config.
    # Without one, a request through Caddy to the gateway's /health must answer 200.
    health, curl_args = (CADDY_ADMIN, "") if sync.domain else ("https://127.0.0.1/health", "-k")
    keep_last_good(name="Caddy: keep the working configuration", files=[CADDYFILE], url=CADDY_ADMIN)
    params: dict[str, Any] = {**caddyfile_values(sync.domain, sync.email, public_address),
                              "gateway_port": sync.gateway_port}  # fmt: skip
    files.template(name="Caddyfile", src=template("Caddyfile.j2"), dest=CADDYFILE, mode="644", **params)
    limits = files.template(name="Caddy open-file limit", src=template("caddy-limits.conf.j2"), dest=CADDY_DROPIN,
                            mode="644", nofile=NOFILE)  # fmt: skip
    # A unit's limits apply only from a (re)start, not a reload.
    apply_on_change("Caddy limits", "systemctl daemon-reload && systemctl restart caddy", "caddy-limits",
                    [CADDY_DROPIN], limits)  # fmt: skip
    # A power cut must not keep Caddy down: the drop-in acts at every start, the deploy only loads it.
    repair = files.template(name="Caddy storage repaired before each start", dest=CADDY_REPAIR_DROPIN, mode="644",
                            src=template("caddy-storage-repair.conf.j2"), storage=CADDY_STORAGE)  # fmt: skip
    apply_on_change("Caddy storage repair", "systemctl daemon-reload", "caddy-storage", [CADDY_REPAIR_DROPIN],
                    repair)  # fmt: skip
    systemd.service(name="Caddy running", service=CADDY_UNIT, running=True, enabled=True)
    gated_apply(
        name="Apply Caddy config",
        label="Caddy",
        unit=CADDY_UNIT,
        files=[CADDYFILE],
        apply=f"caddy validate --config {CADDYFILE} --adapter caddyfile >/dev/null && systemctl reload {CADDY_UNIT}",
        url=health,
        timeout=60,
        marker="caddy-config",
        digest=digest(_template_text("Caddyfile.j2"), *(f"{k}={v}" for k, v in sorted(params.items()))),
        curl_args=curl_args,
    )


def caddyfile_values(domain: str, email: str, public_address: str) -> dict[str, str]:
    """The Caddyfile.j2 values, each one Caddyfile token: ``domain`` a host name and ``email`` an address
    (checked at load, config.HttpsConfig), ``public_address`` the box's IP address or host name."""
    if domain and hostname_problem(domain):
        raise UsageError(f"https.domain: {hostname_problem(domain)}")
    try:
        public = str(ipaddress.ip_address(public_address))
    except ValueError:
        if hostname_problem(public_address) and public_address != "localhost":
            raise UsageError(f"the box's address {public_address!r} is neither an IP address nor a host name") from None
        public = public_address
    sites = caddyfile_token(domain) if domain else ", ".join(
        caddyfile_token(f"https://{host}") for host in (public, "localhost", "127.0.0.1"))  # fmt: skip
    return {"sites": sites, "domain": domain, "email": caddyfile_token(email) if email else "",
            "default_sni": caddyfile_token(public)}  # fmt: skip


def _template_text(name: str) -> str:
    with open(template(name)) as fh:
        return fh.read()
