"""``postgressor trust-host-key`` against a real SSH server on loopback (paramiko's server mode)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from typer.testing import CliRunner

from postgressor.cli import app, common
from postgressor.day2.host_key import fingerprint
from postgressor.remote.ssh import known_hosts_path
from postgressor.state import HostRecord, load_state, open_state


def key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def make_key(tmp_path: Path, name: str, kind: str = "ed25519") -> tuple[paramiko.PKey, Path]:
    """A host key made by ssh-keygen, as sshd's are, loaded with paramiko."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    loader = {"ed25519": paramiko.Ed25519Key, "rsa": paramiko.RSAKey, "ecdsa": paramiko.ECDSAKey}[kind]
    return loader.from_private_key_file(str(path)), path


class SSHServer:
    """Accepts connections on 127.0.0.1 and completes the key exchange with ``key`` (no login is offered)."""

    def __init__(self, key: paramiko.PKey) -> None:
        self.key = key
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.key)
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                transport.start_server(server=paramiko.ServerInterface())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not on Linux
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[paramiko.PKey, paramiko.PKey]:
    return make_key(tmp_path, "old")[0], make_key(tmp_path, "new")[0]


@pytest.fixture
def server(keys: tuple[paramiko.PKey, paramiko.PKey]) -> Iterator[SSHServer]:
    srv = SSHServer(keys[1])  # the rebuilt server shows the new key
    yield srv
    srv.close()


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys, server: SSHServer) -> Path:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    state = open_state(tmp_path / ".postgressor", "demo", "ssh")
    state.set_host(HostRecord("127.0.0.1", server.port, "root", str(tmp_path / "id"), key_line(keys[0])))
    return tmp_path / ".postgressor"


def pinned(state_dir: Path) -> str:
    state = load_state(state_dir, "demo")
    assert state is not None and state.host is not None
    return state.host.host_key


def invoke(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["--stack", "demo", *args], input=stdin)


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_fingerprint_is_what_ssh_keygen_prints(kind: str, tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.fail("this test needs ssh-keygen (Debian package openssh-client); run scripts/setup", pytrace=False)
    key, path = make_key(tmp_path, kind, kind)
    # ssh-keygen -l: "<bits> SHA256:<b64> <comment> (<TYPE>)"
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert fingerprint(key_line(key)) == f"{out[1]} {out[-1]}"


def test_yes_repins_and_shows_both_fingerprints(stack: Path, keys) -> None:  # type: ignore[no-untyped-def]
    old, new = (key_line(k) for k in keys)
    result = invoke("trust-host-key", "--yes")
    assert result.exit_code == 0, result.output
    assert fingerprint(old) in result.output and fingerprint(new) in result.output
    assert pinned(stack) == new
    state = load_state(stack, "demo")
    assert state is not None and new in known_hosts_path(state).read_text()


def test_no_terminal_and_no_yes_refuses_and_changes_nothing(stack: Path, keys) -> None:  # type: ignore[no-untyped-def]
    result = invoke("trust-host-key")
    assert result.exit_code == 2 and "--yes" in result.output
    assert pinned(stack) == key_line(keys[0])


@pytest.mark.parametrize(("answer", "code"), [("n\n", 1), ("y\n", 0)])
def test_it_asks_on_a_terminal(answer: str, code: int, stack: Path, keys, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(common, "interactive", lambda: True)
    result = invoke("trust-host-key", stdin=answer)
    assert result.exit_code == code, result.output
    assert "Trust the new host key of 127.0.0.1" in result.output
    assert pinned(stack) == key_line(keys[1] if code == 0 else keys[0])


def test_the_same_key_needs_nothing(stack: Path, keys) -> None:  # type: ignore[no-untyped-def]
    assert invoke("trust-host-key", "--yes").exit_code == 0
    result = invoke("--json", "trust-host-key")
    data = json.loads(result.output)
    assert result.exit_code == 0 and data["repinned"] is False and data["new"] == fingerprint(key_line(keys[1]))


def test_an_unreachable_server_is_one_line_and_exit_1(stack: Path, server: SSHServer) -> None:
    server.close()
    result = invoke("trust-host-key", "--yes")
    assert result.exit_code == 1 and "cannot read the SSH host key of 127.0.0.1" in result.output
    assert "Traceback" not in result.output


def test_no_stack_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--stack", "nothing", "trust-host-key", "--yes"])
    assert result.exit_code == 2 and "has no server yet" in result.output


def test_up_still_refuses_a_changed_key_and_names_the_verb(stack: Path, server: SSHServer) -> None:
    from postgressor.config import load_settings
    from postgressor.providers.ssh import SSHProvider
    from postgressor.remote.ssh import HostKeyMismatch, wait_for_ssh

    state = load_state(stack, "demo")
    assert state is not None and state.host is not None
    settings = load_settings(provider="ssh", ssh={"host": "127.0.0.1", "port": server.port})
    provider = SSHProvider(settings, state, lambda m: None)
    with pytest.raises(HostKeyMismatch, match="trust-host-key --stack demo"):
        provider.pin(state.host, wait_for_ssh("127.0.0.1", server.port, timeout=10))
