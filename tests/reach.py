"""Is a service reachable from outside the VM? A protocol-level probe that can tell "closed" from "open".

QEMU's user-mode network (libslirp) accepts every connection to a forwarded host port before it knows whether
the guest will take it: a refused or firewalled guest port still gives a successful `connect()` on the host, then
an EOF, a reset or silence. A bare TCP connect therefore proves nothing, and a wrong-password `psql` fails
either way. Each probe here sends the service's own first message and passes only on the service's own answer:

- PostgreSQL: an SSLRequest (frontend/backend protocol, "SSL Session Encryption"); a server answers one byte,
  `S` or `N`.
- HTTP: a `GET` line; a server answers a status line starting `HTTP/`.
- TLS: a full handshake (certificate not verified: Caddy's `tls internal` CA).
- SSH: the server's identification line `SSH-2.0-` (RFC 4253 §4.2), sent unasked.
"""

from __future__ import annotations

import socket
import ssl
import struct

SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL protocol: length 8, SSLRequest code


def _exchange(port: int, send: bytes, timeout: float) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if send:
                sock.sendall(send)
            return sock.recv(64)
    except OSError:  # refused, reset or silent until the timeout
        return b""


def postgres_answers(port: int, timeout: float = 8) -> bool:
    return _exchange(port, SSL_REQUEST, timeout) in (b"S", b"N")


def http_answers(port: int, timeout: float = 8) -> bool:
    return _exchange(port, b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n", timeout).startswith(b"HTTP/")


def ssh_answers(port: int, timeout: float = 8) -> bool:
    return _exchange(port, b"", timeout).startswith(b"SSH-2.0-")


def tls_answers(port: int, timeout: float = 8) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            return tls.version() is not None
    except OSError:  # ssl.SSLError is an OSError
        return False
