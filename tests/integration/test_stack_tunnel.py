"""migrate --stack through a real SSH session: a paramiko SSH server on loopback plays the box.

It authenticates the stack's key, answers `cat /etc/postgressor/secrets/<owner>.password`, and serves
direct-tcpip channels to 127.0.0.1:5432 by connecting them to the test cluster, which stands in for the
box's local PostgreSQL. Everything the client does is the production code path (remote.ssh + remote.tunnel).
"""

from __future__ import annotations

import copy
import socket
import threading
from pathlib import Path

import paramiko
import pytest
from conftest import APP_PASSWORD, APP_ROLE
from pgcluster import Cluster
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.remote.ssh import generate_keypair
from postgressor.state import HostRecord, open_state


class FakeBox(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, files: dict[str, str], postgres_port: int) -> None:
        self.client_key, self.files, self.postgres_port = client_key, files, postgres_port
        self.commands: list[str] = []
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
        path = command.removeprefix("cat ").strip("'")
        if command.startswith("cat ") and path in self.files:
            channel.sendall(self.files[path].encode())
            channel.send_exit_status(0)
        else:
            channel.sendall_stderr(f"cat: {path}: No such file or directory\n".encode())
            channel.send_exit_status(1)
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


@pytest.fixture
def fake_box(pg_cluster: Cluster, tmp_path: Path):
    client_key_path = tmp_path / "id_ed25519"
    generate_keypair(client_key_path, "test")
    client_key = paramiko.Ed25519Key.from_private_key_file(str(client_key_path))
    host_key = paramiko.RSAKey.generate(2048)
    files = {f"/etc/postgressor/secrets/{APP_ROLE}.password": APP_PASSWORD + "\n"}
    box = FakeBox(client_key, files, pg_cluster.port)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(listener, host_key, box, stop), daemon=True)
    thread.start()
    host = HostRecord("127.0.0.1", listener.getsockname()[1], "root", str(client_key_path),
                      f"{host_key.get_name()} {host_key.get_base64()}")
    yield box, host
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_migrate_stack_through_ssh_tunnel(pg_cluster, app_db, fake_box, tmp_path, monkeypatch):
    box, host = fake_box
    monkeypatch.chdir(tmp_path)
    state = open_state(tmp_path / "state", "edge", "ssh")
    state.set_host(host)
    (tmp_path / "postgressor.toml").write_text(
        f'provider = "ssh"\nstate_dir = "state"\n[ssh]\nhost = "127.0.0.1"\n'
        f'[postgres]\ndatabase = "{app_db}"\nowner = "{APP_ROLE}"\n'
        '[[sync.tables]]\nname = "OR"\n'
    )
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_or.sql").write_text('CREATE TABLE "OR" (id int PRIMARY KEY, user_id text);')
    result = CliRunner().invoke(app, ["migrate", "--stack", "edge", "--yes"])
    assert result.exit_code == 0, result.output
    assert "via SSH" in result.stdout and "applied 0001_or.sql" in result.stdout
    assert APP_PASSWORD not in result.output
    assert box.commands == [f"cat /etc/postgressor/secrets/{APP_ROLE}.password"]
    assert box.forwards and set(box.forwards) == {("127.0.0.1", 5432)}
    with pg_cluster.connect(app_db) as su:
        assert su.execute("""SELECT relforcerowsecurity FROM pg_class WHERE oid = '"OR"'::regclass""").fetchone() == (
            True,)

    # a box without the secrets file: one clear line, nothing applied
    box.files.clear()
    failed = CliRunner().invoke(app, ["migrate", "--stack", "edge", "--yes"])
    assert failed.exit_code == 1
    assert f"cannot read /etc/postgressor/secrets/{APP_ROLE}.password" in failed.stderr
    assert "No such file" in failed.stderr
