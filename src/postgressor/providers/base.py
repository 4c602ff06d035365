"""The interface every provider implements: local QEMU, an existing SSH host, and the clouds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.remote.ssh import known_hosts_path, pin_host_key, write_known_hosts
from postgressor.state import HostRecord, StackState

Log = Callable[[str], None]


@dataclass(frozen=True)
class SizeChange:
    """A resize ``up`` would make: the server's size now (read from the provider) and the one asked for."""

    provider: str
    region: str
    server: str  # the provider's id of the server
    old: str  # as the provider names sizes (OCI: shape with OCPUs and memory)
    new: str
    old_priced: str  # the catalogue's name for each size (differs only for OCI's flexible shapes)
    new_priced: str
    target: dict[str, Any] = field(default_factory=dict, compare=False)  # the provider's own parameters
    notes: tuple[str, ...] = field(default=(), compare=False)  # the provider's rules that apply (disk kept, ...)

    def describe(self) -> str:
        return f"{self.old} → {self.new}"


class Provider(ABC):
    """Creates (or finds) one server per stack, records what it made, and removes it again."""

    name: str

    def __init__(self, settings: Settings, state: StackState, log: Log) -> None:
        self.settings = settings
        self.state = state
        self.log = log

    def validate(self) -> None:
        """Check inputs before any side effect; raise UsageError with a one-line fix."""

    def image(self) -> str:
        """The image a new server boots, as named to the user ("" when unknown until the box answers)."""
        return ""

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

    def size_change(self) -> SizeChange | None:
        """The resize a ``size`` setting asks of the stack's existing server, refused with a UsageError when the
        provider cannot make it; None when there is nothing to resize."""
        if self.settings.size and self.state.host is not None:
            raise UsageError(
                f"provider '{self.name}' cannot resize its server ({self.resize_hint()}); drop --size and 'size' "
                "from postgressor.toml"
            )
        return None

    def resize_hint(self) -> str:
        return "resize it where it runs, then run 'postgressor deploy' so PostgreSQL's tuning follows"

    def resize(self, change: SizeChange) -> None:
        """Change the server to ``change.new`` and record it once the provider confirms; the server runs after."""
        raise UsageError(f"provider '{self.name}' cannot resize its server ({self.resize_hint()})")

    @abstractmethod
    def destroy(self) -> list[str]:
        """Remove every resource recorded for the stack; return what was removed."""
