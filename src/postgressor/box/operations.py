"""postgressor's own pyinfra operations: each yields commands only when the box differs from the goal."""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import re
import shlex
from collections.abc import Generator
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File

from postgressor.box import facts
from postgressor.box.gated import JOURNAL_LINE
from postgressor.box.layout import (
    LOST_SLOT_STATE,
    MARKERS_DIR,
    RECOVERY_SETTINGS_RESET,
    RESTORED_MARKER,
    SECRETS_DIR,
    SSHD_DROP_INS,
    SYNC_UNITS,
    pgbackrest_restore,
    postgres_log,
    postgres_unit,
    psql,
    secret_path,
    start_recovered,
)
from postgressor.box.quoting import sql_literal
from postgressor.checks.backups import choose_set, info_problem, parse_info, pg_moment
from postgressor.checks.recovery_end import RECOVERY_END_COMMAND, parse_recovery_end, short_of_archive
from postgressor.errors import PostgressorError

SWAP_HEADROOM_MB = 1024  # left free after the swap file, for packages and PostgreSQL's first WAL


APT_IDLE_TIMEOUT = 900  # seconds to wait for first-boot apt work (apt-daily, unattended-upgrades) to finish
LOCK_RETRIES = 20  # pauses of 3, 6, 9 ... s: about ten minutes in all


def fail(message: str) -> str:
    """Shell that fails the operation with ``message`` as its one line on stderr."""
    return f"echo {shlex.quote(message)} >&2; exit 1"


def retry_while_locked(command: str) -> str:
    """``command``, run again after a growing pause while it fails because another process holds an apt or dpkg
    lock (``DPkg::Lock::Timeout`` covers dpkg's locks for installs, not apt's lists lock); any other failure, or
    the last retry, fails at once with the command's own output on stderr."""
    locked = "*'Could not get lock'*|*'is locked by another process'*|*'was locked by another process'*"
    return (
        f'n=0; until out=$({command} 2>&1); do case "$out" in {locked}) ;; '
        '*) printf \'%s\\n\' "$out" >&2; exit 1;; esac; n=$((n + 1)); '
        f'if [ "$n" -ge {LOCK_RETRIES} ]; then printf \'%s\\n\' "$out" | tail -n 1 >&2; exit 1; fi; '
        "sleep $((n * 3)); done"
    )


@operation()
def system_user(user: str, home: str, login_shell: str) -> Generator[str, None, None]:
    """A system user with a group of its own name, ``home`` (never created) and ``login_shell``."""
    account = host.get_fact(facts.SystemAccount, account=user)
    quoted = shlex.quote(user)
    if not account["group"]:
        yield f"groupadd --system {quoted}"
    found = account["user"]
    if found is None:
        yield (f"useradd --system --gid {quoted} --home-dir {shlex.quote(home)} --no-create-home "
               f"--shell {shlex.quote(login_shell)} {quoted}")  # fmt: skip
        return
    wrong = []
    if not account["group"] or found["gid"] != account["group"]:  # a group made just now is not the user's yet
        wrong.append(f"--gid {quoted}")
    if found["home"] != home:
        wrong.append(f"--home {shlex.quote(home)}")
    if found["shell"] != login_shell:
        wrong.append(f"--shell {shlex.quote(login_shell)}")
    if wrong:
        yield f"usermod {' '.join(wrong)} {quoted}"
    else:
        host.noop(f"system user {user} exists with group {user}, home {home} and shell {login_shell}")


@operation()
def apt_idle(timeout: int = APT_IDLE_TIMEOUT) -> Generator[str, None, None]:
    """Wait (bounded) until no other process uses apt or dpkg, as right after a cloud server's first boot."""
    busy = host.get_fact(facts.AptBusy, timeout=timeout)
    if not busy:
        host.noop("apt and dpkg are free")
        return
    message = (f"apt is still busy after {timeout} s ({busy}); wait for it to finish (or stop it), "
               "then run postgressor deploy")  # fmt: skip
    yield fail(message)


@operation()
def apt_index_update(packages: list[str]) -> Generator[str, None, None]:
    """``apt-get update`` when one of ``packages`` is not installed (then always, so a repository added just before
    is read), retried while another process holds apt's lists lock. A converged box is never changed because its
    package index aged."""
    installed = host.get_fact(DebPackages)
    missing = [name for name in packages if name.split("=")[0] not in installed]
    if not missing:
        host.noop("every package is installed: the package index is left as it is")
        return
    yield retry_while_locked("apt-get update")


