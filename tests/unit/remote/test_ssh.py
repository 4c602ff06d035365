"""Host-key pinning returns data; the provider records it (state file and known_hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from postgressor.config import load_settings
from postgressor.providers.ssh import SSHProvider
from postgressor.remote.ssh import STDERR_KEPT, HostKeyMismatch, as_root, known_hosts_path, pin_host_key, pump
from postgressor.state import HostRecord, load_state, open_state

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDw4mxmfYzK4fJzHkqvMo6vG2dTPOtGX9MmZJ7oa5fAe"


def test_pinning_writes_nothing(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    pinned = pin_host_key(HostRecord("192.0.2.1", 22, "root", "k"), KEY, state)
    assert pinned.host_key == KEY
    assert list(tmp_path.iterdir()) == []  # no state file, no known_hosts


def test_a_changed_key_is_refused_naming_the_state_file(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    host = HostRecord("192.0.2.1", 22, "root", "k", host_key=KEY)
    with pytest.raises(HostKeyMismatch, match=r"demo.*man-in-the-middle.*postgressor trust-host-key --stack demo"):
        pin_host_key(host, KEY.replace("AAAAI", "AAAAJ"), state)


def test_the_provider_records_the_pinned_host(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    provider = SSHProvider(load_settings(provider="ssh", ssh={"host": "192.0.2.1"}), state, lambda m: None)
    provider.pin(HostRecord("192.0.2.1", 2222, "root", "k"), KEY)
    saved = load_state(tmp_path, "demo")
    assert saved is not None and saved.host is not None and saved.host.host_key == KEY
    assert known_hosts_path(state).read_text() == f"[192.0.2.1]:2222 {KEY}\n"


class FakeChannel:
    """paramiko's Channel as ``pump`` reads it: stdout chunks (a TimeoutError is a read that timed out), stderr."""

    def __init__(self, chunks: list[bytes | type[TimeoutError]], stderr: list[bytes]) -> None:
        self.chunks, self.stderr = chunks, stderr

    def recv(self, nbytes: int) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else b""
        if chunk is TimeoutError:
            raise TimeoutError
        assert isinstance(chunk, bytes)
        return chunk

    def recv_stderr_ready(self) -> bool:
        return bool(self.stderr)

    def recv_stderr(self, nbytes: int) -> bytes:
        return self.stderr.pop(0)


def test_pump_hands_over_whole_lines_as_they_arrive() -> None:
    seen: list[str] = []
    # A line split across reads, a UTF-8 character split across reads, a read timing out, no final newline.
    channel = FakeChannel([b'{"a": 1}\n{"b"', b': "caf\xc3', TimeoutError, b'\xa9"}\n\xff\n', b"last"],
                          [b"warn", b"ing\n"])  # fmt: skip
    stderr = bytearray()
    pump(channel, seen.append, stderr)
    assert seen == ['{"a": 1}', '{"b": "café"}', "\ufffd", "last"]
    assert stderr == b"warning\n"


def test_pump_calls_back_before_the_stream_ends() -> None:
    seen: list[str] = []
    channel = FakeChannel([b"one\n"], [])

    def on_line(line: str) -> None:
        seen.append(line)
        assert channel.chunks == []  # the line came before the next read

    pump(channel, on_line, bytearray())
    assert seen == ["one"]


def test_pump_keeps_only_the_end_of_a_long_stderr() -> None:
    stderr = bytearray()
    pump(FakeChannel([], [b"x" * STDERR_KEPT, b"the last error\n"]), lambda line: None, stderr)
    assert len(stderr) == STDERR_KEPT and stderr.endswith(b"the last error\n")


def test_commands_reach_root_through_sudo_quoted() -> None:
    assert as_root(HostRecord("h", 22, "root", "k"), "echo $HOME") == "echo $HOME"
    assert as_root(HostRecord("h", 22, "debian", "k"), "echo 'a' $HOME") == "sudo -n sh -c 'echo '\"'\"'a'\"'\"' $HOME'"
