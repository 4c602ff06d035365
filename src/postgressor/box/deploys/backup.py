"""Backups with pgBackRest: WAL archiving, an encrypted repository (local disk or S3), scheduled backups.

The repository passphrase is the user's when given (backup.cipher_pass, required with S3): uploaded (0600) and
never replacing a different one the box already holds. Without it (a local repository) the box generates one and
keeps it. S3 keys come from the controller's configuration and are uploaded (0600) too; no secret is ever put on a
command line. pgbackrest.conf is composed on the box from those secret files, owned by postgres, 0600.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from postgressor.box import facts
from postgressor.box.deploys.base import APT_ARGS, template
from postgressor.box.layout import (
    BACKUP_LOCK,
    BACKUP_UNIT,
    CIPHER_SECRET,
    ELECTRIC_STORAGE,
    PGBACKREST,
    PGBACKREST_CONF,
    PGBACKREST_LOCAL_REPO,
    PGBACKREST_SPOOL,
    PGBACKREST_STANZA,
    S3_KEY_SECRET,
    S3_KEY_SECRET_SECRET,
    SCHEDULED_BACKUP_TIMERS,
    SECRETS_DIR,
    backup_unit,
    secret_path,
)
from postgressor.box.operations import (
    applied,
    apt_index_update,
    composed_file,
    generated_secret,
    held_secret,
    marked,
    reapply_if_stale,
    restored,
)
from postgressor.box.spec import BackupSpec, BoxSpec

ARCHIVE_DROPIN = "conf.d/60-postgressor-backup.conf"  # the WAL archiving settings (postgres.py writes it)
SERVICE = f"{BACKUP_UNIT}@.service"
TIMERS = SCHEDULED_BACKUP_TIMERS


# The one line a deploy stops with when the user's passphrase is not the box's (lifecycle checks it first).
CIPHER_MISMATCH = (
    "backup.cipher_pass differs from the passphrase the box's backup repository is encrypted with (compared by "
    "digest, neither is shown), and a deploy never changes it: set POSTGRESSOR_BACKUP__CIPHER_PASS to the box's "
    "own ('postgressor backup passphrase' shows it)"
)


def box_secret(name: str) -> str:
    """A secret as the box's shell reads it from its file while composing (never a literal value)."""
    return f"$(cat {secret_path(name)})"


ARCHIVE_QUEUE_SHARE = 0.15  # of the disk: with max_slot_wal_keep_size (20 %), pg_wal stays well below full
MIN_ARCHIVE_QUEUE_MB = 256


