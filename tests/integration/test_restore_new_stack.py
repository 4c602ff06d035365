"""`up --restore-from`: a new stack restored from another stack's path in the same S3 repository (moto over TLS).

Cluster A (the old box) archives and backs up into OLD; cluster B (the new box, freshly initdb'd, so another
system id) runs the very shell the deploy generates: the `restored` operation's command (fed the real
`RepoInfo` fact read through B's pgbackrest.conf) and the backup deploy's stanza step. Only what is the box's
and not the test's is swapped: systemctl for pg_ctl, the psql connection, the secrets and markers directories.
As on the box, B's archive settings are not in its data directory (Debian keeps them in /etc), so the restored
postgresql.auto.conf cannot point B at A's repository path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgcluster import bindir, free_port
from test_backup_s3 import CIPHER, account, local_lines, moto, spec_for_moto

from postgressor.box import facts, operations
from postgressor.box.deploys.backup import foreign_stanza, stanza_command
from postgressor.box.layout import (
    CIPHER_SECRET,
    MARKERS_DIR,
    PGBACKREST,
    RESTORED_MARKER,
    S3_KEY_SECRET,
    S3_KEY_SECRET_SECRET,
    SECRETS_DIR,
    SYNC_UNITS,
    postgres_unit,
)
from postgressor.box.operations import compose_command, digest, read_restored_marker
from postgressor.box.spec import BackupSpec
from postgressor.checks.backups import parse_info
from s3_standin import BUCKET, Moto, s3

__all__ = ["moto"]  # the module-scoped moto fixture, shared with test_backup_s3

VERSION = int(bindir().parent.name) if bindir().parent.name.isdigit() else 15
OLD_APP_PW, NEW_APP_PW, NEW_ELECTRIC_PW = "old-app-pw", "new-app-pw-from-the-new-box", "new-electric-pw"


@dataclass
class Box:
    """A throwaway cluster with the deploy's pgbackrest.conf, standing in for one stack's box."""

    work: Path
    port: int
    owner: str
    spec: BackupSpec
    archive: bool = False  # PostgreSQL archives to this box's pgbackrest.conf path (the backup deploy's drop-in)
    settings: str = ""  # more server settings on its command line (a smaller box's limits)

    @property
    def datadir(self) -> Path:
        return self.work / "data"

    @property
    def config(self) -> Path:
        return self.work / "pgbackrest.conf"

    @property
    def secrets(self) -> Path:
        return self.work / "secrets"

    @property
    def ctl(self) -> str:
        return f"runuser -u {self.owner} -- {bindir()}/pg_ctl -D {self.datadir} -l {self.work}/pg.log -w -t 120"

    def on_box(self, command: str) -> str:
        """The box's shell ``command`` with what belongs to the test swapped in."""
        ctl = self.ctl
        settings = f"-c port={self.port} -c listen_addresses='' -c unix_socket_directories={self.work} {self.settings}"
        if self.archive:
            push = f"pgbackrest --config={self.config} --stanza=main archive-push %p"
            settings += f" -c archive_mode=on -c archive_command='{push}'"
        options = shlex.quote(settings)
        unit = postgres_unit(VERSION)
        return (command
                .replace(PGBACKREST, f"cd / && runuser -u {self.owner} -- pgbackrest --config={self.config} "
                                     "--stanza=main")
                .replace("runuser -u postgres -- psql", f"runuser -u {self.owner} -- psql -h {self.work} "
                                                        f"-p {self.port} -U postgres")
                .replace(f"systemctl stop {' '.join(SYNC_UNITS)} 2>/dev/null || true", "true")
                .replace(f"systemctl stop {unit}", f"{ctl} -m fast stop")
                .replace(f"systemctl start {unit}", f"{ctl} -o {options} start")
                .replace(f"systemctl is-active -q {unit}", f"{ctl} status >/dev/null")
                .replace(f"{SECRETS_DIR}/", f"{self.secrets}/")
                .replace(MARKERS_DIR, f"{self.work}/applied"))  # fmt: skip

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["sh", "-c", self.on_box(command)], capture_output=True, text=True, cwd="/",
                              timeout=900, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"failed:\n{done.stdout}{done.stderr}")
        return done

    def compose(self, spec: BackupSpec) -> None:
        self.spec = spec
        lines = local_lines(spec, self.work, self.datadir, self.port)
        self.sh(compose_command(str(self.config), lines, self.owner))

    def pgbackrest(self, *args: str) -> str:
        return self.sh(f"{PGBACKREST} {' '.join(args)} 2>&1").stdout

    def start(self, archive: bool) -> None:
        """Start PostgreSQL, its settings on its command line (on the box they are in /etc, not in the data
        directory); ``archive`` as after the backup deploy's drop-in."""
        self.archive = archive
        self.sh(f"systemctl start {postgres_unit(VERSION)}")

    def stop(self) -> None:
        self.sh(f"systemctl stop {postgres_unit(VERSION)}")

    def connect(self, user: str = "postgres", password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(host=str(self.work), port=self.port, dbname="postgres", user=user, password=password,
                               autocommit=True)  # fmt: skip


@contextlib.contextmanager
def new_box(moto: Moto, path: str, passwords: dict[str, str]) -> Iterator[Box]:
    user = account()
    owner = user.pw_name if user is not None else os.environ.get("USER", "postgres")
    work = Path(tempfile.mkdtemp(prefix="postgressor-restore-"))
    box = Box(work, free_port(), owner, spec_for_moto(moto.url, path, moto.key, moto.key_secret))
    for sub in ("log", "lock", "spool", "electric"):
        (work / sub).mkdir()
    box.secrets.mkdir(mode=0o700)
    for name, value in {S3_KEY_SECRET: moto.key, S3_KEY_SECRET_SECRET: moto.key_secret, CIPHER_SECRET: CIPHER,
                        **{f"{role}.password": pw for role, pw in passwords.items()}}.items():  # fmt: skip
        (box.secrets / name).write_text(value)
        (box.secrets / name).chmod(0o600)
    if user is not None:
        for path_ in [work, *(work / s for s in ("log", "lock", "spool"))]:
            os.chown(path_, user.pw_uid, user.pw_gid)
    box.compose(box.spec)
    subprocess.run(["runuser", "-u", owner, "--", str(bindir() / "initdb"), "-D", str(box.datadir), "-U",
                    "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"], check=True,
                   capture_output=True, cwd="/")  # fmt: skip
    (box.datadir / "postgresql.auto.conf").write_text("wal_level = logical\nfsync = off\n")
    try:
        yield box
    finally:
        subprocess.run(["sh", "-c", f"{box.ctl} -m immediate stop"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def listing(moto: Moto, prefix: str) -> dict[str, Any]:
    objects = s3(moto).list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix.strip('/')}/").get("Contents", [])
    return {o["Key"]: (o["ETag"], o["Size"]) for o in objects}


def system_id(box: Box) -> int:
    with box.connect() as conn:
        return int(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]


def generated_restore(box: Box, old: str, target: str = "") -> str:
    """The `restored` operation's one command on ``box``, its facts read there (as pyinfra would)."""
    info = facts.RepoInfo()
    text = info.process(box.sh(info.command(repo_path=old)).stdout.splitlines())

    class Reading:
        noops: list[str] = []

        def get_fact(self, cls: type, **kwargs: Any) -> str:
            return "" if cls is facts.FileText else text

        def noop(self, description: str) -> None:
            self.noops.append(description)

    saved, operations.host = operations.host, Reading()  # type: ignore[assignment]
    try:
        storage = str(box.work / "electric")
        commands = list(operations.restored._inner(repo_path=old, target=target, version=VERSION,
                                                   roles=["app", "electric"], storage=storage))  # fmt: skip
    finally:
        operations.host = saved
    assert len(commands) == 1, commands
    return str(commands[0])


@pytest.fixture
def stacks(moto: Moto) -> Iterator[tuple[Box, Box, str, str]]:
    if shutil.which("pgbackrest") is None:
        pytest.fail("pgbackrest is not installed: run scripts/setup (apt-get install pgbackrest)", pytrace=False)
    tag = os.urandom(4).hex()
    old, new = f"/old-{tag}", f"/new-{tag}"
    with new_box(moto, old, {}) as a, new_box(moto, new, {"app": NEW_APP_PW, "electric": NEW_ELECTRIC_PW}) as b:
        yield a, b, old, new


def backed_up_old_box(a: Box, before_backup: int) -> None:
    """The old box archiving into its path: the roles the restore gives new passwords (app's the old one), the
    table ``items`` with ``before_backup`` rows, and a full backup."""
    a.start(archive=True)
    a.pgbackrest("stanza-create")
    with a.connect() as conn:
        conn.execute(f"CREATE ROLE app LOGIN PASSWORD '{OLD_APP_PW}'")
        conn.execute("CREATE ROLE electric LOGIN REPLICATION PASSWORD 'old-electric-pw'")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, batch text NOT NULL)")
        conn.execute(f"INSERT INTO items SELECT g, 'before-backup' FROM generate_series(1, {before_backup}) g")
    a.pgbackrest("--type=full", "backup")


def test_a_new_stack_restores_another_stacks_path_and_archives_to_its_own(stacks: tuple[Box, Box, str, str],
                                                                        moto: Moto) -> None:  # fmt: skip
    a, b, old, new = stacks
    # The old box: roles with their passwords, rows, a full backup, then rows only the archived WAL holds.
    with (a.datadir / "pg_hba.conf").open("r+") as fh:  # password login for app, so the test can tell passwords
        rest = fh.read()
        fh.seek(0)
        fh.write("local all app scram-sha-256\n" + rest)
    backed_up_old_box(a, before_backup=50)
    with a.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'after-backup' FROM generate_series(51, 60) g")
    a.pgbackrest("check")  # switches WAL and waits until it is in S3: the old box's last archived segment
    before = listing(moto, old)
    assert any("/archive/main/" in key for key in before) and any("/backup/main/" in key for key in before)

    # The new box, fresh and smaller (fewer connections than the old server had, which hot standby would refuse):
    # up's stanza step against the old path is refused with one line naming the way out.
    b.settings = "-c max_connections=20"
    b.start(archive=False)
    assert system_id(b) != system_id(a)
    b.compose(spec_for_moto(moto.url, old, moto.key, moto.key_secret))
    refused = b.sh(stanza_command(b.spec), check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == foreign_stanza(b.spec), refused.stderr
    assert "--restore-from" in refused.stderr
    b.compose(spec_for_moto(moto.url, new, moto.key, moto.key_secret))
    (b.work / "electric" / "shape-log").write_text("a shape of the fresh box")

    # The restore, exactly as the operation generates it.
    script = generated_restore(b, old)
    assert moto.key not in script and moto.key_secret not in script and CIPHER not in script
    assert NEW_APP_PW not in script
    b.sh(script)
    with b.connect() as conn:
        rows = dict(conn.execute("SELECT batch, count(*) FROM items GROUP BY batch").fetchall())
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert rows == {"before-backup": 50, "after-backup": 10}  # the rows after the backup came from archived WAL
    assert system_id(b) == system_id(a)
    # pgBackRest 2.45 wrote the old path into restore_command (the WAL after the backup came from there) and
    # hot_standby off: both are gone once the new box is promoted.
    log = (b.work / "pg.log").read_text()
    assert f"--repo1-path={old}" in log or "restored log file" in log, log[-2000:]
    auto = (b.datadir / "postgresql.auto.conf").read_text()
    assert not [line for line in auto.splitlines() if line.startswith(("restore_command", "hot_standby"))], auto
    with b.connect() as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("20",)
    marker = read_restored_marker((b.work / "applied" / RESTORED_MARKER.rsplit("/", 1)[1]).read_text())
    assert marker.digest == digest(old, "") and marker.label.endswith("F")
    assert (marker.shortfall, marker.checked) == ("", True)  # recovery replayed the archive to its newest segment
    assert list((b.work / "electric").iterdir()) == []
    # The roles log in with the new box's passwords, not the old server's.
    with b.connect("app", NEW_APP_PW) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        b.connect("app", OLD_APP_PW).close()

    # Then the backup deploy goes on: archiving into the new path, whose stanza now matches the restored database.
    b.stop()
    b.start(archive=True)
    b.sh(stanza_command(b.spec))
    b.pgbackrest("check")
    b.pgbackrest("--type=full", "backup")
    mine = parse_info(b.pgbackrest("--output=json", "info"))
    assert mine["status"]["code"] == 0 and [x["type"] for x in mine["backups"]] == ["full"]
    assert listing(moto, new)
    assert listing(moto, old) == before  # nothing written into the old stack's history

    # A third box restores the new path, whose history is on timeline 2 (B was promoted): recovery follows it to
    # the end, and the check claims no shortfall across the timelines.
    with b.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'on-timeline-2' FROM generate_series(61, 65) g")
    b.pgbackrest("check")
    with new_box(moto, f"/third-{os.urandom(4).hex()}", {"app": NEW_APP_PW, "electric": NEW_ELECTRIC_PW}) as c:
        c.start(archive=False)
        c.sh(generated_restore(c, new))
        with c.connect() as conn:
            assert conn.execute("SELECT count(*) FROM items WHERE batch = 'on-timeline-2'").fetchone() == (5,)
            history = conn.execute("SELECT name FROM pg_ls_waldir() WHERE name LIKE '%.history' ORDER BY 1"
                                   ).fetchall()  # fmt: skip
        assert ("00000003.history",) in history, history
        third = read_restored_marker((c.work / "applied" / RESTORED_MARKER.rsplit("/", 1)[1]).read_text())
        assert (third.shortfall, third.checked) == ("", True), third


def test_a_path_without_backups_fails_before_the_cluster_is_stopped(stacks: tuple[Box, Box, str, str],
                                                                     moto: Moto) -> None:  # fmt: skip
    _, b, old, _ = stacks
    b.start(archive=False)
    script = generated_restore(b, old)  # nothing was ever written there
    done = b.sh(script, check=False)
    assert done.returncode == 1 and done.stderr.startswith(f"cannot restore from {old}: "), done.stderr
    with b.connect() as conn:  # still running, untouched
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert json.dumps(listing(moto, old)) == "{}"


def test_a_gap_in_the_archive_stops_recovery_and_the_restore_says_so(stacks: tuple[Box, Box, str, str],
                                                                      moto: Moto) -> None:  # fmt: skip
    """A segment missing from the old path (as when archive-push-queue-max dropped it during an outage): recovery
    ends before it and promotes, PostgreSQL and pgBackRest report success, and the marker's shortfall names the
    segment, the newest one the archive holds, and the last commit replayed."""
    a, b, old, _ = stacks
    backed_up_old_box(a, before_backup=0)
    with a.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'before-gap' FROM generate_series(1, 10) g")
    a.pgbackrest("check")  # closes the segment holding them: archived
    with a.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'in-gap' FROM generate_series(11, 20) g")
        gap = str(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])  # type: ignore[index]
    a.pgbackrest("check")
    with a.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'after-gap' FROM generate_series(21, 30) g")
    a.pgbackrest("check")
    newest = parse_info(a.pgbackrest("--output=json", "info"))["archive"]["max"]
    assert newest > gap, (newest, gap)
    keys = [key for key in listing(moto, old) if f"/{gap}-" in key]
    assert len(keys) == 1, keys
    s3(moto).delete_object(Bucket=BUCKET, Key=keys[0])

    b.start(archive=False)
    b.sh(generated_restore(b, old))  # the restore itself succeeds, as PostgreSQL and pgBackRest see it
    with b.connect() as conn:
        rows = dict(conn.execute("SELECT batch, count(*) FROM items GROUP BY batch").fetchall())
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert rows == {"before-gap": 10}, rows
    marker = read_restored_marker((b.work / "applied" / RESTORED_MARKER.rsplit("/", 1)[1]).read_text())
    assert marker.label.endswith("F")
    assert marker.shortfall.startswith("the restore stopped short of the archive: recovery ended at "), marker
    assert f"segment {gap} could not be read" in marker.shortfall, marker.shortfall
    assert f"the repository holds WAL up to {newest}:" in marker.shortfall, marker.shortfall
    assert "on timeline 1, after its last replayed commit of 20" in marker.shortfall, marker.shortfall