@operation()
def repair_interrupted_dpkg() -> Generator[str, None, None]:
    """Finish a package run that an earlier, interrupted deploy left half-configured (never while one runs)."""
    if not host.get_fact(facts.DpkgInterrupted):
        host.noop("no interrupted package run to finish")
        return
    yield retry_while_locked("DEBIAN_FRONTEND=noninteractive dpkg --configure -a --force-confdef --force-confold")


@operation()
def firewall(
    ports: list[int], sources: dict[int, str] | None = None, interfaces: dict[int, str] | None = None
) -> Generator[str, None, None]:
    """ufw: deny incoming by default, allow exactly ``ports`` (plus port→source and port→interface rules)."""
    status = host.get_fact(facts.UfwStatus)
    wanted = {f"{port}/tcp" for port in ports}
    wanted |= {f"{port}/tcp {source}" for port, source in (sources or {}).items()}
    wanted |= {f"{port}/tcp on {iface}" for port, iface in (interfaces or {}).items()}
    if status["active"] and status["default_incoming"] == "deny" and status["allowed"] == wanted:
        host.noop(f"ufw is active and allows exactly {', '.join(sorted(wanted))}")
        return
    if status["default_incoming"] != "deny":
        yield "ufw default deny incoming"
        yield "ufw default allow outgoing"
    for rule in sorted(wanted - status["allowed"]):  # SSH (22) sorts before enabling below
        yield f"ufw allow {_ufw_rule(rule)}"
    for rule in sorted(status["allowed"] - wanted):
        yield f"ufw delete allow {_ufw_rule(rule)}"
    if not status["active"]:
        yield "ufw --force enable"


def _ufw_rule(rule: str) -> str:
    """'22/tcp', '5432/tcp 10.0.0.0/24' or '5432/tcp on docker0' as ufw allow/delete arguments."""
    port, _, rest = rule.partition(" ")
    number = port.split("/")[0]
    if rest.startswith("on "):
        return f"in {rest} to any port {number} proto tcp"
    if rest:
        return f"proto tcp from {rest} to any port {number}"
    return port


@operation()
def swapfile(size_mb: int, path: str = "/swapfile") -> Generator[str, None, None]:
    """An active swap file of ``size_mb``; a half-made one from an interrupted run is rebuilt."""
    active: list[str] = host.get_fact(facts.ActiveSwap)
    if active:
        host.noop(f"swap is already active ({', '.join(active)})")
        return
    needed = size_mb + SWAP_HEADROOM_MB
    yield (
        f"swapoff {path} 2>/dev/null; rm -f {path}; "
        f"free=$(df --output=avail -BM {posixpath.dirname(path)} | tail -1 | tr -dc 0-9); "
        f'if [ "$free" -lt {needed} ]; then echo "only ${{free}} MB free on the disk, too little for a {size_mb} MB '
        "swap file; grow the disk, or lower hardening.swap_mb (hardening.swap_below_mb = 0 turns swap off)\" >&2; "
        "exit 1; fi; "
        f"fallocate -l {size_mb}M {path} && chmod 600 {path} && mkswap {path} >/dev/null && swapon {path} "
        f"|| {{ rm -f {path}; exit 1; }}"
    )


@operation()
def hardening_effective(
    sshd: dict[str, tuple[str, ...]], fail2ban_jail: bool, unattended_upgrades: bool
) -> Generator[str, None, None]:
    """Fail unless the running services enforce the hardening: ``sshd -T`` shows one of the accepted values for
    each key of ``sshd``, fail2ban's sshd jail is up, apt runs unattended upgrades. A file that passes ``sshd -t``
    can still lose to another drop-in (sshd keeps the first value it reads), so the effect is what is checked."""
    seen: dict[str, str] = host.get_fact(facts.EffectiveHardening)
    wrong_sshd = [key for key, ok in sshd.items() if seen.get(key) not in ok]
    wrong = [f"sshd {key} is {seen.get(key) or 'unset'} (want {' or '.join(sshd[key])})" for key in wrong_sshd]
    if fail2ban_jail and seen.get("fail2ban-sshd") != "on":
        wrong.append("fail2ban's sshd jail is not running")
    if unattended_upgrades and seen.get("unattended-upgrade") != "1":
        wrong.append(f"APT::Periodic::Unattended-Upgrade is {seen.get('unattended-upgrade') or 'unset'} (want 1)")
    if not wrong:
        host.noop("sshd -T, fail2ban and apt enforce the hardening")
        return
    message = "hardening not in effect: " + "; ".join(wrong)
    if not wrong_sshd:
        yield fail(message + "; run postgressor deploy again once it is fixed")
        return
    # One line naming the files that set those keys, in the order sshd reads them (the first value wins): Debian's
    # and Ubuntu's sshd_config include the drop-ins on its first line. "Key value" or "Key=value".
    pattern = shlex.quote(f"^[[:space:]]*({'|'.join(wrong_sshd)})[[:space:]=]")
    yield (
        f"files=$(grep -liE {pattern} {SSHD_DROP_INS}/*.conf /etc/ssh/sshd_config 2>/dev/null | paste -sd ' ' -); "
        f"printf '%s (set in %s, read in that order: the first value wins); fix or remove the file that wins, "
        f"then run postgressor deploy\\n' {shlex.quote(message)} \"$files\" >&2; exit 1"
    )


