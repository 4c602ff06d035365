"""Every fact about the box's layout, defined once: paths, ports, unit names and the psql command.

The deploys write these paths, and status, backups, restore and the remote checks read them; nothing else spells
them out. Plain data and string builders only (no pyinfra, no SSH), so any layer may import it.
"""

from __future__ import annotations

import json
import shlex

CONFIG_DIR = "/etc/postgressor"  # root-owned config and environment files
SECRETS_DIR = f"{CONFIG_DIR}/secrets"  # generated secrets, root-only (0700 directory, 0600 files)
STATE_DIR = "/var/lib/postgressor"
MARKERS_DIR = f"{STATE_DIR}/applied"  # `applied` digests and config-applied timestamps
CONVERGED_RECORD = f"{STATE_DIR}/converged.json"  # what the last successful deploy left (box/converged.py)
IMAGES_DIR = f"{STATE_DIR}/images"  # uploaded `docker save` archives

SSHD_DROP_INS = "/etc/ssh/sshd_config.d"
# sshd keeps the first value it reads and reads its drop-ins in name order: "00-" comes before cloud-init's "50-".
SSHD_DROP_IN = f"{SSHD_DROP_INS}/00-postgressor.conf"
SSHD_OLD_DROP_IN = f"{SSHD_DROP_INS}/50-postgressor.conf"  # its earlier name, removed by the deploy

POSTGRES_PORT = 5432
ELECTRIC_PORT = 3000  # Electric's HTTP API, bound to 127.0.0.1 only
ELECTRIC_STORAGE = "/var/lib/electric"  # Electric's shape cache (ELECTRIC_STORAGE_DIR)
ELECTRIC_ENV = f"{CONFIG_DIR}/electric.env"
# Electric 1.7.12's default replication slot (packages/sync-service/lib/electric/application.ex, slot_name)
ELECTRIC_SLOT = "electric_slot_default"
# pg_replication_slots.wal_status: "lost" once WAL the slot needs was removed (for good); "unreserved" while it
# is about to be (it may still recover if its consumer catches up)
LOST_SLOT_STATE = "lost"
LOSING_SLOT_STATE = "unreserved"

GATEWAY_HOME = "/opt/postgressor/gateway"  # the gateway's wheels, virtualenv and code
GATEWAY_CONFIG = f"{CONFIG_DIR}/gateway.toml"
GATEWAY_ENV = f"{CONFIG_DIR}/gateway.env"
GATEWAY_USER = "postgressor-gw"

ELECTRIC_UNIT = "electric"
GATEWAY_UNIT = "postgressor-gateway"
CADDY_UNIT = "caddy"
CADDY_STORAGE = "/var/lib/caddy/.local/share/caddy"  # $XDG_DATA_HOME/caddy of the caddy user (Debian's unit)
# Docker before 28.0 lets a host on the box's network segment reach a port published on 127.0.0.1 (its DNAT runs
# before the kernel's martian check). The guard drops, in the raw table, every packet for 127.0.0.0/8 that did not
# come from the box itself, as Docker 28 does per port (moby 28.0 release notes, "direct routing" protection).
LOOPBACK_GUARD_UNIT = "postgressor-loopback-guard"
LOOPBACK_GUARD_RULE = "PREROUTING ! -i lo -d 127.0.0.0/8 -j DROP"  # iptables -t raw -C|-I|-D <this>
SYNC_UNITS = (ELECTRIC_UNIT, GATEWAY_UNIT)  # the units that read PostgreSQL (stopped around a restore)

BACKUP_UNIT = "pgbackrest-backup"  # a template unit: one instance per backup type (pgbackrest-backup@full)
BACKUP_KINDS = ("full", "diff")  # the scheduled backup types, each with its own timer
SCHEDULED_BACKUP_TIMERS = {kind: f"pgbackrest-{kind}.timer" for kind in BACKUP_KINDS}

