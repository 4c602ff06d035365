"""A local TCP port forwarded over SSH (paramiko direct-tcpip) to a port on the box's loopback."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any

import paramiko

BUFFER = 65536


class Tunnel:
    """Listen on 127.0.0.1:<free port>; each connection becomes one SSH channel to ``remote``."""

    def __init__(self, transport: paramiko.Transport, remote: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.transport = transport
        self.remote = remote
        self.last_error = ""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> Tunnel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.2)
                if not ready:
                    continue
                client, peer = self._listener.accept()
            except (OSError, ValueError):
                return  # listener closed
            try:
                channel = self.transport.open_channel("direct-tcpip", self.remote, peer, timeout=15)
            except (paramiko.SSHException, OSError, EOFError) as err:
                self.last_error = f"the box refused forwarding to {self.remote[0]}:{self.remote[1]} ({err})"
                client.close()
                continue
            self._spawn(self._pump, client, channel)

    def _pump(self, client: socket.socket, channel: paramiko.Channel) -> None:
        """Copy bytes both ways until either side closes, or the tunnel does."""
        watched: list[Any] = [client, channel]
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select(watched, [], [], 0.2)
                if client in ready:
                    data = client.recv(BUFFER)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(BUFFER)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            client.close()
