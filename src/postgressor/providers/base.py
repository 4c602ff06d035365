"""The interface every provider implements: local QEMU, an existing SSH host, and the clouds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from postgressor.config import Settings
from postgressor.remote.ssh import known_hosts_path, pin_host_key, write_known_hosts
from postgressor.state import HostRecord, StackState

Log = Callable[[str], None]


class Provider(ABC):
    """Creates (or finds) one server per stack, records what it made, and removes it again."""

    name: str

    def __init__(self, settings: Settings, state: StackState, log: Log) -> None:
        self.settings = settings
        self.state = state
        self.log = log

    def validate(self) -> None:
        """Check inputs before any side effect; raise UsageError with a one-line fix."""

    @abstractmethod
    def plan(self) -> list[str]:
        """What ``provision`` would create or start now, without changing anything."""

    @abstractmethod
    def provision(self) -> HostRecord:
        """Create or find the server, wait for SSH and pin its host key. Idempotent."""

    def pin(self, host: HostRecord, seen_key: str) -> HostRecord:
        """Pin the host key SSH showed (refusing a changed one), record the host in the state and known_hosts."""
        pinned = pin_host_key(host, seen_key, self.state)
        self.state.set_host(pinned)
        write_known_hosts(known_hosts_path(self.state), pinned)
        return pinned

    def power_state(self) -> str:
        """The server's power state: "running", "off", "starting", "stopping", "missing" (gone at the provider)
        or "unknown" (a server postgressor does not manage)."""
        return "unknown"

    def ensure_running(self) -> HostRecord:
        """Connection details of the existing server, starting it first if the provider can."""
        assert self.state.host is not None
        return self.state.host

    @abstractmethod
    def destroy(self) -> list[str]:
        """Remove every resource recorded for the stack; return what was removed."""