@operation()
def electric_slot_usable(slot: str, unit: str, storage: str, database: str) -> Generator[str, None, None]:
    """Rebuild Electric from the database when PostgreSQL invalidated its slot (``wal_status`` lost:
    ``max_slot_wal_keep_size`` was exceeded): stop it, drop the slot from its own ``database`` (ending a walsender
    that still holds it), clear its shape storage and start it again, so it creates the slot and clients resync,
    as a restore does. Electric is started again whatever happens. Any other state is left alone: an
    ``unreserved`` slot can still recover once its consumer catches up."""
    state = host.get_fact(
        facts.PostgresScalar,
        sql=f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = {sql_literal(slot)}",  # noqa: S608
    )
    if state != LOST_SLOT_STATE:
        host.noop(f"replication slot {slot} is {state or 'not created yet'}")
        return
    where = f"FROM pg_replication_slots WHERE slot_name = {sql_literal(slot)}"
    end_holder = psql(f"SELECT pg_terminate_backend(active_pid) {where} AND active_pid IS NOT NULL", database)
    drop = psql(f"SELECT pg_drop_replication_slot(slot_name) {where}", database)  # none left: nothing to do
    unit_q = shlex.quote(unit)
    yield (
        f"trap 'systemctl start {unit_q}' EXIT; systemctl stop {unit_q}; {end_holder} >/dev/null; n=0; "
        f"until {drop} >/dev/null; do n=$((n + 1)); [ $n -ge 10 ] && exit 1; sleep 1; done; "
        f"find {shlex.quote(storage)} -mindepth 1 -delete"
    )


def _generate(path: str) -> str:
    """Shell that writes 40 random alphanumerics to ``path``.new (root-only); the caller moves it in place."""
    return f"umask 077; install -d -m 0700 {SECRETS_DIR}; tr -dc A-Za-z0-9 </dev/urandom | head -c 40 > {path}.new"


@operation()
def generated_secret(name_on_box: str) -> Generator[str, None, None]:
    """A random secret made on the box and kept there only (root, 0600)."""
    path = secret_path(name_on_box)
    if host.get_fact(File, path=path):
        host.noop(f"{path} exists (a secret is made once and kept)")
        return
    yield f"set -e; {_generate(path)}; mv {path}.new {path}"


def secret_digest(value: str) -> str:
    """SHA-256 hex digest of a secret as the box's ``SecretDigest`` fact computes it for its file."""
    return hashlib.sha256(value.rstrip("\n").encode()).hexdigest()


def same_secret(value: str, digest_on_box: str) -> bool:
    """True when the box's file (``digest_on_box``, from ``SecretDigest``) holds ``value``."""
    return hmac.compare_digest(secret_digest(value), digest_on_box)


@operation()
def held_secret(name_on_box: str, value: str, mismatch: str) -> Generator[object, None, None]:
    """A secret the user holds, uploaded to the box root-only (0600, never in a command). One the box already holds
    is never replaced: a different value there fails the operation with the one line ``mismatch`` (compared by
    SHA-256 digest, so neither value is shown)."""
    path = secret_path(name_on_box)
    on_box = host.get_fact(facts.SecretDigest, secret=name_on_box)
    if on_box and same_secret(value, on_box):
        host.noop(f"{path} holds the given secret (same digest)")
        return
    if on_box:
        yield fail(mismatch)
        return
    yield f"install -d -m 0700 {SECRETS_DIR}"
    new = f"{path}.new"
    yield FileUploadCommand(StringIO(value), new, remote_temp_filename=host.get_temp_filename(new))
    # Moved in place only if the box still has none: a digest that failed to read never leads to an overwrite.
    yield (
        f"chown root:root {new} && chmod 600 {new} && if [ -s {path} ]; then rm -f {new}; "
        f"echo {shlex.quote(mismatch)} >&2; exit 1; fi && mv {new} {path}"
    )


