"""A paramiko SSH server on loopback that plays a box for the production SSH code path (remote.ssh, remote.tunnel).

It authenticates the stack's key, answers `cat <secrets file>` from ``files``, runs the box's `psql` as postgres
(``layout.psql()`` with statements on stdin) against the test cluster, and serves direct-tcpip channels to
127.0.0.1:5432 by connecting them to the test cluster, which stands in for the box's local PostgreSQL.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
from pgcluster import Cluster, bindir

from postgressor.box.layout import psql
from postgressor.remote.ssh import generate_keypair
from postgressor.state import HostRecord


class FakeBox(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, files: dict[str, str], postgres_port: int,
                 superuser_conninfo: str = "") -> None:  # fmt: skip
        self.client_key, self.files, self.postgres_port = client_key, files, postgres_port
        self.superuser_conninfo = superuser_conninfo  # what `psql` as postgres reaches (peer auth on a box)
        self.commands: list[str] = []
        self.stdins: list[str] = []
        self.forwards: list[tuple[str, int]] = []
        self.exec_ready: dict[int, tuple[threading.Event, list[str]]] = {}

    def for_connection(self) -> FakeBox:
        """Channel ids are per connection: each connection gets its own view sharing the records."""
        view = copy.copy(self)
        view.exec_ready = {}
        return view

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key.get_base64() == self.client_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            self.exec_ready[chanid] = (threading.Event(), [])
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        event, box = self.exec_ready[channel.get_id()]
        box.append(command.decode())
        event.set()
        return True

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple, destination: tuple) -> int:
        self.forwards.append(tuple(destination))  # type: ignore[arg-type]
        if tuple(destination) != ("127.0.0.1", 5432):
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return paramiko.OPEN_SUCCEEDED

    def run_exec(self, channel: paramiko.Channel) -> None:
        event, box = self.exec_ready[channel.get_id()]
        if not event.wait(10):
            channel.close()
            return
        command = box[0]
        self.commands.append(command)
        if command == psql() and self.superuser_conninfo:
            self.run_psql(channel)
            return
        path = command.removeprefix("cat ").strip("'")
        if command.startswith("cat ") and path in self.files:
            channel.sendall(self.files[path].encode())
            channel.send_exit_status(0)
        else:
            channel.sendall_stderr(f"cat: {path}: No such file or directory\n".encode())
            channel.send_exit_status(1)
        channel.close()

    def run_psql(self, channel: paramiko.Channel) -> None:
        """The box's `psql` as postgres reading statements from stdin (layout.psql()): the real psql, on the
        test cluster as its superuser (peer authentication on a box)."""
        chunks = []
        while data := channel.recv(65536):
            chunks.append(data)
        statements = b"".join(chunks).decode()
        self.stdins.append(statements)
        proc = subprocess.run([str(bindir() / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", self.superuser_conninfo],
                              input=statements, capture_output=True, text=True, timeout=60)  # fmt: skip
        channel.sendall(proc.stdout.encode())
        channel.sendall_stderr(proc.stderr.encode())
        channel.send_exit_status(proc.returncode)
        channel.close()

    def pump(self, channel: paramiko.Channel) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.postgres_port))

        def relay(read, write) -> None:
            try:
                while data := read(65536):
                    write(data)
            except OSError:
                pass
            finally:
                channel.close()
                upstream.close()
        threading.Thread(target=relay, args=(channel.recv, upstream.sendall), daemon=True).start()
        relay(upstream.recv, channel.sendall)


def serve(listener: socket.socket, host_key: paramiko.PKey, box: FakeBox, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        transport = paramiko.Transport(sock)
        transport.add_server_key(host_key)
        session = box.for_connection()
        transport.start_server(server=session)

        def channels(t: paramiko.Transport = transport, box: FakeBox = session) -> None:
            while t.is_active() and not stop.is_set():
                channel = t.accept(0.5)
                if channel is None:
                    continue
                target = box.run_exec if channel.get_id() in box.exec_ready else box.pump
                threading.Thread(target=target, args=(channel,), daemon=True).start()
            t.close()
        threading.Thread(target=channels, daemon=True).start()


@contextlib.contextmanager
def running_fake_box(cluster: Cluster, key_dir: Path, files: dict[str, str]) -> Iterator[tuple[FakeBox, HostRecord]]:
    """(FakeBox, HostRecord): an SSH server on loopback playing a box whose PostgreSQL is ``cluster``."""
    client_key_path = key_dir / "id_ed25519"
    generate_keypair(client_key_path, "test")
    client_key = paramiko.Ed25519Key.from_private_key_file(str(client_key_path))
    host_key = paramiko.RSAKey.generate(2048)
    box = FakeBox(client_key, files, cluster.port, cluster.conninfo())
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(listener, host_key, box, stop), daemon=True)
    thread.start()
    host = HostRecord("127.0.0.1", listener.getsockname()[1], "root", str(client_key_path),
                      f"{host_key.get_name()} {host_key.get_base64()}")  # fmt: skip
    try:
        yield box, host
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)
