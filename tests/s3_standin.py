"""An S3 endpoint for pgBackRest on loopback: moto's server with IAM authentication, behind TLS.

pgBackRest 2.45 speaks S3 over TLS only (a plain-HTTP endpoint never answers), so moto runs behind a TLS proxy
with its own self-signed certificate; the repository is configured with `s3_verify_tls = false`,
`s3_uri_style = "path"` and the proxy's port.

moto checks credentials here. Its server authenticates every request once more than
INITIAL_NO_AUTH_ACTION_COUNT requests have been served (moto 5.x `moto/core/authorization.py`
`ActionAuthenticatorMixin`): it looks the access key up in its IAM backend (unknown key: 403
InvalidAccessKeyId), recomputes the AWS SigV4 signature with that key's secret through botocore's
`S3SigV4Auth` over the signed headers, path, query and `x-amz-content-sha256` (mismatch: 403
SignatureDoesNotMatch; `moto/iam/access_control.py` `IAMRequestBase.check_signature`), then evaluates
the user's IAM policies. The first three unauthenticated calls create the IAM user, its policy and the
access key; everything after is signed with that key. It does not check the request date's skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postgressor.migrations.scratch import free_port

try:
    import boto3
except ImportError:  # a missing dev dependency is a failure, never a skip
    pytest.fail("boto3 is missing: install the dev extra (moto[server] brings boto3)", pytrace=False)

BUCKET = "postgressor-backups"
# The credentials the first (unauthenticated) calls use to create the IAM user and its key; any value works
# for those, and moto refuses them afterwards (no IAM user holds this key).
BOOTSTRAP_KEY, BOOTSTRAP_SECRET = "AKIABOOTSTRAPONLY000", "bootstrap-secret-not-a-user-key"
NO_AUTH_CALLS = 3  # CreateUser, PutUserPolicy, CreateAccessKey
S3_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'


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


@dataclass(frozen=True)
class Moto:
    url: str
    key: str  # the IAM access key moto issued; every request is checked against it
    key_secret: str
    port: int  # the TLS port on 127.0.0.1 (a QEMU guest reaches it as 10.0.2.2:port)


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    """A bare TCP connect: it reaches no handler, so it spends none of the unauthenticated calls."""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def s3(server: Moto, key: str | None = None, key_secret: str | None = None):  # type: ignore[no-untyped-def]
    import urllib3

    urllib3.disable_warnings()
    return boto3.client("s3", endpoint_url=server.url, aws_access_key_id=key or server.key,
                        aws_secret_access_key=key_secret or server.key_secret, region_name="us-east-1",
                        verify=False)  # fmt: skip


@contextlib.contextmanager
def running_moto(tls_dir: Path) -> Iterator[Moto]:
    """moto's server with IAM authentication behind TLS on 127.0.0.1, one IAM user and key, the bucket made."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(NO_AUTH_CALLS)},
    )  # fmt: skip
    cert, key = self_signed(tls_dir)
    try:
        wait_for_port(port, proc)
        with TlsProxy(port, cert, key) as proxy:
            url = f"https://127.0.0.1:{proxy.port}"
            iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", verify=False,
                               aws_access_key_id=BOOTSTRAP_KEY, aws_secret_access_key=BOOTSTRAP_SECRET)  # fmt: skip
            iam.create_user(UserName="backup")
            iam.put_user_policy(UserName="backup", PolicyName="s3", PolicyDocument=S3_POLICY)
            issued = iam.create_access_key(UserName="backup")["AccessKey"]
            server = Moto(url, issued["AccessKeyId"], issued["SecretAccessKey"], proxy.port)
            s3(server).create_bucket(Bucket=BUCKET)  # the first authenticated call
            yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
