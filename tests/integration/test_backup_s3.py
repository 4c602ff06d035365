"""pgBackRest against an S3-compatible server on loopback (moto), with the config postgressor generates.

A throwaway cluster archives WAL to moto through `archive-push`, takes an encrypted full backup, and is
restored to a noted point in time into a second data directory. pgBackRest 2.45 speaks S3 over TLS only
(a plain-HTTP endpoint never answers), so moto runs with its own self-signed certificate and the repository
is configured with `s3_verify_tls = false`, `s3_uri_style = "path"` and the moto port.

moto checks every request's signature against the IAM key it issued (tests/s3_standin.py says how).

pgbackrest.conf is composed exactly as the deploy composes it on the box (`compose_command`, the
`composed_file` operation's shell command, with `$(cat secret-file)` expanded by the shell), only with the
secrets directory pointed at a temporary one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from pgcluster import bindir, free_port

from postgressor.box.deploys.backup import conf_lines
from postgressor.box.layout import (
    CIPHER_SECRET,
    PGBACKREST_STANZA,
    S3_KEY_SECRET,
    S3_KEY_SECRET_SECRET,
    SECRETS_DIR,
    WAL_DROPPED_MARK,
    WAL_MARK,
)
from postgressor.box.operations import compose_command
from postgressor.box.spec import BackupSpec, Distro, box_spec
from postgressor.checks.backups import info_problem, parse_info
from postgressor.config import load_settings
from postgressor.day2.backups import pg_time
from s3_standin import BUCKET, Moto, running_moto, s3

# A user-held passphrase shaped like `openssl rand -base64 48` output ('+' and '/'), plus the '=' of base64
# padding: pgBackRest reads it whole from the composed pgbackrest.conf line.
CIPHER = "u8+Yc/Qf0rT3kWz+9mN/aB4dE7gH1jL5pS8vX2yZ6cR0tU3wQ9eK1oI4nM7bV2x=="


def account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root needs a 'postgres' or 'nobody' account to own the test cluster", pytrace=False)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with running_moto(tmp_path_factory.mktemp("tls")) as server:
        yield server


@dataclass
class Rig:
    work: Path
    prefix: str  # the repository's path in the bucket, without the leading slash
    config: Path
    datadir: Path
    port: int
    run_as: dict[str, object]
    secrets: Path  # stands in for the box's secrets directory
    owner: str
    spec: BackupSpec

    def compose(self) -> None:
        """pgbackrest.conf as the deploy composes it on the box, from the files in ``secrets``."""
        lines = local_lines(self.spec, self.work, self.datadir, self.port)
        command = compose_command(str(self.config), lines, self.owner)
        command = command.replace(f"{SECRETS_DIR}/", f"{self.secrets}/")
        subprocess.run(["sh", "-c", command], check=True, cwd="/")

    def write_secret(self, name: str, value: str) -> None:
        path = self.secrets / name
        path.write_text(value)  # no newline: as files.put(StringIO(value)) writes it
        path.chmod(0o600)

    def pgbackrest(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["pgbackrest", f"--config={self.config}", f"--stanza={PGBACKREST_STANZA}", *args],
                              capture_output=True, text=True, errors="replace", cwd="/", timeout=600, **self.run_as)  # type: ignore[call-overload]  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"pgbackrest {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def pg_ctl(self, datadir: Path, *args: str) -> None:
        subprocess.run([str(bindir() / "pg_ctl"), "-D", str(datadir), "-l", str(datadir.parent / f"{datadir.name}.log"),
                        "-w", "-t", "120", *args], check=True, capture_output=True, cwd="/", **self.run_as)  # type: ignore[call-overload]  # fmt: skip

    def connect(self, port: int) -> psycopg.Connection:
        return psycopg.connect(host=str(self.work), port=port, dbname="postgres", user="postgres", autocommit=True)


def spec_for_moto(url: str, path: str = "/stack-test", key: str = "AKIAEX", key_secret: str = "s3cr3t") -> BackupSpec:
    port = int(url.rsplit(":", 1)[1])
    settings = load_settings(backup={
        "s3_endpoint": "127.0.0.1", "s3_region": "us-east-1", "s3_bucket": BUCKET, "s3_path": path,
        "s3_key": key, "s3_key_secret": key_secret, "s3_uri_style": "path", "s3_port": port,
        "s3_verify_tls": False, "cipher_pass": CIPHER,
    })  # fmt: skip
    spec = box_spec(settings, Distro("debian", 12, "bookworm")).backup
    assert spec is not None
    return spec


def local_lines(spec: BackupSpec, work: Path, datadir: Path, port: int) -> list[str]:
    """The deploy's config lines (secrets still `$(cat file)`), the stanza pointed at the throwaway cluster."""
    lines = conf_lines(spec, queue_mb=spec.archive_queue_max_mb or 1024)
    lines = [f"pg1-path={datadir}" if line.startswith("pg1-path=") else line for line in lines]
    lines = [f"pg1-socket-path={work}" if line.startswith("pg1-socket-path=") else line for line in lines]
    lines.append(f"pg1-port={port}")
    lines = [f"spool-path={work}/spool" if line.startswith("spool-path=") else line for line in lines]
    glob = lines.index("[global]") + 1
    lines[glob:glob] = [f"log-path={work}/log", f"lock-path={work}/lock"]
    return lines


