"""Facts postgressor reads from the box (read-only shell commands, parsed into values)."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from postgressor.box.layout import (
    GATEWAY_CONFIG,
    PGBACKREST_CONF,
    pgbackrest_info,
    psql,
    secret_digest_command,
)
from postgressor.box.tuning import Machine


class MachineSize(FactBase[Machine]):
    """RAM (kB), CPUs and the size of the disk holding /var/lib (kB)."""

    def command(self) -> str:
        return (
            "echo $(awk '/^MemTotal:/{print $2}' /proc/meminfo) $(nproc) "
            "$(df -Pk /var/lib | awk 'NR==2{print $2}')"
        )

    def process(self, output: list[str]) -> Machine:
        ram, cpus, disk = (int(v) for v in output[0].split())
        return Machine(ram_kb=ram, cpus=cpus, disk_kb=disk)


class DpkgInterrupted(FactBase[bool]):
    """True when an earlier dpkg run was cut off and needs `dpkg --configure -a`."""

    volatile = True  # read again each time (box/converge.py _FactReader)

    def command(self) -> str:
        return "ls -A /var/lib/dpkg/updates 2>/dev/null | head -n 1"

    def process(self, output: list[str]) -> bool:
        return any(line.strip() for line in output)

    @staticmethod
    def default() -> bool:
        return False


class ActiveSwap(FactBase[list[str]]):
    def command(self) -> str:
        return "swapon --show=NAME --noheadings 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


class UfwStatus(FactBase[dict]):
    """{'active': bool, 'default_incoming': str, 'allowed': set of 'PORT/tcp' or 'PORT/tcp FROM'}."""


    def command(self) -> str:
        return "command -v ufw >/dev/null && LC_ALL=C ufw status verbose || true"

    def process(self, output: list[str]) -> dict:
        status: dict = {"active": False, "default_incoming": "", "allowed": set()}
        for line in output:
            if line.startswith("Status:"):
                status["active"] = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("Default:"):
                status["default_incoming"] = line.split(":", 1)[1].split("(incoming)")[0].strip()
            elif " ALLOW IN " in line and "(v6)" not in line:
                to, source = (part.strip() for part in line.split(" ALLOW IN ", 1))
                status["allowed"].add(to if source == "Anywhere" else f"{to} {source}")
        return status

    @staticmethod
    def default() -> dict:
        return {"active": False, "default_incoming": "", "allowed": set()}


class PostgresScalar(FactBase[str]):
    """One value from a SQL query run as the postgres superuser; '' when PostgreSQL is not up."""

    def command(self, sql: str, database: str = "postgres") -> str:
        return f"if command -v psql >/dev/null; then {psql(sql, database)} 2>/dev/null || true; fi"

    merge_by = ("database",)  # reads with the same database can share one psql run (merged_command)

    @staticmethod
    def merged_command(calls: list[dict[str, Any]], mark: str) -> str:
        """One psql run for several reads (``calls``: each one's arguments, all with the same database); starting
        a PostgreSQL session costs a second on a small box. Each query's output follows a ``<mark> <i>`` line, and
        one that fails prints nothing, as it does alone."""
        database = calls[0].get("database", "postgres")
        command = psql(None, database, stop_at_error=False)
        for i, call in enumerate(calls):
            label = f"SELECT '{mark} {i}'"
            command += f" -c {shlex.quote(label)} -c {shlex.quote(call['sql'])}"
        return f"if command -v psql >/dev/null; then {command} 2>/dev/null || true; fi"

    def process(self, output: list[str]) -> str:
        return "\n".join(output).strip()

    @staticmethod
    def default() -> str:
        return ""


class FileMtime(FactBase[int]):
    """Modification time (epoch seconds) of the newest of the given files; 0 when none exist."""

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return f"stat -c %Y {quoted} 2>/dev/null | sort -n | tail -n 1"

    def process(self, output: list[str]) -> int:
        return int(output[0]) if output and output[0].strip() else 0

    @staticmethod
    def default() -> int:
        return 0


class ComposedFileCurrent(FactBase[bool]):
    """True when ``path`` equals what ``render`` prints on the box (compared by hash) with owner and mode."""

    def command(self, render: str, path: str, owner: str, mode: str) -> str:
        q = shlex.quote(path)
        return (
            f'[ "$({render} | sha256sum | cut -d" " -f1)" = "$(sha256sum {q} 2>/dev/null | cut -d" " -f1)" ] '
            f'&& [ "$(stat -c "%U:%G %a" {q})" = "{owner}:{owner} {mode}" ] && echo same || echo differs'
        )

    def process(self, output: list[str]) -> bool:
        return output[0].strip() == "same"

    @staticmethod
    def default() -> bool:
        return False


class SecretDigest(FactBase[str]):
    """SHA-256 hex digest of the box's secret file ``secret`` (a name under SECRETS_DIR), '' when it has none: the value
    itself never leaves the box (compare with ``operations.secret_digest``)."""

    def command(self, secret: str) -> str:
        return f"{secret_digest_command(secret)}; true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""

    @staticmethod
    def default() -> str:
        return ""


class DockerImagePresent(FactBase[bool]):
    """Whether Docker holds ``image``."""

    follows_files = ("/var/lib/docker/image/*/repositories.json",)  # box/converged.py stamps them instead

    def command(self, image: str) -> str:
        return f"docker image inspect {shlex.quote(image)} >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return output[0].strip() == "yes"

    @staticmethod
    def default() -> bool:
        return False


class IptablesRulePresent(FactBase[bool]):
    """Whether ``rule`` (``CHAIN match… -j TARGET``, as ``iptables -C`` takes it) is in ``table``."""

    def command(self, table: str, rule: str) -> str:
        return f"iptables -t {shlex.quote(table)} -C {rule} 2>/dev/null && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return output[0].strip() == "yes"

    @staticmethod
    def default() -> bool:
        return False


class HttpStatus(FactBase[str]):
    """The HTTP status code a URL answers on the box ('' without an answer)."""

    volatile = True  # read again each time (box/converge.py _FactReader)

    def command(self, url: str) -> str:
        return f"curl -s -o /dev/null -m 5 -w '%{{http_code}}' {shlex.quote(url)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip()

    @staticmethod
    def default() -> str:
        return ""


class RepoInfo(FactBase[str]):
    """``pgbackrest info --output=json`` of the repository path ``repo_path`` (its output, errors included; read
    with checks.backups.parse_info), through the box's pgbackrest.conf; '' without pgBackRest. An unreachable S3
    answers within about 40 s (``pgbackrest_info``'s io-timeout), not 4 minutes."""

    def command(self, repo_path: str) -> str:
        return f"if command -v pgbackrest >/dev/null; then {pgbackrest_info(repo_path)} 2>&1; true; fi"

    def process(self, output: list[str]) -> str:
        return "\n".join(output).strip()

    @staticmethod
    def default() -> str:
        return ""


class FileText(FactBase[str]):
    """A small file's text, stripped; '' when absent."""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return "\n".join(output).strip()

    @staticmethod
    def default() -> str:
        return ""


class EffectiveHardening(FactBase[dict]):
    """What the running services actually enforce, not what their files say: ``sshd -T``'s values for the keys in
    ``SSHD_KEYS``, whether fail2ban's ``sshd`` jail is up (``"fail2ban-sshd"``: ``"on"``/``"off"``) and apt's
    ``APT::Periodic::Unattended-Upgrade`` (``"unattended-upgrade"``), e.g. ``{"passwordauthentication": "no"}``."""

    volatile = True  # read again each time (box/converge.py _FactReader)

    SSHD_KEYS = ("passwordauthentication", "kbdinteractiveauthentication", "permitemptypasswords",
                 "permitrootlogin", "pubkeyauthentication")  # fmt: skip

    def command(self) -> str:
        keys = "|".join(self.SSHD_KEYS)
        return (
            f"sshd -T 2>/dev/null | grep -E '^({keys}) '; "
            # a just-restarted fail2ban answers once its jails are loaded: seconds, more on a slow box
            "jail=off; for i in $(seq 30); do command -v fail2ban-client >/dev/null || break; "
            "fail2ban-client status sshd >/dev/null 2>&1 && { jail=on; break; }; sleep 2; done; "
            "echo fail2ban-sshd $jail; "
            "echo unattended-upgrade $(apt-config dump APT::Periodic::Unattended-Upgrade 2>/dev/null | "
            "sed -n 's/^APT::Periodic::Unattended-Upgrade \"\\(.*\\)\";$/\\1/p')"
        )

    def process(self, output: list[str]) -> dict:
        found = {}
        for line in output:
            key, _, value = line.strip().partition(" ")
            if key:
                found[key.lower()] = value.strip()
        return found

    @staticmethod
    def default() -> dict:
        return {}


APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
             "/var/lib/apt/archives/lock")  # fmt: skip
APT_JOBS = ("apt-daily.service", "apt-daily-upgrade.service")  # apt-daily-upgrade runs unattended-upgrades


class AptBusy(FactBase[str]):
    """Waits up to ``timeout`` seconds for apt and dpkg to be free (no process holds their locks, no apt-daily or
    unattended-upgrades run), as at first boot; '' once free, else what still holds them (``"apt-get holds
    /var/lib/apt/lists/lock"``). Locks are read with ``lslocks`` (util-linux, on every Debian and Ubuntu)."""

    volatile = True  # read again each time (box/converge.py _FactReader)

    def command(self, timeout: int) -> str:
        return (
            f"end=$(( $(date +%s) + {int(timeout)} )); while :; do "
            f"busy=$(lslocks -n -o COMMAND,PATH 2>/dev/null | awk -v locks='{' '.join(APT_LOCKS)}' "
            "'BEGIN {n = split(locks, l, \" \"); for (i = 1; i <= n; i++) want[l[i]] = 1} "
            "($2 in want) {print $1 \" holds \" $2}' | sort -u | paste -sd, -); "
            # a oneshot job is "activating" while it runs (is-active says no then)
            f"for job in {' '.join(APT_JOBS)}; do "
            'case "$(systemctl show -p ActiveState --value $job 2>/dev/null)" in active|activating|reloading) '
            'busy="$busy${busy:+, }$job";; esac; done; '
            '[ -z "$busy" ] && break; [ "$(date +%s)" -ge "$end" ] && break; sleep 3; done; echo "busy:$busy"'
        )

    def process(self, output: list[str]) -> str:
        return output[-1].removeprefix("busy:").strip() if output else ""

    @staticmethod
    def default() -> str:
        return ""


SYSTEMD_BOOT_WAIT = 300  # seconds: a unit stuck starting must not hold the deploy for ever


class BootFinished(FactBase[bool]):
    """Waits until the box has finished booting: cloud-init done (it holds the apt lock on a fresh box) and
    systemd's boot jobs finished (a server just powered on is still starting PostgreSQL, Docker and the rest; a
    deploy reading their state then would start them itself). True once both are done, and on a box without
    cloud-init or systemd; False when systemd was still starting after ``SYSTEMD_BOOT_WAIT`` seconds. Read it
    with a ``_timeout``: the first boot of a cloud server can take minutes."""

    volatile = True  # read again each time (box/converge.py _FactReader)

    def command(self) -> str:
        # /run/cloud-init/result.json is written when this boot's cloud-init has finished: asking cloud-init (a
        # Python program, seconds on a small box) is needed only before that. `is-system-running --wait` returns
        # once the boot's start jobs are done ("running", or "degraded" when a unit failed: both end the wait);
        # `timeout` exits 124 when it had to cut the wait off.
        return ("{ [ -e /run/cloud-init/result.json ] || ! command -v cloud-init >/dev/null || "
                "cloud-init status --wait >/dev/null 2>&1; }; "
                f"timeout {SYSTEMD_BOOT_WAIT} systemctl is-system-running --wait >/dev/null 2>&1; echo done $?")

    def process(self, output: list[str]) -> bool:
        last = output[-1].split() if output else []
        return last[:1] == ["done"] and last[1:] != ["124"]


class PythonVersion(FactBase[str]):
    """The box's python3 as ``"3.11"``; '' without python3 (the gateway's virtualenv needs it)."""

    def command(self) -> str:
        return "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""

    @staticmethod
    def default() -> str:
        return ""


class CarriedSettings(FactBase[list[str]]):
    """Names of the carried settings (secrets and key sources, ``preflight.CARRIED``) that the box's own files
    hold now, e.g. ``["supabase.jwt_secret"]``: read with grep -q, so no value ever leaves the box."""

    def command(self) -> str:
        checks = (f"grep -qs {shlex.quote(pattern)} {shlex.quote(path)} && echo {key}; "
                  for key, pattern, path in CARRIED_ON_BOX)  # fmt: skip
        return "".join(checks) + "true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


# (setting, the line that holds it, the file the deploys write it to)
CARRIED_ON_BOX = (
    ("supabase.jwt_secret", '^jwt_secret *= *"[^"]', GATEWAY_CONFIG),  # the settings file writes "" when unset
    ("supabase.jwks_url", '^jwks_url *= *"[^"]', GATEWAY_CONFIG),
    ("backup.s3_key", "^repo1-s3-key=", PGBACKREST_CONF),
    ("backup.s3_key_secret", "^repo1-s3-key-secret=", PGBACKREST_CONF),
)


class SystemAccount(FactBase[dict]):
    """``{"group": bool, "user": {"gid", "home", "shell"} or None}`` for a system user and its own group, from
    getent (one command; pyinfra's Users fact runs lastlog and groups for every user: seconds on a small box)."""

    def command(self, account: str) -> str:
        quoted = shlex.quote(account)
        return f"getent group {quoted} | sed 's/^/group:/'; getent passwd {quoted} | sed 's/^/user:/'; true"

    def process(self, output: list[str]) -> dict:
        found: dict = {"group": "", "user": None}
        for line in output:
            kind, _, entry = line.partition(":")
            fields = entry.split(":")
            if kind == "group" and len(fields) >= 3:
                found["group"] = fields[2]
            elif kind == "user" and len(fields) >= 7:
                found["user"] = {"gid": fields[3], "home": fields[5], "shell": fields[6]}
        return found

    @staticmethod
    def default() -> dict:
        return {"group": "", "user": None}
