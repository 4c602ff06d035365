"""The sync deploys: Electric in Docker, the auth gateway in its own virtualenv, Caddy in front."""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from postgressor.deploys.box import apply_on_change, template
from postgressor.deploys.bundle import GatewayBundle
from postgressor.deploys.gated import gated_apply, gateway_probe, keep_last_good
from postgressor.deploys.operations import (
    SECRETS_DIR,
    applied,
    composed_file,
    digest,
    docker_image,
    generated_secret,
    http_ready,
    secret_path,
)
from postgressor.deploys.spec import BoxSpec

GATEWAY_HOME = "/opt/postgressor/gateway"
ELECTRIC_FILES = ["/etc/postgressor/electric.env", "/etc/systemd/system/electric.service"]
GATEWAY_CONFIG = "/etc/postgressor/gateway.toml"
GATEWAY_ENV = "/etc/postgressor/gateway.env"
GATEWAY_FILES = [GATEWAY_CONFIG, GATEWAY_ENV, "/etc/systemd/system/postgressor-gateway.service"]
CADDYFILE = "/etc/caddy/Caddyfile"


@deploy("Electric")
def electric(spec: BoxSpec) -> None:
    sync = spec.sync
    assert sync is not None
    daemon = files.template(name="Docker bridge address", src=template("docker-daemon.json.j2"),
                            dest="/etc/docker/daemon.json", mode="644", bridge=f"{sync.bridge_ip}/"
                            f"{sync.bridge_network.split('/')[1]}")  # fmt: skip
    apply_on_change("Docker", "systemctl restart docker", "docker", ["/etc/docker/daemon.json"], daemon)
    systemd.service(name="Docker running", service="docker", running=True, enabled=True)
    files.template(name="PostgreSQL starts after Docker", src=template("postgresql-after-docker.conf.j2"),
                   dest="/etc/systemd/system/postgresql@.service.d/50-after-docker.conf", mode="644")  # fmt: skip

    generated_secret(name="Electric secret", name_on_box="electric_secret")
    files.directory(name="Electric storage", path="/var/lib/electric", mode="700")
    database_url = (
        f"postgresql://electric:$(cat {secret_path('electric.password')})@host.docker.internal:5432/"
        f"{spec.database}?sslmode=disable"
    )
    env_lines = [
        f"DATABASE_URL={database_url}",
        f"ELECTRIC_SECRET=$(cat {secret_path('electric_secret')})",
        "ELECTRIC_STORAGE_DIR=/var/lib/electric",
        f"ELECTRIC_PORT={sync.electric_port}",
        "ELECTRIC_USAGE_REPORTING=false",
    ]
    health = f"http://127.0.0.1:{sync.electric_port}/v1/health"
    keep_last_good(name="Electric: keep the working configuration", files=ELECTRIC_FILES, url=health)
    composed_file(name="Electric environment (0600)", path="/etc/postgressor/electric.env", lines=env_lines)
    archive = ""
    if sync.image_archive:
        archive = "/var/lib/postgressor/images/electric.tar"
        files.put(name="Electric image archive", src=sync.image_archive, dest=archive, mode="600")
    docker_image(name=f"Electric image {sync.image}", image=sync.image, archive=archive)
    files.template(name="Electric unit", src=template("electric.service.j2"),
                   dest="/etc/systemd/system/electric.service", mode="644", image=sync.image,
                   port=sync.electric_port)  # fmt: skip
    # A changed version, unit or environment recreates the container (health-gated); nothing else does.
    gated_apply(
        name="Electric container current",
        label="Electric",
        unit="electric",
        files=ELECTRIC_FILES,
        apply="systemctl daemon-reload && systemctl enable electric && systemctl restart electric",
        url=health,
        timeout=sync.health_timeout,
        marker="electric",
        digest=digest(sync.image, str(sync.electric_port), *env_lines),
    )
    systemd.service(name="Electric running", service="electric", running=True, enabled=True)
    http_ready(
        name="Electric healthy (/v1/health = 200)",
        url=f"http://127.0.0.1:{sync.electric_port}/v1/health",
        timeout=sync.health_timeout,
        hint="see journalctl -u electric on the box",
    )


