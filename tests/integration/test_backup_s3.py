"""pgBackRest against an S3-compatible server on loopback (moto), with the config postgressor generates.

A throwaway cluster archives WAL to moto through `archive-push`, takes an encrypted full backup, and is
restored to a noted point in time into a second data directory. pgBackRest 2.45 speaks S3 over TLS only
(a plain-HTTP endpoint never answers), so moto runs with its own self-signed certificate and the repository
is configured with `s3_verify_tls = false`, `s3_uri_style = "path"` and the moto port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pgcluster import bindir, free_port

from postgressor.box.deploys.backup import conf_lines
from postgressor.box.layout import CIPHER_SECRET, PGBACKREST_STANZA, S3_KEY_SECRET, S3_KEY_SECRET_SECRET
from postgressor.box.spec import BackupSpec, Distro, box_spec
from postgressor.checks.backups import info_problem, parse_info
from postgressor.config import load_settings
from postgressor.day2.backups import pg_time

boto3 = pytest.importorskip("boto3", reason="moto[server] (dev extra) brings boto3")

BUCKET = "postgressor-backups"
KEY, KEY_SECRET = "MOTOACCESSKEY", "moto-secret-key-0123456789"
CIPHER = "test-cipher-passphrase-0123456789abcdef"


def account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root needs a 'postgres' or 'nobody' account to own the test cluster", pytrace=False)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (the test turns TLS verification off anyway)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


class TlsProxy:
    """TLS in front of moto's plain-HTTP server. Werkzeug's own TLS closes connections without close_notify,
    which OpenSSL 3 (and so pgBackRest) reports as 'unexpected eof'; asyncio's TLS shuts down cleanly."""

    def __init__(self, upstream: int, cert: Path, key: Path) -> None:
        self.upstream, self.port = upstream, free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=self.context)
        )
        self.ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def __enter__(self) -> TlsProxy:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    try:
        with TlsProxy(port, cert, key) as proxy:
            url = f"https://127.0.0.1:{proxy.port}"
            client = s3(url)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.create_bucket(Bucket=BUCKET)
                    break
                except Exception:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3(url: str):  # type: ignore[no-untyped-def]
    import urllib3

    urllib3.disable_warnings()
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=KEY_SECRET,
                        region_name="us-east-1", verify=False)  # fmt: skip


@dataclass
class Rig:
    work: Path
    prefix: str  # the repository's path in the bucket, without the leading slash
    config: Path
    datadir: Path
    port: int
    run_as: dict[str, object]

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


def spec_for_moto(url: str, path: str = "/stack-test") -> BackupSpec:
    port = int(url.rsplit(":", 1)[1])
    settings = load_settings(backup={
        "s3_endpoint": "127.0.0.1", "s3_region": "us-east-1", "s3_bucket": BUCKET, "s3_path": path,
        "s3_key": KEY, "s3_key_secret": KEY_SECRET, "s3_uri_style": "path", "s3_port": port,
        "s3_verify_tls": False,
    })  # fmt: skip
    spec = box_spec(settings, Distro("debian", 12, "bookworm")).backup
    assert spec is not None
    return spec


def local_conf(spec: BackupSpec, work: Path, datadir: Path, port: int) -> str:
    """The generated config with the secrets filled in and the stanza pointed at the throwaway cluster."""
    values = {CIPHER_SECRET: CIPHER, S3_KEY_SECRET: KEY, S3_KEY_SECRET_SECRET: KEY_SECRET}
    lines = conf_lines(spec, secret=lambda name: values[name])
    lines = [f"pg1-path={datadir}" if line.startswith("pg1-path=") else line for line in lines]
    lines = [f"pg1-socket-path={work}" if line.startswith("pg1-socket-path=") else line for line in lines]
    lines.append(f"pg1-port={port}")
    glob = lines.index("[global]") + 1
    lines[glob:glob] = [f"log-path={work}/log", f"lock-path={work}/lock", f"spool-path={work}/spool"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def rig(moto_url: str) -> Iterator[Rig]:
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
    config.write_text(local_conf(spec_for_moto(moto_url, f"/{prefix}"), work, datadir, port))
    config.chmod(0o600)
    for sub in ("log", "lock", "spool"):
        (work / sub).mkdir()
    if user is not None:
        for path in [work, config, *(work / s for s in ("log", "lock", "spool"))]:
            os.chown(path, user.pw_uid, user.pw_gid)
    box = Rig(work, prefix, config, datadir, port, run_as)
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
    spec = spec_for_moto("https://127.0.0.1:9000")
    text = "\n".join(conf_lines(spec))
    assert "repo1-type=s3" in text and "repo1-s3-bucket=postgressor-backups" in text
    assert "repo1-s3-uri-style=path" in text and "repo1-storage-port=9000" in text
    assert "repo1-storage-verify-tls=n" in text and "repo1-cipher-type=aes-256-cbc" in text
    assert KEY not in text and KEY_SECRET not in text
    assert "repo1-s3-key=$(cat /etc/postgressor/secrets/pgbackrest_s3_key)" in text
    assert KEY not in repr(spec) and KEY_SECRET not in repr(spec)


def test_archive_backup_and_point_in_time_restore_through_s3(rig: Rig, moto_url: str) -> None:
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
    objects = s3(moto_url).list_objects_v2(Bucket=BUCKET, Prefix=f"{rig.prefix}/")["Contents"]
    names = [o["Key"] for o in objects]
    assert any("/archive/main/" in n for n in names) and any("/backup/main/" in n for n in names)
    body = s3(moto_url).get_object(Bucket=BUCKET, Key=f"{rig.prefix}/backup/main/backup.info")["Body"].read()
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
    rig.config.write_text(rig.config.read_text().replace(CIPHER, "another-passphrase"))
    proc = rig.pgbackrest("--output=json", "info", check=False)
    info = parse_info(proc.stdout)
    assert info["status"]["code"] != 0
    assert info_problem(info).startswith("backup repository: ")