def set_password(role: str, path: str) -> str:
    """Shell giving ``role`` the password in file ``path``: it reaches psql on stdin through printf (a shell
    builtin), so it never shows in `ps`."""
    return f"printf 'ALTER ROLE \"%s\" PASSWORD $$%s$$;\\n' {shlex.quote(role)} \"$(cat {path})\" | ({psql()})"


@operation()
def role_password(role: str) -> Generator[str, None, None]:
    """Give ``role`` a generated password kept on the box in a root-only file, never in argv or logs."""
    path = secret_path(f"{role}.password")
    if host.get_fact(File, path=path):
        host.noop(f"{role} has its password ({path} exists)")
        return
    yield f"set -e; {_generate(path)}; {set_password(role, path + '.new')}; mv {path}.new {path}"


@operation()
def restored(repo_path: str, target: str, version: int, roles: list[str], storage: str) -> Generator[str, None, None]:
    """Once: replace the cluster with the newest backup in ``repo_path`` (another stack's path in this repository)
    finished before ``target`` (a PostgreSQL timestamp; '' for the end of its archived WAL), replayed and promoted.
    Then ``roles`` get their passwords from this box's files again (the backup holds the old server's) and Electric's
    ``storage`` is emptied (pgBackRest leaves out replication slots: Electric makes its slot and shapes again). The
    old path's ``restore_command`` goes once it is promoted (``RECOVERY_SETTINGS_RESET``)."""
    want = digest(repo_path, target)
    done = read_restored_marker(host.get_fact(facts.FileText, path=RESTORED_MARKER))
    if done.digest == want:
        host.noop(f"restored from {repo_path} (backup {done.label})")
        return
    chosen, problem = None, ""
    try:
        found = parse_info(host.get_fact(facts.RepoInfo, repo_path=repo_path))
        if found["status"]["code"]:
            problem = info_problem(found)
        elif not found["backups"]:
            problem = "it holds no backup"
        elif found["pg_version"] not in ("", str(version)):
            problem = (f"its backups are of PostgreSQL {found['pg_version']} and this box runs {version} (set "
                       f"postgres.version = {found['pg_version']} for the new stack)")  # fmt: skip
        else:
            chosen = choose_set(found["backups"], pg_moment(target) if target else None)
    except PostgressorError as err:
        problem = str(err)
    if chosen is None:
        yield fail(f"cannot restore from {repo_path}: {problem}; --restore-from names the old stack's backup.s3_path "
                   "(same bucket, S3 keys and backup.cipher_pass as this stack's)")  # fmt: skip
        return
    unit = postgres_unit(version)
    label = chosen["label"]
    recovery_failed = (f"PostgreSQL did not finish recovering backup {label}: see {postgres_log(version)}; fix the "
                       "cause and run postgressor deploy (the restore runs again)")  # fmt: skip
    passwords = [set_password(role, secret_path(f"{role}.password")) for role in roles]
    yield "; ".join([
        "set -e",
        # Electric and the gateway read PostgreSQL: on a box where they already run (a server used before), they
        # stop first; the sync deploys after this one start them on the restored data.
        f"systemctl stop {' '.join(SYNC_UNITS)} 2>/dev/null || true",
        f"systemctl stop {unit}",
        pgbackrest_restore(label, target, repo_path),
        f"( {start_recovered(version)} ) || {{ {fail(recovery_failed)}; }}",
        RECOVERY_SETTINGS_RESET,
        *(f"{command} >/dev/null" for command in passwords),
        f"if [ -d {storage} ]; then find {storage} -mindepth 1 -delete; fi",
        f"install -d -m 0700 {MARKERS_DIR}",
        restored_marker_command(want, label, "" if target else (found["archive"] or {}).get("max") or ""),
    ])  # fmt: skip


@dataclass(frozen=True)
class RestoredMarker:
    """What ``restored`` left on the box: the ``digest`` of what it restored, the backup ``label``, and for a
    restore to the end of the archive whether recovery reached it: ``shortfall`` ('' when it did), ``checked``
    (False when where recovery ended could not be read)."""

    digest: str = ""
    label: str = ""
    shortfall: str = ""
    checked: bool = True
    read_at: str = ""  # the box's time when where recovery ended was read ('' when not)


