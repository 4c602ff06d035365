"""Per-stack state: every resource created, the host, and its pinned SSH host key.

One JSON file per stack under the state directory, written atomically with mode 0600 after every change,
so an interrupted run can be resumed by ``up`` or cleaned by ``destroy``. It never holds secrets.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from postgressor.errors import PostgressorError, UsageError

STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check_stack_name(name: str) -> str:
    if not STACK_NAME.match(name):
        raise UsageError(
            f"invalid stack name '{name}'; use 1-40 lower-case letters, digits and dashes (e.g. 'staging')"
        )
    return name


@dataclass
class Resource:
    kind: str
    id: str
    created_at: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostRecord:
    address: str
    port: int
    user: str
    key_path: str
    host_key: str = ""  # "<type> <base64>" once pinned


@dataclass
class StackState:
    stack: str
    provider: str
    path: Path
    resources: list[Resource] = field(default_factory=list)
    host: HostRecord | None = None
    deployed_at: str = ""
    pg_version: int | None = None  # the PostgreSQL major version the last deploy installed
    deployed_keys: list[str] = field(default_factory=list)  # names of secrets/key sources on the box, no values
    # `up --restore-from`: {"path", "target"} (target '' = the end of the archive), then "label" once restored
    restored_from: dict[str, str] = field(default_factory=dict)
    # The last restore to the end of the archive stopped short of it: {"at": ISO time, "line": why}; {} otherwise.
    # status warns until a backup finished after it.
    short_restore: dict[str, str] = field(default_factory=dict)

    @property
    def stack_dir(self) -> Path:
        """Per-stack files that are not state (keys, known_hosts, VM disk)."""
        return self.path.parent / self.stack

    def find(self, kind: str) -> Resource | None:
        return next((r for r in self.resources if r.kind == kind), None)

    def add(self, kind: str, id: str, **details: Any) -> Resource:
        """Record a created resource and save immediately, before any further API call."""
        resource = Resource(kind=kind, id=id, created_at=_now(), details=details)
        self.resources = [r for r in self.resources if r.kind != kind] + [resource]
        self.save()
        return resource

    def update(self, kind: str, **details: Any) -> None:
        """Merge ``details`` into the recorded ``kind`` (its id and creation time stay) and save."""
        recorded = self.find(kind)
        assert recorded is not None, kind
        recorded.details = {**recorded.details, **details}
        self.save()

    def remove(self, kind: str) -> None:
        self.resources = [r for r in self.resources if r.kind != kind]
        self.save()

    def set_host(self, host: HostRecord) -> None:
        self.host = host
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "version": 1,
            "stack": self.stack,
            "provider": self.provider,
            "resources": [asdict(r) for r in self.resources],
            "host": self._portable(asdict(self.host)) if self.host else None,
            "deployed_at": self.deployed_at,
            "pg_version": self.pg_version,
            "deployed_keys": self.deployed_keys,
            "restored_from": self.restored_from,
            "short_restore": self.short_restore,
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.stack}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2)
                fh.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _portable(self, host: dict[str, Any]) -> dict[str, Any]:
        """A key file inside the state directory is stored relative to it, so the project can move."""
        key = Path(host["key_path"])
        if key.is_absolute() and key.is_relative_to(self.path.parent.resolve()):
            host["key_path"] = str(key.relative_to(self.path.parent.resolve()))
        return host

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _absolute_key(host: HostRecord, state_dir: Path) -> HostRecord:
    key = Path(host.key_path)
    if not key.is_absolute() and not host.key_path.startswith("~"):
        host.key_path = str((state_dir / key).resolve())
    return host


def state_path(state_dir: Path, stack: str) -> Path:
    return state_dir / f"{check_stack_name(stack)}.json"


def load_state(state_dir: Path, stack: str) -> StackState | None:
    path = state_path(state_dir, stack)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        host = data.get("host")
        if not isinstance(data.get("pg_version"), int | None):
            raise TypeError(f"pg_version {data['pg_version']!r} is not a whole number")
        return StackState(
            stack=data["stack"],
            provider=data["provider"],
            path=path,
            resources=[Resource(**r) for r in data.get("resources", [])],
            host=_absolute_key(HostRecord(**host), path.parent) if host else None,
            deployed_at=data.get("deployed_at", ""),
            pg_version=data.get("pg_version"),
            deployed_keys=list(data.get("deployed_keys", [])),
            restored_from={str(k): str(v) for k, v in (data.get("restored_from") or {}).items()},
            short_restore={str(k): str(v) for k, v in (data.get("short_restore") or {}).items()},
        )
    except (ValueError, KeyError, TypeError) as err:
        raise PostgressorError(
            f"state file {path} is unreadable ({err}); restore it from version control or remove it "
            "after checking the provider for resources it recorded"
        ) from None


def open_state(state_dir: Path, stack: str, provider: str) -> StackState:
    """The stack's state, created empty (not yet saved) when absent; refuses a provider mismatch."""
    existing = load_state(state_dir, stack)
    if existing is None:
        return StackState(stack=stack, provider=provider, path=state_path(state_dir, stack))
    if existing.provider != provider:
        raise UsageError(
            f"stack '{stack}' was created with provider '{existing.provider}', not '{provider}'; "
            f"use --provider {existing.provider} or another --stack"
        )
    return existing


def require_state(state_dir: Path, stack: str) -> StackState:
    existing = load_state(state_dir, stack)
    if existing is None or existing.host is None:
        raise UsageError(f"stack '{stack}' has no server yet; run 'postgressor up --stack {stack}' first")
    return existing


def recorded_version(state: StackState) -> int:
    """The PostgreSQL major version the stack's last deploy installed (recorded in the state, never guessed)."""
    if state.pg_version is None:
        raise UsageError(
            f"stack '{state.stack}' has no PostgreSQL version recorded (deployed before postgressor recorded it); "
            f"run 'postgressor deploy --stack {state.stack}' once"
        )
    return state.pg_version