def archive_queue_mb(spec: BackupSpec, disk_kb: int) -> int:
    """The archive queue's cap in MB: ``spec.archive_queue_max_mb``, else ARCHIVE_QUEUE_SHARE of ``disk_kb``."""
    if spec.archive_queue_max_mb:
        return spec.archive_queue_max_mb
    return max(MIN_ARCHIVE_QUEUE_MB, int(disk_kb * ARCHIVE_QUEUE_SHARE) // 1024)


ARCHIVE_PUSH_IO_TIMEOUT = 10  # seconds pgBackRest's archive-push waits on one S3 request before it gives up
# Seconds `backup` and `check` wait for their WAL segment to reach the repository. pgBackRest's default (60 s) left
# no room for a retry: when a push fails (one that hits ARCHIVE_PUSH_IO_TIMEOUT on a busy box), PostgreSQL's
# archiver tries again, and after three failures in a row it sleeps until woken or 60 s (pgarch.c,
# PGARCH_AUTOWAKE_INTERVAL). A final backup before destroy timed out so on a loaded VM while archiving worked.
# The cost: with archiving broken, `backup check` and `backup now` take 5 minutes to fail.
ARCHIVE_WAIT = 300


def conf_lines(spec: BackupSpec, secret: Callable[[str], str] = box_secret, queue_mb: int = 1024) -> list[str]:
    """pgbackrest.conf, line by line; ``secret(name)`` renders each secret. WAL is archived asynchronously and at
    most ``queue_mb`` of it waits: beyond that pgBackRest drops the queue (PostgreSQL keeps running, the PITR chain
    breaks there and a new full backup is needed; ``status`` says when)."""
    lines = ["# Managed by postgressor: edit postgressor.toml [backup] instead.", "[global]",
             "archive-async=y", f"spool-path={PGBACKREST_SPOOL}", f"archive-push-queue-max={queue_mb}MB"]  # fmt: skip
    if spec.s3_endpoint:
        lines += [
            "repo1-type=s3",
            f"repo1-path={spec.s3_path}",
            f"repo1-s3-endpoint={spec.s3_endpoint}",
            f"repo1-s3-bucket={spec.s3_bucket}",
            f"repo1-s3-region={spec.s3_region}",
            f"repo1-s3-uri-style={spec.s3_uri_style}",
            f"repo1-s3-key={secret(S3_KEY_SECRET)}",
            f"repo1-s3-key-secret={secret(S3_KEY_SECRET_SECRET)}",
        ]
        if spec.s3_port != 443:
            lines.append(f"repo1-storage-port={spec.s3_port}")
        if not spec.s3_verify_tls:
            lines.append("repo1-storage-verify-tls=n")
    else:
        lines.append(f"repo1-path={PGBACKREST_LOCAL_REPO}")
    lines += [
        f"repo1-retention-full={spec.retention_full}",
        f"repo1-retention-diff={spec.retention_diff}",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={secret(CIPHER_SECRET)}",
        "compress-type=zst",
        "start-fast=y",
        "log-level-file=info",
        "",
        # The queue cap is applied when an asynchronous archive-push starts; one still retrying an unreachable S3
        # holds its lock, and with the default io-timeout (60 s a request, several requests a segment) the queue
        # grew to 27 segments past a 2-segment cap in 6 minutes (VM test). 10 s bounds that wait.
        "[global:archive-push]",
        f"io-timeout={ARCHIVE_PUSH_IO_TIMEOUT}",
        "",
        "[global:backup]",
        f"archive-timeout={ARCHIVE_WAIT}",
        "",
        "[global:check]",
        f"archive-timeout={ARCHIVE_WAIT}",
        "",
        f"[{PGBACKREST_STANZA}]",
        f"pg1-path={spec.data_dir}",
        "pg1-socket-path=/var/run/postgresql",
    ]
    return lines


FOREIGN_STANZA = "[028]"  # pgBackRest: "backup and archive info files exist but do not match the database"


def foreign_stanza(spec: BackupSpec) -> str:
    """The one line for a repository path that holds another database's backups (a stanza made by another box)."""
    if not spec.s3_endpoint:
        return (f"the local repository {PGBACKREST_LOCAL_REPO} holds another database's backups; move it away "
                "and run postgressor deploy again")  # fmt: skip
    return (f"backup.s3_path {spec.s3_path} already holds another database's backups: to restore them here, use "
            f"'postgressor up --restore-from {spec.s3_path}' with a new backup.s3_path; else point backup.s3_path "
            "at an empty path")  # fmt: skip


def stanza_command(spec: BackupSpec) -> str:
    """stanza-create; a path holding another database's stanza fails with ``foreign_stanza``'s line."""
    return (
        f'{{ out=$({PGBACKREST} stanza-create 2>&1) || {{ case "$out" in *{shlex.quote(FOREIGN_STANZA)}*) '
        f"echo {shlex.quote(foreign_stanza(spec))} >&2;; *) printf '%s\\n' \"$out\" >&2;; esac; exit 1; }}; }}"
    )


def archive_settings(spec: BackupSpec) -> dict[str, str]:
    return {
        "archive_mode": "on",
        "archive_command": f"pgbackrest --stanza={PGBACKREST_STANZA} archive-push %p",
        "archive_timeout": f"{spec.archive_timeout}s",
    }


@deploy("Backups")
def backup(spec: BoxSpec) -> None:
    backup = spec.backup
    assert backup is not None
    # The base transaction installs it (spec.packages); this only repairs a box where it was removed since.
    apt_index_update(name="Package index (for pgBackRest)", packages=["pgbackrest"])
    apt.packages(name="Install pgBackRest", packages=["pgbackrest"], no_recommends=True,
                 extra_install_args=APT_ARGS)  # fmt: skip
    if backup.cipher_pass:
        held_secret(name="Backup encryption passphrase (yours, 0600)", name_on_box=CIPHER_SECRET,
                    value=backup.cipher_pass, mismatch=CIPHER_MISMATCH)  # fmt: skip
    else:
        generated_secret(name="Backup encryption passphrase", name_on_box=CIPHER_SECRET)
    if backup.s3_endpoint:
        files.directory(name="Secrets directory", path=SECRETS_DIR, mode="700")
        files.put(name="S3 access key (0600)", src=StringIO(backup.s3_key), dest=secret_path(S3_KEY_SECRET),
                  mode="600")  # fmt: skip
        files.put(name="S3 secret key (0600)", src=StringIO(backup.s3_key_secret),
                  dest=secret_path(S3_KEY_SECRET_SECRET), mode="600")  # fmt: skip
    else:
        for name in (S3_KEY_SECRET, S3_KEY_SECRET_SECRET):
            files.file(name=f"No stale {name}", path=secret_path(name), present=False)
        files.directory(name="Local backup repository", path=PGBACKREST_LOCAL_REPO, user="postgres", group="postgres",
                        mode="750")  # fmt: skip
    files.directory(name="pgBackRest log directory", path="/var/log/pgbackrest", user="postgres",
                    group="postgres", mode="750")  # fmt: skip
    files.directory(name="pgBackRest config directory", path="/etc/pgbackrest", mode="755")
    files.directory(name="pgBackRest spool directory", path=PGBACKREST_SPOOL, user="postgres", group="postgres",
                    mode="750")  # fmt: skip
    queue_mb = archive_queue_mb(backup, host.get_fact(facts.MachineSize).disk_kb)
    composed_file(name="pgbackrest.conf (0600, postgres)", path=PGBACKREST_CONF,
                  lines=conf_lines(backup, queue_mb=queue_mb), owner="postgres")  # fmt: skip
    if backup.restore_from:
        restored(name=f"Restore from {backup.restore_from}", repo_path=backup.restore_from,
                 target=backup.restore_target, version=spec.pg_version, roles=[spec.owner, "electric"],
                 storage=ELECTRIC_STORAGE)  # fmt: skip
    applied(name=f"Stanza {PGBACKREST_STANZA}", marker="pgbackrest-stanza", digest=backup.repo_id,
            command=stanza_command(backup))  # fmt: skip

    # WAL archiving is configured by the PostgreSQL deploy, with the tuning (one restart).
    # A backup to restore from, checked end to end (check archives a WAL segment and waits for it).
    applied(name="First full backup", marker="pgbackrest-first-backup", digest=backup.repo_id,
            command=f"{PGBACKREST} check && {PGBACKREST} --type=full backup")  # fmt: skip

    unit = files.template(name="Backup service unit", src=template("pgbackrest-backup.service.j2"),
                          dest=f"/etc/systemd/system/{SERVICE}", mode="644", stanza=PGBACKREST_STANZA,
                          lock=BACKUP_LOCK)  # fmt: skip
    timers = [unit]
    for kind, schedule in (("full", backup.full_schedule), ("diff", backup.diff_schedule)):
        timers.append(files.template(name=f"{kind} backup timer", src=template("pgbackrest-backup.timer.j2"),
                                     dest=f"/etc/systemd/system/{TIMERS[kind]}", mode="644", kind=kind,
                                     unit=backup_unit(kind), schedule=schedule))  # fmt: skip
    reload = f"systemctl daemon-reload && systemctl try-restart {' '.join(TIMERS.values())}"
    paths = [f"/etc/systemd/system/{name}" for name in (SERVICE, *TIMERS.values())]
    server.shell(name="Load backup units", commands=[marked(reload, "backup-units")],
                 _if=lambda: any(op.did_change() for op in timers))  # fmt: skip
    reapply_if_stale(name="Backup units loaded", paths=paths, marker="backup-units", command=reload)
    for kind, timer in TIMERS.items():
        systemd.service(name=f"{kind} backup timer active", service=timer, running=True, enabled=True)
