"""destroy's final-backup check, run for real: a throwaway cluster archives to moto S3 with the deploy's
pgbackrest.conf (test_backup_s3's rig), and ``final_backup`` runs its box commands through a local shell.

The cluster's WAL starts at 0000000100000000000000FE (pg_resetwal -l). Five WAL switches during the final backup
carry its range across the wrap, into 0000000100000001xxxxxxxx. Then one segment inside the range is copied under a
second name, and then deleted. pgBackRest 2.45's verify still says `status: ok` for the gap; destroy's check
names both.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from pgcluster import bindir
from test_backup_s3 import Rig, moto, rig

from postgressor.box.layout import BACKUP_LOCK, PGBACKREST, PGBACKREST_CONF, PGBACKREST_STANZA
from postgressor.checks import backups as health
from postgressor.checks.restorable import wal_segments
from postgressor.day2 import destroy as safe_destroy
from postgressor.errors import PostgressorError
from postgressor.remote.ssh import CommandResult
from postgressor.state import HostRecord
from s3_standin import BUCKET, Moto, s3

__all__ = ["moto", "rig"]  # the fixtures of test_backup_s3

HOST = HostRecord("203.0.113.7", 22, "root", "k", "ssh-ed25519 AAAA")  # never reached: commands run locally
BEFORE_WRAP = "0000000100000000000000FE"
REDO_SEGMENT = "SELECT redo_wal_file FROM pg_control_checkpoint()"


def on_rig(rig: Rig) -> Callable[..., CommandResult]:
    """The SSH runner: the box's command, with the rig's pgbackrest.conf for the box's and psql reaching the rig's
    cluster, run by a local shell."""
    user = f"runuser -u {rig.owner} -- " if os.geteuid() == 0 else ""
    psql = f"{user}psql -h {rig.work} -p {rig.port} -U postgres"

    def run(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
        local = (command.replace(PGBACKREST, f"cd / && {user}pgbackrest --config={rig.config} "
                                             f"--stanza={PGBACKREST_STANZA}")
                 # a backup under the box's backup lock (pgbackrest_backup): the lock in the rig's directory
                 .replace("runuser -u postgres -- flock", f"{user}flock")
                 .replace(f"{BACKUP_LOCK} pgbackrest --stanza=", f"{rig.work}/backup.lock pgbackrest "
                                                                 f"--config={rig.config} --stanza=")
                 .replace(PGBACKREST_CONF, str(rig.config))
                 .replace("runuser -u postgres -- psql", psql))  # fmt: skip
        done = subprocess.run(["sh", "-c", local], capture_output=True, text=True, cwd="/", timeout=timeout)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    return run


def switch_wal_during_the_backup(rig: Rig, switches: int = 5) -> None:
    """Once the backup's start checkpoint is done (pg_backup_start switches to a new segment, then checkpoints:
    the redo point leaves BEFORE_WRAP), move PostgreSQL to the next WAL segment ``switches`` times."""
    with rig.connect(rig.port) as conn:
        deadline = time.monotonic() + 120
        while conn.execute(REDO_SEGMENT).fetchone()[0] == BEFORE_WRAP:  # type: ignore[index]
            assert time.monotonic() < deadline, "the backup's start checkpoint never came"
            time.sleep(0.02)
        for _ in range(switches):
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("SELECT pg_switch_wal()")


def test_the_final_backup_check_names_a_duplicate_and_a_gap_verify_misses(
    rig: Rig, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.pg_ctl(rig.datadir, "stop")
    subprocess.run([str(bindir() / "pg_resetwal"), "-l", BEFORE_WRAP, str(rig.datadir)], check=True,
                   capture_output=True, cwd="/", **rig.run_as)  # type: ignore[call-overload]  # fmt: skip
    rig.pg_ctl(rig.datadir, "start")
    rig.pgbackrest("stanza-create")
    with rig.connect(rig.port) as conn:
        conn.execute("CREATE TABLE t (i int)")
        assert conn.execute(REDO_SEGMENT).fetchone()[0] == BEFORE_WRAP  # type: ignore[index]
    monkeypatch.setattr(health, "run", on_rig(rig))

    with ThreadPoolExecutor(1) as pool:
        switching = pool.submit(switch_wal_during_the_backup, rig)
        final = safe_destroy.final_backup(HOST)
        switching.result(timeout=60)
    # pg_backup_start switches away from ...FE first; the range then runs across the wrap
    assert final["wal_start"] == "0000000100000000000000FF", final
    assert final["wal_stop"].startswith("0000000100000001") and final["wal_stop"] > "000000010000000100000000"
    assert final["wal_segments"] == len(wal_segments(final["wal_start"], final["wal_stop"])) >= 3
    assert final["repository_problems"] == [] and final["path"] == f"/{rig.prefix}"
    label, archive_id = final["label"], final["archive_id"]
    monkeypatch.setattr(safe_destroy, "backup_now", lambda host, kind, log: {"backup": {"label": label}})  # re-check

    client = s3(moto)
    folder = f"{rig.prefix}/archive/{PGBACKREST_STANZA}/{archive_id}/0000000100000001/"
    inside = "000000010000000100000000"  # the first segment after the wrap, inside the range
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=folder)["Contents"]]
    key = next(k for k in keys if k.removeprefix(folder).startswith(f"{inside}-"))
    name = key.removeprefix(folder)
    twin = folder + f"{inside}-{'0' * 40}" + name[len(inside) + 41 :]  # the same segment, another checksum
    client.copy_object(Bucket=BUCKET, CopySource={"Bucket": BUCKET, "Key": key}, Key=twin)
    with pytest.raises(PostgressorError) as caught:
        safe_destroy.final_backup(HOST)
    twice = f"the final backup {label} did not verify: WAL segment {inside} is in archive/main/{archive_id} 2 times"
    assert twice in str(caught.value) and str(caught.value).endswith("nothing was destroyed")

    client.delete_object(Bucket=BUCKET, Key=twin)
    client.delete_object(Bucket=BUCKET, Key=key)
    verify = rig.pgbackrest("--output=text", "--verbose", "verify").stdout
    assert "\nstatus: ok\n" in verify and f"backup: {label}, status: valid" in verify  # verify alone misses it
    with pytest.raises(PostgressorError) as caught:
        safe_destroy.final_backup(HOST)
    gap = (f"the final backup {label} did not verify: WAL segment {inside} is not in archive/main/{archive_id}: "
           f"a gap in the range {final['wal_start']} to {final['wal_stop']} it needs")  # fmt: skip
    assert gap in str(caught.value)
