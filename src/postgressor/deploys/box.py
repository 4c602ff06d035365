"""The box deploys: base hardening and PostgreSQL ready for ElectricSQL. Every operation is idempotent."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, postgres, server, systemd

from postgressor.deploys import facts
from postgressor.deploys.operations import (
    apply_config_command,
    firewall,
    marked,
    postgres_config_current,
    reapply_if_stale,
    repair_interrupted_dpkg,
    role_password,
    sql_unless,
    swapfile,
)
from postgressor.deploys.spec import BoxSpec
from postgressor.opwatch import APT_STATUS_ARGS
from postgressor.tuning import MB, tune

SUPABASE_ROLES = ("anon", "authenticated", "service_role")
APT_ARGS = (
    "-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
    + APT_STATUS_ARGS  # apt's progress, read by postgressor.opwatch while the install runs
)
BASE_PACKAGES = ["unattended-upgrades", "fail2ban", "python3-systemd", "ufw"]
PGDG_KEY = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc"


def template(name: str) -> str:
    return str(Path(str(resources.files("postgressor.templates"))) / "box" / name)


def apply_on_change(label: str, command: str, marker: str, paths: list[str], op: OperationMeta) -> None:
    """Apply a config file's change now, or on the next run if this one is cut off first."""
    server.shell(name=f"Apply {label} config", commands=[marked(command, marker)], _if=op.did_change)
    reapply_if_stale(name=f"{label} config applied", paths=paths, marker=marker, command=command)


@deploy("Base system")
def base(spec: BoxSpec) -> None:
    repair_interrupted_dpkg(name="Finish an interrupted package run")
    if spec.source == "pgdg":
        apt.packages(name="Tools for the PGDG repository", packages=["curl", "ca-certificates", "gnupg"],
                     update=True, cache_time=3600, extra_install_args=APT_ARGS)  # fmt: skip
        files.download(name="PGDG signing key", src="https://www.postgresql.org/media/keys/ACCC4CF8.asc",
                       dest=PGDG_KEY, mode="644")  # fmt: skip
        apt.repo(
            name="PGDG repository",
            src=f"deb [signed-by={PGDG_KEY}] https://apt.postgresql.org/pub/repos/apt "
            f"{spec.distro.codename}-pgdg main",
            filename="pgdg",
        )
    # One apt transaction for everything: each one costs minutes on a slow box.
    apt.packages(name="Install packages", packages=[*BASE_PACKAGES, *spec.packages], update=True,
                 cache_time=3600, no_recommends=True, extra_install_args=APT_ARGS)  # fmt: skip

    files.template(name="Unattended security upgrades", src=template("auto-upgrades.j2"),
                   dest="/etc/apt/apt.conf.d/20auto-upgrades", mode="644")  # fmt: skip

    sshd_conf = "/etc/ssh/sshd_config.d/50-postgressor.conf"
    sshd = files.template(name="SSH: keys only", src=template("sshd.conf.j2"), dest=sshd_conf, mode="644")
    apply_on_change("SSH", "sshd -t && systemctl reload ssh", "sshd", [sshd_conf], sshd)

    jail_conf = "/etc/fail2ban/jail.d/postgressor.conf"
    jail = files.template(name="fail2ban sshd jail", src=template("fail2ban-sshd.conf.j2"),
                          dest=jail_conf, mode="644")  # fmt: skip
    systemd.service(name="fail2ban running", service="fail2ban", running=True, enabled=True)
    apply_on_change("fail2ban", "systemctl restart fail2ban", "fail2ban", [jail_conf], jail)

    sources = {5432: spec.private_network} if spec.private_network else {}
    interfaces = {5432: "docker0"} if spec.sync else {}  # Electric's container reaches PostgreSQL
    firewall(name="Firewall: only SSH, HTTP, HTTPS", ports=spec.firewall_ports, sources=sources,
             interfaces=interfaces)  # fmt: skip

    machine = host.get_fact(facts.MachineSize)
    if machine.ram_kb < spec.swap_below_mb * MB:
        swapfile(name=f"Swap file ({spec.swap_mb} MB)", size_mb=spec.swap_mb)
        files.line(name="Swap file in fstab", path="/etc/fstab", line="/swapfile none swap sw 0 0")
        server.sysctl(name="Low swappiness", key="vm.swappiness", value=10, persist=True)


