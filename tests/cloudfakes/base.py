"""A threaded JSON HTTP server on 127.0.0.1 with a request log and scripted faults."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]  # status, body[, response headers]
RESET = object()  # as a fault's body: close the connection without an answer (a reset the client sees)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    body: Any
    times: int
    after: bool  # run the real handler first (the change happens), then answer with the error


class FakeAPI:
    """Subclasses implement ``route``; tests add faults and read ``log``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.log: list[Request] = []
        self.faults: list[Fault] = []
        self.bugs: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    # ---- faults

    def fail(self, method: str, path: str, status: int, body: Any, times: int = 1, after: bool = False) -> None:
        """The next ``times`` requests matching METHOD and the path regex get ``status``/``body``.

        ``body=RESET`` drops the connection instead of answering; with ``after`` the change has happened.
        """
        with self.lock:
            self.faults.append(Fault(method, re.compile(path), status, body, times, after))

    def calls(self, method: str, path: str) -> int:
        pattern = re.compile(path)
        return sum(1 for r in self.log if r.method == method and pattern.fullmatch(r.path))

    # ---- serving

    def route(self, req: Request) -> Reply:
        raise NotImplementedError

    def handle(self, req: Request) -> Reply:
        with self.lock:
            self.log.append(req)
            fault = next((f for f in self.faults if f.method == req.method and f.path.fullmatch(req.path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                if fault.after:
                    self.route(req)
                return fault.status, fault.body
            return self.route(req)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                req = Request(self.command, parts.path, query, body, {k.lower(): v for k, v in self.headers.items()})
                req.headers["x-raw-body"] = raw.decode(errors="replace")
                req.headers["x-raw-url"] = self.path
                headers: dict[str, str] = {}
                try:
                    status, payload, *extra = api.handle(req)
                    headers = extra[0] if extra else {}
                except Exception as err:  # a bug in the fake: recorded, and checked by the fixtures
                    api.bugs.append(repr(err))
                    status, payload = 400, {"fake_error": repr(err)}
                if payload is RESET:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = b"" if status == 204 else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """Hetzner label selectors as postgressor uses them: ``k=v`` / ``k==v`` joined by commas."""
    for term in filter(None, selector.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


Hook = Callable[[dict[str, Any]], None]