PGBACKREST_STANZA = "main"
PGBACKREST_CONF = "/etc/pgbackrest/pgbackrest.conf"
PGBACKREST_LOCAL_REPO = "/var/lib/pgbackrest"  # the repository when it is not on S3
PGBACKREST_SPOOL = "/var/spool/pgbackrest"  # asynchronous archive-push's queue acknowledgements
# pgBackRest's warning when it drops queued WAL (archive-push-queue-max): in PostgreSQL's log, and with a
# timestamp (the box's clock, UTC on the images postgressor deploys to) in the asynchronous archive-push log
WAL_DROPPED_MARK = "because archive queue exceeded"
PGBACKREST_ASYNC_LOG = f"/var/log/pgbackrest/{PGBACKREST_STANZA}-archive-push-async.log"
# pgBackRest as postgres, reading PGBACKREST_CONF (so no secret is ever on its command line)
PGBACKREST = f"cd / && runuser -u postgres -- pgbackrest --stanza={PGBACKREST_STANZA}"
# pgBackRest runs one backup at a time: a second one fails at once on its lock (error 050). The scheduled backups
# and `backup now` take this lock first, with flock (util-linux), so each waits for the other. Both take it as
# postgres: the file stays postgres's, and fs.protected_regular refuses O_CREAT on another user's file in the
# sticky /run/lock, even to root.
BACKUP_LOCK = "/run/lock/postgressor-backup"


def pgbackrest_backup(kind: str, wait: int) -> str:
    """A ``kind`` backup (full, diff, incr) as postgres once BACKUP_LOCK is free, waiting up to ``wait`` seconds
    for it (then exit 75, EX_TEMPFAIL)."""
    return (f"cd / && runuser -u postgres -- flock -w {wait} -E 75 {BACKUP_LOCK} pgbackrest "
            f"--stanza={PGBACKREST_STANZA} --type={shlex.quote(kind)} backup")  # fmt: skip
# Reading the repository's info: each request retries an unreachable S3 until io-timeout (60 s by default, about
# 4 minutes for one `info` against a refusing endpoint, measured with 2.45); 10 s answers within 40 s.
def pgbackrest_info(repo_path: str = "") -> str:
    """pgBackRest's JSON info of the stack's repository, or of ``repo_path`` in it (another stack's s3_path)."""
    path = f" --repo1-path={shlex.quote(repo_path)}" if repo_path else ""
    return f"{PGBACKREST}{path} --io-timeout=10 --output=json info"


PGBACKREST_INFO = pgbackrest_info()
# File names under SECRETS_DIR (not secrets themselves).
CIPHER_SECRET = "pgbackrest_cipher"  # noqa: S105
S3_KEY_SECRET = "pgbackrest_s3_key"  # noqa: S105
S3_KEY_SECRET_SECRET = "pgbackrest_s3_key_secret"  # noqa: S105
# "<digest> <backup label>" once the box was restored from another stack's repository path (`up --restore-from`)
RESTORED_MARKER = f"{MARKERS_DIR}/restored-from"


def secret_path(name: str) -> str:
    """Path of the generated secret ``name`` on the box (e.g. ``"app.password"``)."""
    return f"{SECRETS_DIR}/{name}"


def secret_digest_command(name: str) -> str:
    """Shell printing the SHA-256 hex digest of secret ``name`` as pgbackrest.conf reads it (``$(cat file)``:
    trailing newlines dropped), or nothing when the file is absent or empty. Only the digest leaves the box; printf
    is a shell builtin, so the value is in no process's argv."""
    path = shlex.quote(secret_path(name))
    return f"if [ -s {path} ]; then printf '%s' \"$(cat {path})\" | sha256sum | cut -d' ' -f1; fi"


def pgbackrest_set_info(label: str) -> str:
    """pgBackRest's JSON ``info`` of backup set ``label`` alone (the stanza's archive ids too); stderr joins stdout,
    where the JSON is one line of its own."""
    return f"{PGBACKREST} --output=json --set={shlex.quote(label)} info 2>&1"


def pgbackrest_listings(paths: list[str]) -> str:
    """Shell printing ONE JSON object: each repository path (relative to the repository, e.g.
    ``archive/main/15-1/0000000100000000``) mapped to pgBackRest's ``repo-ls --output=json`` of it, in one SSH
    round trip. The first listing that fails ends it with pgBackRest's exit status, its ERROR line on stderr.
    The keys are JSON-quoted here, so any path is one well-formed key."""
    steps = []
    for index, path in enumerate(paths):
        key = ("{" if index == 0 else ",") + json.dumps(path) + ":"
        steps += [f"printf '%s' {shlex.quote(key)}", f"{PGBACKREST} --output=json repo-ls {shlex.quote(path)}"]
    return " && ".join([*steps, "echo '}'"]) if paths else "echo '{}'"


