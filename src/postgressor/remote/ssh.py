"""SSH to the box: key generation, waiting for sshd, host-key pinning, and running one command (its output whole,
or streamed line by line)."""

from __future__ import annotations

import base64
import contextlib
import logging
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from postgressor.errors import PostgressorError, UsageError
from postgressor.state import HostRecord, StackState

# paramiko logs handshake failures while sshd boots; they are expected and reported our own way.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class HostKeyMismatch(PostgressorError):
    """The server's SSH host key differs from the pinned one: never reported as a mere outage."""


@dataclass
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def generate_keypair(private_path: Path, comment: str) -> str:
    """Create an ed25519 key pair (private file 0600) unless it exists; return the public key line."""
    public_path = private_path.with_suffix(".pub")
    if private_path.exists() and public_path.exists():
        return public_path.read_text().strip()
    private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    private_path.touch(mode=0o600)
    private_path.write_bytes(pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} {comment}"
    public_path.write_text(line + "\n")
    return line


def fetch_host_key(address: str, port: int, timeout: float = 10) -> str:
    """Do a real SSH key exchange and return the server's host key as '<type> <base64>'."""
    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    finally:
        transport.close()


def wait_for_ssh(address: str, port: int, timeout: float) -> str:
    """Poll until sshd completes a key exchange; return its host key. A bare TCP accept proves nothing."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            return fetch_host_key(address, port, timeout=min(15, max(1, deadline - time.monotonic())))
        except (OSError, paramiko.SSHException, EOFError) as err:
            last = str(err) or type(err).__name__
            time.sleep(2)
    raise PostgressorError(
        f"SSH on {address}:{port} did not answer within {int(timeout)} s (last: {last}); "
        "check that the server is up and port 22 is open"
    )


def pin_host_key(host: HostRecord, seen_key: str, state: StackState) -> HostRecord:
    """``host`` with ``seen_key`` pinned: accepted on first contact; afterwards a different key is a hard error
    (HostKeyMismatch, naming the stack and its state file). Records nothing: the caller saves the result."""
    if host.host_key and host.host_key != seen_key:
        raise HostKeyMismatch(
            f"the SSH host key of {host.address}:{host.port} changed since it was pinned for stack "
            f"'{state.stack}' (possible man-in-the-middle); if the server was rebuilt on purpose, run "
            f"'postgressor trust-host-key --stack {state.stack}' to compare fingerprints and re-pin"
        )
    return replace(host, host_key=seen_key)


def known_hosts_path(state: StackState) -> Path:
    return state.stack_dir / "known_hosts"


def write_known_hosts(path: Path, host: HostRecord) -> None:
    name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(f"{name} {host.host_key}\n")
    path.chmod(0o600)


def _pinned_key(host: HostRecord) -> paramiko.PKey:
    kind, data = host.host_key.split(" ", 1)
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def connect(host: HostRecord, timeout: float = 20) -> paramiko.SSHClient:
    """An SSH client that trusts only the pinned host key; clear errors for wrong user or key."""
    key_path = Path(host.key_path).expanduser()
    if not key_path.is_file():
        raise UsageError(f"SSH key {key_path} not found; set [ssh] key_path or pass --key")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if host.host_key:
        name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        client.get_host_keys().add(name, host.host_key.split(" ", 1)[0], _pinned_key(host))
    try:
        client.connect(
            host.address, port=host.port, username=host.user, key_filename=str(key_path),
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            allow_agent=False, look_for_keys=False,
        )  # fmt: skip
    except paramiko.AuthenticationException:
        raise UsageError(
            f"SSH login as '{host.user}' on {host.address}:{host.port} with key {key_path} was refused; "
            "check the user (--user) and that the key is in its authorized_keys"
        ) from None
    except paramiko.BadHostKeyException:
        raise HostKeyMismatch(
            f"the SSH host key of {host.address}:{host.port} does not match the pinned one; refusing to connect "
            "(if the server was rebuilt on purpose, 'postgressor trust-host-key' compares fingerprints and re-pins)"
        ) from None
    except (OSError, paramiko.SSHException) as err:
        raise PostgressorError(
            f"cannot reach {host.address}:{host.port} over SSH ({err}); check the address and firewall"
        ) from None
    return client


def as_root(host: HostRecord, command: str) -> str:
    """``command`` as root: unchanged for root, else through passwordless sudo (quoted whole)."""
    return command if host.user == "root" else f"sudo -n sh -c {shlex.quote(command)}"


def run(host: HostRecord, command: str, timeout: float = 120, stdin: str | None = None) -> CommandResult:
    """Run one command (as root via sudo when the user is not root); ``stdin`` is written to it, then EOF
    (the way a value that must stay out of the box's process list reaches the command)."""
    client = connect(host)
    try:
        command = as_root(host, command)
        feed, stdout, stderr = client.exec_command(command, timeout=timeout)
        if stdin is not None:
            feed.write(stdin)
            feed.channel.shutdown_write()
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return CommandResult(stdout.channel.recv_exit_status(), out, err)
    finally:
        client.close()


KEEPALIVE = 30  # seconds between SSH keepalives on a streamed command
STDERR_KEPT = 64 * 1024  # bytes of a streamed command's stderr kept for its error message (the last ones)


def stream(host: HostRecord, command: str, on_line: Callable[[str], None], poll: float = 1.0) -> CommandResult:
    """Run one command (as root, as ``run``) and hand each line of its stdout to ``on_line`` as it arrives.

    Lines are decoded as UTF-8 (undecodable bytes replaced) without their newline. Returns the exit status and
    the stderr (its last STDERR_KEPT bytes); ``stdout`` is empty, it went to ``on_line``. Waits at most ``poll``
    seconds at a time, so Ctrl-C (KeyboardInterrupt) ends it promptly; the session is then closed, which
    ends the command's stdin on the box. The exit status is -1 when the session ended without one (the connection
    was lost). Errors: as ``connect``.
    """
    client = connect(host)
    channel: paramiko.Channel | None = None
    try:
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE)  # a quiet followed journal keeps its connection through NAT and firewalls
        channel = transport.open_session()
        channel.settimeout(poll)
        channel.exec_command(as_root(host, command))
        stderr = bytearray()
        pump(channel, on_line, stderr)
        status = channel.recv_exit_status()
        _drain_stderr(channel, stderr)
        return CommandResult(status, "", stderr.decode(errors="replace"))
    finally:
        if channel is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.shutdown_write()  # EOF on the command's stdin
        client.close()


class LineChannel(Protocol):
    """What ``pump`` reads: the part of paramiko's Channel it uses."""

    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...


def pump(channel: LineChannel, on_line: Callable[[str], None], stderr: bytearray) -> None:
    """Read ``channel``'s stdout to its end, calling ``on_line`` for each complete line (a last line without a
    newline too), and append what arrives on stderr meanwhile to ``stderr`` (its last STDERR_KEPT bytes kept).
    A read that times out (``socket.timeout``) is retried."""
    pending = b""
    while True:
        _drain_stderr(channel, stderr)  # as we go: a stderr nobody reads would fill the window and stall stdout
        try:
            chunk = channel.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            on_line(line.decode(errors="replace"))
    if pending:
        on_line(pending.decode(errors="replace"))
    _drain_stderr(channel, stderr)


def _drain_stderr(channel: LineChannel, stderr: bytearray) -> None:
    while channel.recv_stderr_ready():
        stderr += channel.recv_stderr(32768)
        del stderr[:-STDERR_KEPT]
