"""The step inside a long operation: apt's own progress, read from the box while the operation runs.

The package operations pass ``-o APT::Status-Fd=3`` with fd 3 sent to :data:`APT_STATUS` on the box; apt
writes one line per step there (``pmstatus:<pkg>:<percent>:<message>`` while dpkg works,
``dlstatus:<n>:<percent>:<message>`` while downloading; apt's doc/progress-reporting.txt). A watcher thread
reads the last line over its own SSH connection every few seconds and reports it as the operation's detail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from postgressor.box.converge import OpListener, OpReport
from postgressor.remote.ssh import connect
from postgressor.state import HostRecord

APT_STATUS = "/run/postgressor-apt-status"
APT_STATUS_ARGS = f"-o APT::Status-Fd=3 3>{APT_STATUS}"
POLL_SECONDS = 3.0

DetailListener = Callable[[str, str], None]  # (operation name, what it is doing now)


def apt_detail(line: str) -> str:
    """'pmstatus:postgresql-15:45.4545:Installing postgresql-15 (amd64)' → '45% Installing postgresql-15 (amd64)'."""
    parts = line.strip().split(":", 3)
    if len(parts) != 4 or parts[0] not in ("pmstatus", "dlstatus"):
        return ""
    try:
        percent = float(parts[2])
    except ValueError:
        return ""
    return f"{percent:.0f}% {parts[3].strip()}"


class AptWatcher:
    """Polls :data:`APT_STATUS` on ``host`` while an apt operation runs; silent when it cannot connect."""

    def __init__(self, host: HostRecord, name: str, detail: DetailListener) -> None:
        self.host, self.name, self.detail = host, name, detail
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            client = connect(self.host)
        except Exception:  # progress is a nicety; the deploy reports real failures
            return
        last = ""
        try:
            while not self._stop.wait(POLL_SECONDS):
                command = f"tail -n 1 {APT_STATUS} 2>/dev/null"
                _, stdout, _ = client.exec_command(command, timeout=10)
                text = apt_detail(stdout.read().decode(errors="replace"))
                if text and text != last:
                    last = text
                    self.detail(self.name, text)
        except Exception:  # noqa: S110 - a lost poll connection must not fail the deploy
            pass
        finally:
            client.close()


class OpWatch:
    """``listener`` plus an apt watcher running for the duration of every package operation.

    Call it as the deploy's listener; ``close()`` stops any watcher still running (a deploy cut short)."""

    def __init__(self, host: HostRecord, listener: OpListener, detail: DetailListener | None) -> None:
        self.host, self.listener, self.detail = host, listener, detail
        self.running: dict[str, AptWatcher] = {}

    def __call__(self, name: str, report: OpReport | None) -> None:
        self.listener(name, report)
        if self.detail is None:
            return
        if report is None and name.startswith("Install") and name not in self.running:
            self.running[name] = AptWatcher(self.host, name, self.detail)
            self.running[name].start()
        elif report is not None and name in self.running:
            self.running.pop(name).stop()

    def close(self) -> None:
        for watcher in self.running.values():
            watcher.stop()
        self.running.clear()