def restored_marker_command(want: str, label: str, archive_max: str) -> str:
    """Shell writing RESTORED_MARKER (whole, or not at all: a marker cut short would run the restore again):
    ``<digest> <label>``; for a restore to the end of the archive (``archive_max``, the newest segment the
    repository held, non-empty) also that segment and where recovery ended, read once PostgreSQL has promoted. A
    failed read leaves that line out, never the restore undone."""
    head = f"echo {want} {shlex.quote(label)}"
    if not archive_max:
        return f"{head} > {RESTORED_MARKER}"
    end = f"echo {shlex.quote(archive_max)}; ( {RECOVERY_END_COMMAND} ) || true"
    return f"{{ {head}; {end}; }} > {RESTORED_MARKER}.new && mv {RESTORED_MARKER}.new {RESTORED_MARKER}"


def read_restored_marker(text: str) -> RestoredMarker:
    """RESTORED_MARKER's ``text`` (the FileText fact, or its content read over SSH); empty when absent."""
    lines = text.strip().splitlines()
    first = lines[0].split() if lines else []
    if not first:
        return RestoredMarker()
    # the label as pgBackRest makes them (20261125-040122F, …F_…D): anything else from the box is not repeated
    label = first[1] if len(first) == 2 and BACKUP_LABEL.fullmatch(first[1]) else "(unreadable label)"
    if len(lines) < 2:  # a point-in-time restore, or a marker written before the end was recorded
        return RestoredMarker(first[0], label)
    end = parse_recovery_end("\n".join(lines[2:]))
    if end is None:
        return RestoredMarker(first[0], label, checked=False)
    return RestoredMarker(first[0], label, short_of_archive(end, lines[1].strip()), read_at=end.read_at)


BACKUP_LABEL = re.compile(r"\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?")


SECRET_READ = re.compile(r"\$\(cat (/[A-Za-z0-9._/-]+)\)")  # $(cat FILE): a secret read on the box


def render(lines: list[str]) -> str:
    """printf of the lines as one shell word each: every ``$(cat /path)`` in them is read by the box's shell
    (so the secret is never sent as a value), everything else is literal (``shlex.quote``)."""
    return "printf '%s\\n' " + " ".join(_shell_word(line) for line in lines)


def _shell_word(line: str) -> str:
    parts, pos = [], 0
    for match in SECRET_READ.finditer(line):
        if match.start() > pos:
            parts.append(shlex.quote(line[pos : match.start()]))
        parts.append(f'"$(cat {match[1]})"')
        pos = match.end()
    if pos < len(line) or not parts:
        parts.append(shlex.quote(line[pos:]))
    return "".join(parts)


@operation()
def composed_file(path: str, lines: list[str], owner: str = "root", mode: str = "600") -> Generator[str, None, None]:
    """A file composed on the box (secrets read from their files there), with ``owner`` and ``mode``."""
    text = render(lines)
    if host.get_fact(facts.ComposedFileCurrent, render=text, path=path, owner=owner, mode=mode):
        host.noop(f"{path} is current ({owner}, {mode})")
        return
    yield compose_command(path, lines, owner, mode)


def compose_command(path: str, lines: list[str], owner: str = "root", mode: str = "600") -> str:
    """The shell command ``composed_file`` runs: write ``lines`` (secrets expanded from their files) to ``path``."""
    text = render(lines)
    return (
        f"set -e; umask 077; {text} > {path}.new; chown {owner}:{owner} {path}.new; chmod {mode} {path}.new; "
        f"mv {path}.new {path}"
    )


@operation()
def docker_image(image: str, archive: str = "") -> Generator[str, None, None]:
    """The image present locally: loaded from an uploaded archive, or pulled with a clear way out."""
    if host.get_fact(facts.DockerImagePresent, image=image):
        host.noop(f"image {image} is present")
        return
    q = shlex.quote(image)
    if archive:
        yield f"docker load -q -i {shlex.quote(archive)} && docker image inspect {q} >/dev/null"
    else:
        after = (": set electric.image to a reachable mirror of it, or set electric.image_archive to a "
                 f"'docker save' tarball of {image} (its tag must match)")  # fmt: skip
        # The hint is the last line on stderr, so it is what the one-line error shows; only $why is expanded.
        yield (
            f'out=$(docker pull -q {q} 2>&1) || {{ why=$(printf "%s" "$out" | tail -n 1 | cut -c1-160); '
            f'echo {shlex.quote(f"cannot pull {image} (")}"$why"{shlex.quote(")" + after)} >&2; exit 1; }}'
        )


