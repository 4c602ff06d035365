"""Rotating a stack's pinned SSH host key on purpose (a rebuilt server): the only place a pin is replaced."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace

import paramiko

from postgressor.errors import PostgressorError, UsageError
from postgressor.remote.ssh import fetch_host_key, known_hosts_path, write_known_hosts
from postgressor.state import StackState


def fingerprint(host_key: str) -> str:
    """``'<type> <base64>'`` as ``ssh-keygen -l -E sha256`` prints it: ``SHA256:<base64 of the blob's SHA-256,
    unpadded> (<TYPE>)``, e.g. ``SHA256:uNiVz... (ED25519)``; ``""`` for no key."""
    if not host_key:
        return ""
    kind, _, data = host_key.partition(" ")
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(data)).digest()).decode().rstrip("=")
    names = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA"}
    label = names.get(kind, "ECDSA" if kind.startswith("ecdsa-") else kind)
    return f"SHA256:{digest} ({label})"


@dataclass(frozen=True)
class KeyChange:
    """The pinned key and the key the server shows now, both ``'<type> <base64>'`` (``old`` may be empty)."""

    stack: str
    address: str
    port: int
    old: str
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def as_dict(self) -> dict[str, object]:
        return {"stack": self.stack, "address": self.address, "port": self.port, "changed": self.changed,
                "old": fingerprint(self.old) or None, "new": fingerprint(self.new)}  # fmt: skip


def observe(state: StackState, timeout: float = 15) -> KeyChange:
    """Key-exchange with the stack's recorded host and compare its host key with the pinned one (changes nothing).

    Raises UsageError when the stack has no host, PostgressorError when SSH cannot be reached."""
    host = state.host
    if host is None:
        raise UsageError(f"stack '{state.stack}' has no server recorded; nothing to trust")
    try:
        seen = fetch_host_key(host.address, host.port, timeout=timeout)
    except (OSError, paramiko.SSHException, EOFError) as err:
        raise PostgressorError(
            f"cannot read the SSH host key of {host.address}:{host.port} ({err or type(err).__name__}); "
            "start the server ('postgressor up') and try again"
        ) from None
    return KeyChange(state.stack, host.address, host.port, host.host_key, seen)


def repin(state: StackState, change: KeyChange) -> None:
    """Pin ``change.new`` in the state file and the stack's known_hosts, if the host is still the one observed."""
    host = state.host
    if host is None or (host.address, host.port, host.host_key) != (change.address, change.port, change.old):
        raise PostgressorError("the stack's recorded host changed while asking; run trust-host-key again")
    pinned = replace(host, host_key=change.new)
    state.set_host(pinned)
    write_known_hosts(known_hosts_path(state), pinned)