@pytest.fixture
def rig(moto: Moto) -> Iterator[Rig]:
    if shutil.which("pgbackrest") is None:
        pytest.fail("pgbackrest is not installed: run scripts/setup (apt-get install pgbackrest)", pytrace=False)
    user = account()
    run_as: dict[str, object] = {}
    work = Path(tempfile.mkdtemp(prefix="postgressor-pgbr-"))
    if user is not None:
        run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    datadir, port = work / "data", free_port()
    config = work / "pgbackrest.conf"
    prefix = f"stack-{uuid.uuid4().hex[:8]}"
    for sub in ("log", "lock", "spool"):
        (work / sub).mkdir()
    if user is not None:
        for path in [work, *(work / s for s in ("log", "lock", "spool"))]:
            os.chown(path, user.pw_uid, user.pw_gid)
    secrets = work / "secrets"
    secrets.mkdir(mode=0o700)
    owner = user.pw_name if user is not None else pwd.getpwuid(os.geteuid()).pw_name
    spec = spec_for_moto(moto.url, f"/{prefix}", moto.key, moto.key_secret)
    box = Rig(work, prefix, config, datadir, port, run_as, secrets, owner, spec)
    # As on the box: the keys arrive as files (backup.py `files.put`), the passphrase is generated there.
    box.write_secret(S3_KEY_SECRET, moto.key)
    box.write_secret(S3_KEY_SECRET_SECRET, moto.key_secret)
    box.write_secret(CIPHER_SECRET, CIPHER)
    box.compose()
    subprocess.run([str(bindir() / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, cwd="/", **run_as)  # type: ignore[call-overload]  # fmt: skip
    (datadir / "postgresql.auto.conf").write_text(
        f"listen_addresses = ''\nport = {port}\nunix_socket_directories = '{work}'\nwal_level = replica\n"
        "archive_mode = on\n"
        f"archive_command = 'pgbackrest --config={config} --stanza={PGBACKREST_STANZA} archive-push %p'\n"
        "fsync = off\n"
    )
    started: list[Path] = []
    try:
        box.pg_ctl(datadir, "start")
        started.append(datadir)
        yield box
    finally:
        for path in [*started, work / "restored"]:
            if (path / "postmaster.pid").exists():
                subprocess.run([str(bindir() / "pg_ctl"), "-D", str(path), "-m", "immediate", "-w", "stop"],
                               capture_output=True, cwd="/", **run_as)  # type: ignore[call-overload]  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def test_generated_s3_config_has_the_repository_and_no_literal_secret() -> None:
    key, key_secret = "AKIAGENERATEDCONFIG0", "generated-config-secret-value"
    spec = spec_for_moto("https://127.0.0.1:9000", key=key, key_secret=key_secret)
    text = "\n".join(conf_lines(spec))
    assert "repo1-type=s3" in text and "repo1-s3-bucket=postgressor-backups" in text
    assert "repo1-s3-uri-style=path" in text and "repo1-storage-port=9000" in text
    assert "repo1-storage-verify-tls=n" in text and "repo1-cipher-type=aes-256-cbc" in text
    assert key not in text and key_secret not in text
    assert "repo1-s3-key=$(cat /etc/postgressor/secrets/pgbackrest_s3_key)" in text
    assert key not in repr(spec) and key_secret not in repr(spec)


def test_the_box_composes_the_keys_from_its_secret_files(rig: Rig, moto: Moto) -> None:
    command = compose_command(str(rig.config), conf_lines(spec_for_moto(moto.url, key=moto.key,
                                                                        key_secret=moto.key_secret)))  # fmt: skip
    assert moto.key not in command and moto.key_secret not in command and CIPHER not in command  # never in argv
    lines = rig.config.read_text().splitlines()
    assert f"repo1-s3-key={moto.key}" in lines and f"repo1-s3-key-secret={moto.key_secret}" in lines
    assert f"repo1-cipher-pass={CIPHER}" in lines
    assert rig.config.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_a_wrong_s3_key_is_refused(rig: Rig, moto: Moto, wrong: str) -> None:
    """The endpoint checks signatures: a wrong secret (or an unknown key id) gets 403, so no repository."""
    if wrong == "secret":
        rig.write_secret(S3_KEY_SECRET_SECRET, moto.key_secret[:-4] + "XXXX")
    else:
        rig.write_secret(S3_KEY_SECRET, "AKIANOSUCHKEY0000000")
    rig.compose()
    proc = rig.pgbackrest("stanza-create", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "failed with 403" in out, out  # pgBackRest's first request is a HEAD: no error body to name
    names = s3(moto).list_objects_v2(Bucket=BUCKET, Prefix=f"{rig.prefix}/").get("Contents", [])
    assert names == []


def test_archive_backup_and_point_in_time_restore_through_s3(rig: Rig, moto: Moto) -> None:
    rig.pgbackrest("stanza-create")
    rig.pgbackrest("check")
    with rig.connect(rig.port) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, batch text NOT NULL)")
        conn.execute("INSERT INTO items SELECT g, 'before-backup' FROM generate_series(1, 50) g")
    rig.pgbackrest("--type=full", "backup")
    with rig.connect(rig.port) as conn:
        conn.execute("INSERT INTO items SELECT g, 'before-target' FROM generate_series(51, 60) g")
        noted = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        time.sleep(0.05)
        conn.execute("INSERT INTO items SELECT g, 'after-target' FROM generate_series(61, 70) g")
    rig.pgbackrest("check")  # switches WAL and waits until it is archived in S3

    info = parse_info(rig.pgbackrest("--output=json", "info").stdout)
    assert info["status"]["code"] == 0 and info["cipher"] == "aes-256-cbc"
    assert [b["type"] for b in info["backups"]] == ["full"]
    assert info["archive"] and info["archive"]["max"] >= info["backups"][0]["wal_stop"]
    # The repository in the bucket is encrypted: its files are OpenSSL-salted ciphertext.
    objects = s3(moto).list_objects_v2(Bucket=BUCKET, Prefix=f"{rig.prefix}/")["Contents"]
    names = [o["Key"] for o in objects]
    assert any("/archive/main/" in n for n in names) and any("/backup/main/" in n for n in names)
    body = s3(moto).get_object(Bucket=BUCKET, Key=f"{rig.prefix}/backup/main/backup.info")["Body"].read()
    assert body.startswith(b"Salted__")

    restored = rig.work / "restored"
    restored.mkdir(mode=0o700)
    if rig.run_as:
        os.chown(restored, int(rig.run_as["user"]), int(rig.run_as["group"]))  # type: ignore[call-overload]
    rig.pgbackrest(f"--pg1-path={restored}", f"--set={info['backups'][0]['label']}", "--type=time",
                   f"--target={pg_time(noted)}", "--target-action=promote", "restore")  # fmt: skip
    port2 = free_port()
    with (restored / "postgresql.auto.conf").open("a") as fh:
        fh.write(f"port = {port2}\narchive_mode = off\n")  # keep the copy from archiving into the same stanza
    rig.pg_ctl(restored, "start")
    with rig.connect(port2) as conn:
        deadline = time.monotonic() + 120
        while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the restored cluster never finished recovery"
            time.sleep(0.5)
        rows = dict(conn.execute("SELECT batch, count(*) FROM items GROUP BY batch").fetchall())
    assert rows == {"before-backup": 50, "before-target": 10}
    with rig.connect(rig.port) as conn:  # the original still has everything
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 70  # type: ignore[index]


def test_wrong_passphrase_cannot_read_the_repository(rig: Rig) -> None:
    rig.pgbackrest("stanza-create")
    rig.write_secret(CIPHER_SECRET, "another-passphrase")
    rig.compose()
    proc = rig.pgbackrest("--output=json", "info", check=False)
    info = parse_info(proc.stdout)
    assert info["status"]["code"] != 0
    assert info_problem(info).startswith("backup repository: ")


def ready_segments(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()
    return int(row[0])  # type: ignore[index]


def test_an_unreachable_repository_drops_the_archive_queue_at_its_cap(rig: Rig, moto: Moto) -> None:
    """Asynchronous archive-push with archive-push-queue-max (the deploy's pgbackrest.conf): when S3 refuses every
    push, WAL piles up in pg_wal only to the cap; then pgBackRest drops the queue and says so in PostgreSQL's log
    (the line `status` looks for), and PostgreSQL keeps running."""
    rig.pgbackrest("stanza-create")
    rig.pgbackrest("check")
    rig.spec = replace(rig.spec, archive_queue_max_mb=16)  # one WAL segment's worth, so the test stays small
    rig.write_secret(S3_KEY_SECRET_SECRET, moto.key_secret[:-4] + "XXXX")  # a rotated key: every push is a 403
    rig.compose()
    assert "archive-push-queue-max=16MB" in rig.config.read_text()
    log = rig.work / "data.log"
    with rig.connect(rig.port) as conn:
        conn.execute("CREATE TABLE filler (g int, pad text)")
        deadline = time.monotonic() + 240
        while WAL_DROPPED_MARK not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "pgBackRest never dropped the queue:\n" + log.read_text()[-2000:]
            conn.execute("INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
            conn.execute("SELECT pg_switch_wal()")
            time.sleep(1)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # still serving
        # Dropped, not piled up: the queue is emptied, so few segments wait (each new one counts again).
        deadline = time.monotonic() + 60
        while ready_segments(conn) > 2:
            assert time.monotonic() < deadline, f"{ready_segments(conn)} segments still wait to be archived"
            time.sleep(1)
        # S3 answers again. `backup check` on an idle box: its logical message gives pgbackrest check a segment
        # to switch and wait for; without WAL since the last switch it would wait for one that was dropped.
        rig.write_secret(S3_KEY_SECRET_SECRET, moto.key_secret)
        rig.compose()
        deadline = time.monotonic() + 120
        while ready_segments(conn) > 0:
            assert time.monotonic() < deadline, f"{ready_segments(conn)} segments still wait to be archived"
            time.sleep(1)
        conn.execute(WAL_MARK)
    rig.pgbackrest("check")
