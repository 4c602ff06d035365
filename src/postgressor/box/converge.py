"""Run pyinfra deploys against the box through pyinfra's Python API, reporting each operation."""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api import BaseStateCallback, Config, Host, Inventory, State
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from postgressor.errors import PostgressorError, UsageError
from postgressor.state import HostRecord

logging.getLogger("pyinfra").addHandler(logging.NullHandler())
logging.getLogger("pyinfra").propagate = False


@dataclass
class OpReport:
    name: str
    status: str  # changed | unchanged | failed | skipped
    commands: int = 0
    error: str = ""


@dataclass
class DeployResult:
    operations: list[OpReport] = field(default_factory=list)
    remote_commands: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def changed(self) -> int:
        return sum(op.status == "changed" for op in self.operations)

    @property
    def failed(self) -> list[OpReport]:
        return [op for op in self.operations if op.status == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "unchanged": sum(op.status == "unchanged" for op in self.operations),
            "failed": len(self.failed),
            "remote_commands": self.remote_commands,
            "seconds": round(self.seconds, 1),
            "dry_run": self.dry_run,
            "operations": [op.__dict__ for op in self.operations],
        }


OpListener = Callable[[str, OpReport | None], None]  # (op name, None at start / report at end)
Deploys = list[tuple[Callable[..., Any], dict[str, Any]]]  # (@deploy function, its keyword arguments), in order


class _Progress(BaseStateCallback):
    def __init__(self, result: DeployResult, listener: OpListener, errors: _ErrorLog) -> None:
        self.result = result
        self.listener = listener
        self.errors = errors

    @staticmethod
    def _name(state: State, op_hash: str) -> str:
        return ", ".join(sorted(state.get_op_meta(op_hash).names)) or "operation"

    def operation_host_error(self, state: State, host: Any, op_hash: str, *args: Any) -> None:  # type: ignore[override]
        # pyinfra stops before operation_end when the only host fails, so the failure is recorded here.
        name = self._name(state, op_hash)
        report = OpReport(name, "failed", error=self.errors.reason() or "failed")
        self.result.operations.append(report)
        self.listener(name, report)

    def operation_start(self, state: State, op_hash: str) -> None:  # type: ignore[override]
        self.listener(self._name(state, op_hash), None)

    def operation_end(self, state: State, op_hash: str) -> None:  # type: ignore[override]
        name = self._name(state, op_hash)
        for host in state.inventory:
            meta = state.get_op_data_for_host(host, op_hash).operation_meta
            commands = len(meta._commands or [])
            if not meta.is_complete():
                report = OpReport(name, "skipped")
            elif not meta.did_succeed():
                continue  # recorded by operation_host_error
            else:
                report = OpReport(name, "changed" if meta.did_change() else "unchanged", commands)
            self.result.operations.append(report)
            self.listener(name, report)


class _ErrorLog(logging.Handler):
    """The error lines pyinfra logs (command output of a failed operation, failed connections or facts)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = _HOST_PREFIX.sub("", _ANSI.sub("", " ".join(record.getMessage().split())))
        if message:
            self.lines.append(message)

    def reason(self) -> str:
        """The last line that says something: pyinfra's own 'Error: executed N commands' says nothing."""
        meaningful = [line for line in self.lines if not _SUMMARY.match(line)]
        return (meaningful or self.lines or [""])[-1]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HOST_PREFIX = re.compile(r"^\[[^\]]+\]\s*")
_SUMMARY = re.compile(r"^Error: executed \d+ commands?")


def ssh_inventory(host: HostRecord, known_hosts: Path) -> Inventory:
    """One host reached over SSH with the stack's key, trusting only its pinned host key."""
    data = {
        "ssh_hostname": host.address,
        "ssh_port": host.port,
        "ssh_user": host.user,
        "ssh_key": str(Path(host.key_path).expanduser()),
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_connect_retries": 2,
    }
    if host.user != "root":
        data["_sudo"] = True
    return Inventory(([(host.address, data)], {}))


def login_error(inventory: Inventory, reason: str) -> PostgressorError:
    """One line for a box pyinfra could not log in to: a refused user or key is the caller's to fix (exit 2)."""
    box = next(iter(inventory))
    user, key = box.data.get("ssh_user"), box.data.get("ssh_key")
    where = f"{box.data.get('ssh_hostname')}:{box.data.get('ssh_port')}"
    if "Authentication" in reason:
        return UsageError(f"SSH login as '{user}' on {where} with key {key} was refused; check the user (--user) "
                          "and that the key is in its authorized_keys")  # fmt: skip
    return PostgressorError(
        f"cannot log in to {where} ({reason or 'no answer'}); check the address, the firewall and that the host key "
        "matches the pinned one ('postgressor trust-host-key' re-pins a server rebuilt on purpose)"
    )


