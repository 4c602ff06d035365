"""The base deploy: packages in one apt run, unattended upgrades, key-only SSH, fail2ban, ufw, swap; and the helpers
every deploy uses (templates, apply-on-change). Every operation is idempotent."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server, systemd

from postgressor.box import facts
from postgressor.box.layout import POSTGRES_PORT, SSHD_DROP_IN, SSHD_OLD_DROP_IN
from postgressor.box.operations import (
    apt_idle,
    apt_index_update,
    firewall,
    hardening_effective,
    marked,
    reapply_if_stale,
    repair_interrupted_dpkg,
    swapfile,
)
from postgressor.box.spec import BoxSpec
from postgressor.box.tuning import MB
from postgressor.opwatch import APT_STATUS_ARGS

APT_ARGS = (
    "-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
    + APT_STATUS_ARGS  # apt's progress, read by postgressor.opwatch while the install runs
)
BASE_PACKAGES = ["unattended-upgrades", "fail2ban", "python3-systemd", "ufw"]
# Where PGDG's own instructions put the key, after `install -d` of its directory (postgresql.org/download/linux/debian).
PGDG_KEY = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc"
# What `sshd -T` must show once sshd.conf.j2 is in effect (OpenSSH 9 prints prohibit-password as without-password).
SSHD_EFFECTIVE = {
    "passwordauthentication": ("no",),
    "kbdinteractiveauthentication": ("no",),
    "permitemptypasswords": ("no",),
    "permitrootlogin": ("without-password", "prohibit-password"),
    "pubkeyauthentication": ("yes",),
}


def template(name: str) -> str:
    return str(Path(str(resources.files("postgressor.box"))) / "templates" / name)


def apply_on_change(label: str, command: str, marker: str, paths: list[str], op: OperationMeta) -> None:
    """Apply a config file's change now, or on the next run if this one is cut off first."""
    server.shell(name=f"Apply {label} config", commands=[marked(command, marker)], _if=op.did_change)
    reapply_if_stale(name=f"{label} config applied", paths=paths, marker=marker, command=command)


@deploy("Base system")
def base(spec: BoxSpec) -> None:
    apt_idle(name="apt and dpkg free (first-boot upgrades finish first)")
    repair_interrupted_dpkg(name="Finish an interrupted package run")
    if spec.source == "pgdg":
        tools = ["curl", "ca-certificates", "gnupg"]
        apt_index_update(name="Package index (for the PGDG tools)", packages=tools)
        apt.packages(name="Tools for the PGDG repository", packages=tools, extra_install_args=APT_ARGS)
        files.directory(name="PGDG key directory", path=str(Path(PGDG_KEY).parent), mode="755")
        files.download(name="PGDG signing key", src="https://www.postgresql.org/media/keys/ACCC4CF8.asc",
                       dest=PGDG_KEY, mode="644")  # fmt: skip
        apt.repo(
            name="PGDG repository",
            src=f"deb [signed-by={PGDG_KEY}] https://apt.postgresql.org/pub/repos/apt "
            f"{spec.distro.codename}-pgdg main",
            filename="pgdg",
        )
    # One apt transaction for everything: each one costs minutes on a slow box. The index is refreshed only when
    # something is to be installed (then always, so a repository added above is read).
    packages = [*BASE_PACKAGES, *spec.packages]
    apt_index_update(name="Package index", packages=packages)
    apt.packages(name="Install packages", packages=packages, no_recommends=True, extra_install_args=APT_ARGS)

    files.template(name="Unattended security upgrades", src=template("auto-upgrades.j2"),
                   dest="/etc/apt/apt.conf.d/20auto-upgrades", mode="644")  # fmt: skip

    sshd = files.template(name="SSH: keys only", src=template("sshd.conf.j2"), dest=SSHD_DROP_IN, mode="644")
    files.file(name="SSH: drop-in under its old name", path=SSHD_OLD_DROP_IN, present=False)
    apply_on_change("SSH", "sshd -t && systemctl reload ssh", "sshd", [SSHD_DROP_IN], sshd)

    jail_conf = "/etc/fail2ban/jail.d/postgressor.conf"
    jail = files.template(name="fail2ban sshd jail", src=template("fail2ban-sshd.conf.j2"),
                          dest=jail_conf, mode="644")  # fmt: skip
    systemd.service(name="fail2ban running", service="fail2ban", running=True, enabled=True)
    apply_on_change("fail2ban", "systemctl restart fail2ban", "fail2ban", [jail_conf], jail)

    sources = {POSTGRES_PORT: spec.private_network} if spec.private_network else {}
    interfaces = {POSTGRES_PORT: "docker0"} if spec.sync else {}  # Electric's container reaches PostgreSQL
    firewall(name="Firewall: only SSH, HTTP, HTTPS", ports=spec.firewall_ports, sources=sources,
             interfaces=interfaces)  # fmt: skip

    hardening_effective(name="Hardening in effect (sshd -T, fail2ban, apt)", sshd=SSHD_EFFECTIVE,
                        fail2ban_jail=True, unattended_upgrades=True)  # fmt: skip

    machine = host.get_fact(facts.MachineSize)
    if machine.ram_kb < spec.swap_below_mb * MB:
        swapfile(name=f"Swap file ({spec.swap_mb} MB)", size_mb=spec.swap_mb)
        files.line(name="Swap file in fstab", path="/etc/fstab", line="/swapfile none swap sw 0 0")
        server.sysctl(name="Low swappiness", key="vm.swappiness", value=10, persist=True)
