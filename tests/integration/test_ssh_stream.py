"""``remote.ssh.stream`` over a real SSH session (paramiko's server running each command with the local ``sh``):
lines arrive as they are printed, the exit status and stderr come back, and a followed journal stops on the
"box" when the reader is interrupted (the watcher of ``day2.logs.remote_command``)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from postgressor.day2.logs import remote_command
from postgressor.remote.ssh import generate_keypair, stream
from postgressor.state import HostRecord


class ExecServer(paramiko.ServerInterface):
    """Accepts the one client key and runs each exec request with ``sh -c`` here, stdin/stdout/stderr wired to
    the channel, as sshd does (the command's stdin ends when the client sends EOF or closes)."""

    def __init__(self, client_key: paramiko.PKey, env: dict[str, str]) -> None:
        self.client_key, self.env = client_key, env

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self._run, args=(channel, command.decode()), daemon=True).start()
        return True

    def _run(self, channel: paramiko.Channel, command: str) -> None:
        proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env)  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def feed() -> None:
            try:
                while data := channel.recv(1024):
                    stdin.write(data)
                    stdin.flush()
            except OSError:
                pass
            stdin.close()

        def errors() -> None:
            while chunk := stderr.read1(1024):
                channel.sendall_stderr(chunk)

        threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=errors, daemon=True)]
        for thread in threads:
            thread.start()
        try:
            while chunk := stdout.read1(1024):
                channel.sendall(chunk)
            threads[1].join(timeout=10)
            channel.send_exit_status(proc.wait())
        except OSError:  # the client went away
            proc.wait()
        channel.close()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[HostRecord]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # journalctl as a followed journal behaves: an entry now, then one per 0.2 s until killed.
    fake = bin_dir / "journalctl"
    fake.write_text(f'#!/bin/sh\necho $$ > {tmp_path}/journalctl.pid\n'
                    'while :; do echo \'{"MESSAGE": "tick"}\'; sleep 0.2; done\n')  # fmt: skip
    fake.chmod(0o755)
    generate_keypair(tmp_path / "id", "test")
    client_key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "id"))
    host_key = paramiko.ECDSAKey.generate()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    listener = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(host_key)
            transport.start_server(server=ExecServer(client_key, env))
            transports.append(transport)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    yield HostRecord("127.0.0.1", port, "root", str(tmp_path / "id"), f"{host_key.get_name()} {host_key.get_base64()}")
    listener.close()
    for transport in transports:
        transport.close()


def test_lines_arrive_as_printed_with_the_exit_status_and_stderr(box: HostRecord) -> None:
    arrivals: list[tuple[str, float]] = []
    started = time.monotonic()
    result = stream(box, "echo one; sleep 1; printf 'two\\nthree'; echo oops >&2; exit 3",
                    lambda line: arrivals.append((line, time.monotonic() - started)), poll=0.2)  # fmt: skip
    assert [line for line, _ in arrivals] == ["one", "two", "three"]
    assert arrivals[1][1] - arrivals[0][1] > 0.5  # "one" was handed over before "two" was printed
    assert (result.exit_status, result.stdout, result.stderr) == (3, "", "oops\n")


def test_an_interrupted_follow_stops_journalctl_on_the_box(box: HostRecord, tmp_path: Path) -> None:
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if len(seen) == 2:
            raise KeyboardInterrupt  # Ctrl-C while following

    with pytest.raises(KeyboardInterrupt):
        stream(box, remote_command(["journalctl", "--follow"], follow=True), on_line, poll=0.2)
    assert seen == ['{"MESSAGE": "tick"}'] * 2
    pid = int((tmp_path / "journalctl.pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "journalctl still runs after the session closed"
        time.sleep(0.1)