@deploy("Gateway")
def gateway(spec: BoxSpec, bundle: GatewayBundle) -> None:
    sync = spec.sync
    assert sync is not None
    server.group(name="Gateway group", group="postgressor-gw", system=True)
    nologin = "/usr/sbin/nologin"
    server.user(name="Gateway user", user="postgressor-gw", group="postgressor-gw", system=True,
                home="/nonexistent", shell=nologin, create_home=False)  # fmt: skip
    files.directory(name="Gateway home", path=GATEWAY_HOME, mode="755")
    files.sync(name="Gateway wheels", src=str(bundle.wheels), dest=f"{GATEWAY_HOME}/wheels", delete=True,
               exclude=[".complete"])  # fmt: skip
    files.put(name="Gateway code", src=str(bundle.source_tar), dest=f"{GATEWAY_HOME}/postgressor.tar", mode="644")
    venv = f"{GATEWAY_HOME}/venv"
    requirements = " ".join(f"'{r}'" for r in bundle.requirements)
    applied(
        name="Gateway installed",
        marker="gateway-install",
        digest=bundle.digest,
        command=(
            f"set -e; [ -x {venv}/bin/python ] || python3 -m venv {venv}; "
            f"{venv}/bin/pip install --quiet --no-index --find-links {GATEWAY_HOME}/wheels {requirements}; "
            f"rm -rf {GATEWAY_HOME}/lib.new && mkdir -p {GATEWAY_HOME}/lib.new && "
            f"tar -xf {GATEWAY_HOME}/postgressor.tar -C {GATEWAY_HOME}/lib.new && "
            f"rm -rf {GATEWAY_HOME}/lib && mv {GATEWAY_HOME}/lib.new {GATEWAY_HOME}/lib"
        ),
    )

    gateway_health = f"http://127.0.0.1:{sync.gateway_port}/health"
    keep_last_good(name="Gateway: keep the working configuration", files=GATEWAY_FILES, url=gateway_health)
    files.put(name="Gateway config (0600)", src=StringIO(sync.gateway_config), dest=GATEWAY_CONFIG,
              user="postgressor-gw", group="postgressor-gw", mode="600")  # fmt: skip
    env_lines = [f"ELECTRIC_SECRET=$(cat {SECRETS_DIR}/electric_secret)"]
    composed_file(name="Gateway environment (0600)", path=GATEWAY_ENV, lines=env_lines)
    files.template(name="Gateway unit", src=template("gateway.service.j2"),
                   dest="/etc/systemd/system/postgressor-gateway.service", mode="644")  # fmt: skip
    # The new settings first run beside the live gateway (the probe); only then is the live one restarted.
    gated_apply(
        name="Gateway process current",
        label="the gateway",
        unit="postgressor-gateway",
        files=GATEWAY_FILES,
        apply="systemctl daemon-reload && systemctl enable postgressor-gateway "
        "&& systemctl restart postgressor-gateway",
        url=gateway_health,
        timeout=60,
        marker="gateway",
        digest=digest(bundle.digest, sync.gateway_config, *env_lines, _template_text("gateway.service.j2")),
        probe=gateway_probe(GATEWAY_CONFIG, GATEWAY_ENV, GATEWAY_HOME),
    )
    systemd.service(name="Gateway running", service="postgressor-gateway", running=True, enabled=True)
    http_ready(name="Gateway healthy", url=gateway_health, timeout=60,
               hint="see journalctl -u postgressor-gateway on the box")  # fmt: skip


@deploy("HTTPS")
def caddy(spec: BoxSpec, public_address: str) -> None:
    sync = spec.sync
    assert sync is not None
    sites = f"{sync.domain}" if sync.domain else f"https://{public_address}, https://localhost, https://127.0.0.1"
    # With a domain the certificate may take a while: Caddy's admin API says it runs on a loaded config.
    # Without one, a request through Caddy to the gateway's /health must answer 200.
    health, curl_args = ("http://127.0.0.1:2019/config/", "") if sync.domain else ("https://127.0.0.1/health", "-k")
    keep_last_good(name="Caddy: keep the working configuration", files=[CADDYFILE], url="http://127.0.0.1:2019/config/")
    params: dict[str, Any] = {"sites": sites, "domain": sync.domain, "email": sync.email, "default_sni": public_address,
              "gateway_port": sync.gateway_port}  # fmt: skip
    files.template(name="Caddyfile", src=template("Caddyfile.j2"), dest=CADDYFILE, mode="644", **params)
    systemd.service(name="Caddy running", service="caddy", running=True, enabled=True)
    gated_apply(
        name="Apply Caddy config",
        label="Caddy",
        unit="caddy",
        files=[CADDYFILE],
        apply=f"caddy validate --config {CADDYFILE} --adapter caddyfile >/dev/null && systemctl reload caddy",
        url=health,
        timeout=60,
        marker="caddy-config",
        digest=digest(_template_text("Caddyfile.j2"), *(f"{k}={v}" for k, v in sorted(params.items()))),
        curl_args=curl_args,
    )


def _template_text(name: str) -> str:
    with open(template(name)) as fh:
        return fh.read()
