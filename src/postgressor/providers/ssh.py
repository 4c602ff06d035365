"""Provider for a server the user already has: nothing is created or destroyed, only pinned."""

from __future__ import annotations

from pathlib import Path

from postgressor.errors import UsageError
from postgressor.providers.base import Provider
from postgressor.remote.ssh import wait_for_ssh
from postgressor.state import HostRecord


class SSHProvider(Provider):
    name = "ssh"

    def _host(self) -> HostRecord:
        cfg = self.settings.ssh
        pinned = self.state.host.host_key if self.state.host else ""
        if self.state.host and self.state.host.address != cfg.host:
            raise UsageError(
                f"stack '{self.state.stack}' points at {self.state.host.address}, not {cfg.host}; "
                "use another --stack for a second server"
            )
        return HostRecord(cfg.host, cfg.port, cfg.user, str(cfg.key_path), pinned)

    def validate(self) -> None:
        key = Path(self.settings.ssh.key_path).expanduser()
        if not key.is_file():
            raise UsageError(f"SSH key {key} not found; pass --key PATH or set [ssh] key_path")

    def plan(self) -> list[str]:
        host = self._host()
        if self.state.host:
            return [f"use {host.user}@{host.address}:{host.port} (host key pinned)"]
        return [f"contact {host.user}@{host.address}:{host.port} and pin its SSH host key"]

    def provision(self) -> HostRecord:
        host = self._host()
        self.log(f"waiting for SSH on {host.address}:{host.port}")
        seen = wait_for_ssh(host.address, host.port, timeout=60)
        return self.pin(host, seen)

    def destroy(self) -> list[str]:
        host = self.state.host
        return [f"forgot {host.address} (the server itself is yours and was left running)"] if host else []