# pgBackRest's verify of the whole repository (2.45 ignores --set for verify: the option is internal there): the
# text report with a line per backup (--verbose), and the reasons, which 2.45 logs at INFO only
# (--log-level-console=info); WARN and ERROR lines go to stderr, which joins stdout.
PGBACKREST_VERIFY = f"{PGBACKREST} --output=text --verbose --log-level-console=info verify 2>&1"


def postgres_unit(version: int | str) -> str:
    """systemd unit of the Debian/Ubuntu ``main`` cluster of PostgreSQL ``version`` (e.g. ``postgresql@17-main``)."""
    return f"postgresql@{version}-main"


def backup_unit(kind: str = "*") -> str:
    """The backup service of type ``kind`` (``pgbackrest-backup@full``); the default ``*`` is the glob that
    journalctl and systemctl match every instance with."""
    return f"{BACKUP_UNIT}@{kind}"


def pgbackrest_restore(label: str, target: str = "", repo_path: str = "") -> str:
    """pgBackRest restore of backup ``label`` over the stopped cluster (``--delta``), to ``target`` (a PostgreSQL
    timestamp) and promoted, else to the end of the archived WAL. ``repo_path`` reads another path of the same
    repository; pgBackRest 2.45 carries an option given on this command line into the ``restore_command`` it writes
    (src/config/exec.c cfgExecParam: local options whose source is the command line), so WAL comes from there too.
    Such a restore (another stack's backup, maybe of a bigger box) also recovers with ``hot_standby`` off:
    PostgreSQL checks max_connections and the other limits against the old server's only for hot standby
    (xlogrecovery.c CheckRequiredParameterValues, PostgreSQL 15), so a smaller box can replay it;
    ``RECOVERY_SETTINGS_RESET`` removes both settings once it is promoted.
    """
    command = f"{PGBACKREST} --delta --set={shlex.quote(label)}"
    if repo_path:
        command += f" --repo1-path={shlex.quote(repo_path)} --recovery-option=hot_standby=off"
    if target:
        command += f" --type=time --target={shlex.quote(target)} --target-action=promote"
    return f"{command} restore"


def start_recovered(version: int | str) -> str:
    """Shell that starts PostgreSQL ``version`` and waits (up to an hour) until recovery ended; exit 1 when it
    stops instead."""
    unit = postgres_unit(version)
    return (
        f"systemctl start {unit} || exit 1; for i in $(seq 3600); do "
        f'[ "$({psql("SELECT pg_is_in_recovery()")} 2>/dev/null)" = f ] && exit 0; '
        f"systemctl is-active -q {unit} || exit 1; sleep 1; done; exit 1"
    )


def postgres_conf_dir(version: int | str) -> str:
    return f"/etc/postgresql/{version}/main"


def postgres_log(version: int | str) -> str:
    return f"/var/log/postgresql/postgresql-{version}-main.log"


def electric_health_url(port: int = ELECTRIC_PORT) -> str:
    return f"http://127.0.0.1:{port}/v1/health"


def psql(sql: str | None = None, database: str = "postgres", stop_at_error: bool = True) -> str:
    """psql as the postgres superuser (peer authentication: no password anywhere), unaligned tuples only, stopping
    at the first error unless ``stop_at_error`` is False. ``sql`` None reads the statements from stdin, which is
    how a value that must stay out of argv (a password) reaches the server; nothing secret is ever part of this
    command line, so it can be logged.
    """
    stop = 1 if stop_at_error else 0
    command = f"cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP={stop} -d {shlex.quote(database)}"
    return command if sql is None else f"{command} -c {shlex.quote(sql)}"


# After a restore from another stack's path: its recovery settings out of postgresql.auto.conf (one statement a
# line: ALTER SYSTEM runs outside a transaction block).
RECOVERY_SETTINGS_RESET = (
    "printf '%s\\n' 'ALTER SYSTEM RESET restore_command;' 'ALTER SYSTEM RESET hot_standby;' "
    f"'SELECT pg_reload_conf();' | ({psql()}) >/dev/null"
)


# pgbackrest check switches WAL and waits until the segment it closed is in the repository. With no WAL written
# since the last switch, PostgreSQL switches nothing and check waits for the previous segment, which may be one
# that archive-push-queue-max dropped: it never arrives. A logical message (no transaction, a few bytes) first.
WAL_MARK = "SELECT pg_logical_emit_message(false, 'postgressor', 'backup check')"
PGBACKREST_CHECK = f"( {psql(WAL_MARK)} >/dev/null && {PGBACKREST} check ) 2>&1"  # psql errors kept