@deploy("PostgreSQL")
def postgresql(spec: BoxSpec) -> None:
    machine = host.get_fact(facts.MachineSize)
    settings = tune(machine, spec.pg_version, spec.profile, spec.storage, spec.max_connections)  # type: ignore[arg-type]
    if spec.preload:
        settings["shared_preload_libraries"] = ",".join(spec.preload)
    if "pg_cron" in spec.extensions:
        settings["cron.database_name"] = spec.database
    conf = f"{spec.conf_dir}/conf.d/50-postgressor.conf"
    hba = f"{spec.conf_dir}/pg_hba.conf"
    conf_op = files.template(
        name="postgresql.conf drop-in", src=template("postgresql.conf.j2"), dest=conf,
        user="postgres", group="postgres", mode="644", settings=settings,
        listen_addresses=spec.listen_addresses, ram_mb=machine.ram_kb // 1024, cpus=machine.cpus,
        disk_gb=machine.disk_kb // 1024 // 1024, profile=spec.profile, storage=spec.storage,
    )  # fmt: skip
    hba_op = files.template(
        name="pg_hba.conf (scram-sha-256)", src=template("pg_hba.conf.j2"), dest=hba,
        user="postgres", group="postgres", mode="640",
        private_address=bool(spec.private_network), private_network=spec.private_network,
        electric_network=spec.sync.bridge_network if spec.sync else "", database=spec.database,
    )  # fmt: skip
    server.shell(name="Apply config (reload, restart only if needed)",
                 commands=[apply_config_command(spec.pg_version)],
                 _if=lambda: conf_op.did_change() or hba_op.did_change())  # fmt: skip
    # After the files are current: config an interrupted run wrote but never loaded is applied now.
    postgres_config_current(name="Config loaded", version=spec.pg_version, paths=[conf, hba])
    systemd.service(name="PostgreSQL running", service=f"postgresql@{spec.pg_version}-main",
                    running=True, enabled=True)  # fmt: skip

    postgres.role(name=f"Role {spec.owner}", role=spec.owner, login=True, inherit=True, _su_user="postgres")
    role_password(name=f"Password for {spec.owner}", role=spec.owner)
    postgres.role(name="Role electric (replication)", role="electric", login=True, inherit=True,
                  replication=True, _su_user="postgres")  # fmt: skip
    role_password(name="Password for electric", role="electric")
    # Supabase's API roles, so policies written for Supabase apply unchanged; the owner may act as them.
    for role in SUPABASE_ROLES:
        postgres.role(name=f"Role {role} (no login)", role=role, login=False, _su_user="postgres")
    sql_unless(
        name=f"{spec.owner} may act as the Supabase roles",
        check="SELECT " + " AND ".join(f"pg_has_role('{spec.owner}', '{r}', 'MEMBER')" for r in SUPABASE_ROLES),
        apply=f'GRANT {", ".join(SUPABASE_ROLES)} TO "{spec.owner}"',
    )
    # Electric reads every row and filters per user in the gateway; forced RLS would hide rows from it.
    for role in ("electric", "service_role"):
        sql_unless(
            name=f"{role} bypasses row level security",
            check=f"SELECT rolbypassrls FROM pg_roles WHERE rolname = '{role}'",  # noqa: S608 (constant names)
            apply=f"ALTER ROLE {role} BYPASSRLS",
        )
    postgres.database(name=f"Database {spec.database}", database=spec.database, owner=spec.owner, _su_user="postgres")
    sql_unless(
        name="electric may act as the table owner",
        check=f"SELECT pg_has_role('electric', '{spec.owner}', 'USAGE')",
        apply=f'GRANT "{spec.owner}" TO electric',
    )
    sql_unless(
        name="electric may create publications",
        check=f"SELECT has_database_privilege('electric', '{spec.database}', 'CREATE')",
        apply=f'GRANT CREATE, CONNECT ON DATABASE "{spec.database}" TO electric',
    )
    for ext in spec.extensions:
        sql_unless(
            name=f"Extension {ext}",
            check=f"SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = '{ext}')",  # noqa: S608 (known names)
            apply=f'CREATE EXTENSION IF NOT EXISTS "{ext}"',
            database=spec.database,
        )