@operation()
def loopback_guarded(unit: str, rule: str) -> Generator[str, None, None]:
    """The raw-table ``rule`` in place, installed by ``unit`` (a oneshot that also adds it at every boot), and
    checked in effect afterwards."""
    if host.get_fact(facts.IptablesRulePresent, table="raw", rule=rule):
        host.noop(f"in place: iptables -t raw {rule}")
        return
    missing = fail(f"{unit} did not add iptables -t raw {rule}; see journalctl -u {unit}")
    yield (f"systemctl daemon-reload && systemctl enable --quiet {unit} && systemctl restart {unit}; "
           f"iptables -t raw -C {rule} || {{ {missing}; }}")  # fmt: skip


@operation()
def http_ready(url: str, timeout: int, unit: str) -> Generator[str, None, None]:
    """Wait until ``url`` answers 200, ``timeout`` seconds by the box's clock; else fail with one line naming the
    last answer and the last line ``unit`` logged (what a person would look up first)."""
    if host.get_fact(facts.HttpStatus, url=url) == "200":
        host.noop(f"{url} answers 200")
        return
    yield http_ready_command(url, timeout, unit)


def http_ready_command(url: str, timeout: int, unit: str) -> str:
    """Shell that waits until ``url`` answers 200 (``timeout`` seconds by the box's clock), else exits 1 with one
    line on stderr naming the last answer and the last line ``unit`` logged."""
    q = shlex.quote(url)
    return (
        f"end=$(($(date +%s) + {timeout})); while :; do "
        f"code=$(curl -s -o /dev/null -m 5 -w '%{{http_code}}' {q}); [ \"$code\" = 200 ] && exit 0; "
        '[ "$(date +%s)" -ge "$end" ] && break; sleep 1; done; '
        '[ "$code" = 000 ] && code="no answer" || code="HTTP $code"; '
        f"why=$(journalctl -u {shlex.quote(unit)} -n 50 -o cat --no-pager 2>/dev/null | grep -v '^[[:space:]]*$' "
        f"| tail -n 1 | cut -c1-{JOURNAL_LINE}); "
        f'echo {shlex.quote(f"{url} did not answer 200 within {timeout} s (last: ")}"$code"'
        f'{shlex.quote(f"; {unit} last logged: ")}"${{why:-nothing}}"'
        f'{shlex.quote(f"); see journalctl -u {unit} on the box")} >&2; exit 1'
    )


def digest(*parts: str) -> str:
    """A short hash of ``parts`` for ``applied`` markers: any change to a part reruns the command."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


@operation()
def applied(marker: str, digest: str, command: str) -> Generator[str, None, None]:
    """Run ``command`` unless it already ran for this ``digest`` (survives an interrupted run)."""
    path = f"{MARKERS_DIR}/{marker}"
    if host.get_fact(facts.FileText, path=path) == digest:
        host.noop(f"already applied for this input ({path} = {digest})")
        return
    yield f"{command} && install -d -m 0700 {MARKERS_DIR} && echo {digest} > {path}"


@operation()
def sql_unless(check: str, apply: str, database: str = "postgres") -> Generator[str, None, None]:
    """Run ``apply`` unless the ``check`` query already returns true."""
    if host.get_fact(facts.PostgresScalar, sql=check, database=database) == "t":
        host.noop(f"already true in {database}: {check}")
        return
    yield psql(apply, database)


def apply_config_command(version: int) -> str:
    """Reload PostgreSQL, then restart it only if a changed setting needs a restart."""
    unit = postgres_unit(version)
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
        host.noop("PostgreSQL is not running yet: the deploy starts it with this config")
        return
    if written <= int(float(loaded)) and pending != "t":
        host.noop(f"PostgreSQL loaded {', '.join(paths)} after they were written, with no restart pending")
        return
    yield apply_config_command(version)


def marked(command: str, marker: str) -> str:
    """``command``, then a marker file recording when its config was last applied."""
    return f"{command} && install -d {MARKERS_DIR} && touch {MARKERS_DIR}/{marker}"


@operation()
def reapply_if_stale(paths: list[str], marker: str, command: str) -> Generator[str, None, None]:
    """Re-run ``command`` when a config file is newer than its last application (an interrupted run)."""
    written = host.get_fact(facts.FileMtime, paths=paths)
    applied = host.get_fact(facts.FileMtime, paths=[f"{MARKERS_DIR}/{marker}"])
    if written <= applied:
        host.noop(f"{', '.join(paths)} applied since last written (marker {marker})")
        return
    yield marked(command, marker)