def run_deploys(
    inventory: Inventory,
    deploys: Deploys | Callable[[Host], Deploys],
    listener: OpListener,
    dry_run: bool = False,
) -> DeployResult:
    """Connect, add ``deploys`` (facts are read now), run them unless ``dry_run``, disconnect.

    ``deploys`` may be a function of the connected host (one-host inventories): it reads what it needs as facts in
    this connection and returns the deploys, so the box is reached once.
    """
    result = DeployResult(dry_run=dry_run)
    started = time.monotonic()
    errors = _ErrorLog()
    pyinfra_log = logging.getLogger("pyinfra")
    pyinfra_log.addHandler(errors)
    state = State(inventory, Config(CONNECT_TIMEOUT=20, FAIL_PERCENT=0))
    state.add_callback_handler(_Progress(result, listener, errors))
    try:
        with contextlib.suppress(PyinfraError):  # every host failed to connect: said below, with pyinfra's reason
            connect_all(state)
        if not state.activated_hosts:
            raise login_error(inventory, errors.reason())
        for box in state.inventory:
            _count_commands(box, result)
            _FactMemo(box).install()
        if callable(deploys):
            (box,) = state.inventory
            deploys = deploys(box)
        for func, kwargs in deploys:
            add_deploy(state, func, **kwargs)
        if dry_run:
            for op_hash in state.get_op_order():
                name = ", ".join(sorted(state.get_op_meta(op_hash).names))
                for box in state.inventory:
                    op_data = state.get_op_data_for_host(box, op_hash)
                    if op_data.global_arguments.get("_if"):
                        status = "conditional"  # runs only if an earlier operation changes
                    elif op_data.operation_meta._maybe_is_change is False:
                        status = "unchanged"
                    else:
                        status = "would change"
                    result.operations.append(OpReport(name, status))
        else:
            run_ops(state)
    except PyinfraError as err:
        if not result.failed:
            reason = errors.reason() or str(err)
            raise PostgressorError(f"deploy failed: {reason}") from None
    except UsageError:
        raise
    finally:
        pyinfra_log.removeHandler(errors)
        disconnect_all(state)
        result.seconds = time.monotonic() - started
    return result


class _FactMemo:
    """Read each fact once until the box changes: pyinfra 3 evaluates every operation twice (to plan, then to run)
    and reads its facts each time. A fact read again with the same arguments is answered from memory as long as no
    operation has run a command or uploaded a file since; the first such command forgets everything read before.
    Facts marked ``volatile`` (what other processes or time change: locks, health, effective settings) are read
    every time."""

    def __init__(self, box: Any) -> None:
        self.box = box
        self.values: dict[tuple[Any, str], Any] = {}
        self.reading = 0

    def install(self) -> None:
        read_fact, connector = self.box.get_fact, self.box.connector
        run, put = connector.run_shell_command, connector.put_file

        def get_fact(cls: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(cls, "volatile", False):  # what a process or a clock changes: read every time
                return read_fact(cls, *args, **kwargs)
            # pyinfra runs the read with the operation's connector arguments (_sudo, _su_user...): part of the key
            current = getattr(self.box, "current_op_global_arguments", None) or {}
            scope = repr(sorted((k, v) for k, v in current.items() if k in CONNECTOR_ARGUMENT_KEYS))
            key = (cls, repr((args, sorted(kwargs.items()))) + scope)
            if key not in self.values:
                self.reading += 1
                try:
                    self.values[key] = read_fact(cls, *args, **kwargs)
                finally:
                    self.reading -= 1
            return copy.deepcopy(self.values[key])  # an operation may change what it was given

        def changing_run(*args: Any, **kwargs: Any) -> Any:
            if not self.reading:
                self.values.clear()
            return run(*args, **kwargs)

        def changing_put(*args: Any, **kwargs: Any) -> Any:
            self.values.clear()
            return put(*args, **kwargs)

        self.box.get_fact = get_fact
        connector.run_shell_command = changing_run
        connector.put_file = changing_put


def _count_commands(box: Any, result: DeployResult) -> None:
    """Count every remote command and upload (facts included), for benchmarks and reports."""
    connector = box.connector
    run, put = connector.run_shell_command, connector.put_file

    def counted_run(*args: Any, **kwargs: Any) -> Any:
        result.remote_commands += 1
        return run(*args, **kwargs)

    def counted_put(*args: Any, **kwargs: Any) -> Any:
        result.remote_commands += 1
        return put(*args, **kwargs)

    connector.run_shell_command = counted_run
    connector.put_file = counted_put
