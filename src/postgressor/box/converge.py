"""Run pyinfra deploys against the box through pyinfra's Python API, reporting each operation."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api import BaseStateCallback, Config, Host, Inventory, State, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from postgressor.box import converged
from postgressor.box.layout import CONVERGED_RECORD
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
    converged_since: str = ""  # set when the pass was skipped: the time of the deploy the box still matches
    facts_compared: int = 0  # the facts read back to find that out

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
            "converged_since": self.converged_since or None,
            "facts_compared": self.facts_compared,
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
    desired: Callable[[Deploys], str] | None = None,
    wait_ready: Callable[[Host], object] | None = None,
) -> DeployResult:
    """Connect, add ``deploys`` (facts are read now), run them unless ``dry_run``, disconnect.

    ``deploys`` may be a function of the connected host (one-host inventories): it reads what it needs as facts in
    this connection and returns the deploys, so the box is reached once.

    With ``desired`` (the digest of what the deploys would make, ``converged.desired_digest``), the box's converged
    record is used: the facts it names are read in one round trip, and when the digest and every fact still match,
    no operation runs (``converged_since`` says since when). A pass that succeeds leaves a new record.

    ``wait_ready(host)`` runs on each connected host before any other fact is read (e.g. until its boot has
    finished: a unit still starting would read as stopped, and the pass would start it itself).
    """
    result = DeployResult(dry_run=dry_run)
    started = time.monotonic()
    errors = _ErrorLog()
    pyinfra_log = logging.getLogger("pyinfra")
    pyinfra_log.addHandler(errors)
    state = State(inventory, Config(CONNECT_TIMEOUT=20, FAIL_PERCENT=0))
    state.add_callback_handler(_Progress(result, listener, errors))
    readers: list[_FactReader] = []
    try:
        with contextlib.suppress(PyinfraError):  # every host failed to connect: said below, with pyinfra's reason
            connect_all(state)
        if not state.activated_hosts:
            raise login_error(inventory, errors.reason())
        for box in state.inventory:
            _count_commands(box, result)
            if wait_ready is not None:
                wait_ready(box)
            readers.append(_FactReader(box))
            readers[-1].install()
        converging = desired is not None and len(readers) == 1  # the record serves one-host runs
        record = readers[0].read_record() if converging else None
        if record is not None:  # every fact it names, the ones ``deploys`` reads first included: one round trip
            readers[0].prefetch(record.commands, converged.merges_of(record))
        if callable(deploys):
            (box,) = state.inventory
            deploys = deploys(box)
        wanted = desired(deploys) if converging and desired is not None else ""
        if record is not None and not dry_run:
            if record.verified and record.desired == wanted:
                if readers[0].matches(record):
                    result.converged_since, result.facts_compared = record.at, len(record.facts)
                    return result
                # The box moved since its record (drift, or a boot still under way): the pass reads it live,
                # never from answers taken while services were still starting.
                readers[0].forget()
            readers[0].write_record(None)  # a pass cut off half-way must not leave the old record behind
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
            if wanted and not result.failed:
                # A pass that changed nothing read exactly what a converged box needs read: its record may let the
                # next pass be skipped. After changes, the record only saves the next pass most of its reads.
                readers[0].write_record(readers[0].record(wanted, verified=result.changed == 0))
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


class _FactReader:
    """Read each fact once until the box changes, and keep what was read for the converged record.

    pyinfra 3 evaluates every operation twice (to plan, then to run) and reads its facts each time. A fact read
    again with the same arguments is answered from memory as long as no operation has run a command or uploaded
    a file since; the first such command forgets everything read before. Facts marked ``volatile`` (what other
    processes or time change: locks, health, effective settings) are read every time. Commands answered by a
    batch (``prefetch``) never reach the box: pyinfra processes those answers as its own."""

    def __init__(self, box: Any) -> None:
        self.box = box
        self.values: dict[tuple[Any, str], Any] = {}
        self.reads: dict[tuple[Any, str], converged.FactRead] = {}  # every fact asked for, in order
        self.answers: dict[str, tuple[bool, Any]] = {}  # shell line -> (succeeded, CommandOutput), from a batch
        self.reading: list[converged.FactRead] = []

    def install(self) -> None:
        read_fact, connector = self.box.get_fact, self.box.connector
        self.run, put = connector.run_shell_command, connector.put_file

        def get_fact(cls: Any, *args: Any, **kwargs: Any) -> Any:
            # pyinfra runs the read with the operation's connector arguments (_sudo, _su_user...): part of the key
            current = getattr(self.box, "current_op_global_arguments", None) or {}
            call = {**{k: v for k, v in current.items() if k in CONNECTOR_ARGUMENT_KEYS}, **kwargs}
            key = (cls, repr((args, sorted(call.items()))))
            read = self.reads.setdefault(key, converged.FactRead(cls, args, call))
            if key in self.values and not getattr(cls, "volatile", False):
                return copy.deepcopy(self.values[key])  # an operation may change what it was given
            self.reading.append(read)
            try:
                value = read_fact(cls, *args, **kwargs)
            finally:
                self.reading.pop()
            self.values[key] = value
            return copy.deepcopy(value)

        def changing_run(command: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.reading:
                self.forget()
                return self.run(command, *args, **kwargs)
            line = converged.raw_command(self.box, command, kwargs)
            if line not in self.reading[-1].commands:
                self.reading[-1].commands.append(line)
            if line in self.answers and converged.cacheable(kwargs):
                # what time or another process changes is answered from a batch once, then asked again
                volatile = getattr(self.reading[-1].cls, "volatile", False)
                return self.answers.pop(line) if volatile else self.answers[line]
            return self.run(command, *args, **kwargs)

        def changing_put(*args: Any, **kwargs: Any) -> Any:
            self.forget()
            return put(*args, **kwargs)

        self.box.get_fact = get_fact
        connector.run_shell_command = changing_run
        connector.put_file = changing_put

    def forget(self) -> None:
        """The box is about to change: what was read or fetched before no longer holds."""
        self.values.clear()
        self.answers.clear()

    def prefetch(self, commands: list[str], merges: Iterable[converged.Merge] = ()) -> None:
        """Run ``commands`` (shell lines as facts ran them) in one round trip; facts then read their answers.
        A merged command's answer is split into its members' answers."""
        answers = converged.run_batch(self.box, self.run, commands)
        for merge in merges:
            answer = answers.pop(merge.command, None)
            if answer is not None:
                answers.update(merge.split(answer))
        # A command that failed is asked again when its fact is read: on a box still starting (a server booted
        # from a snapshot), PostgreSQL may answer by then, and a failure kept would fail the fact.
        self.answers.update({line: answer for line, answer in answers.items() if answer[0]})

    def read_record(self) -> converged.Record | None:
        ok, output = self.run(StringCommand(f"cat {CONVERGED_RECORD} 2>/dev/null || true"), **self._root())
        return converged.parse_record("\n".join(output.stdout_lines)) if ok else None

    def matches(self, record: converged.Record) -> bool:
        """Every fact and file stamp the record names reads the value it recorded (``prefetch`` its commands first:
        then this asks the box nothing). Its reads are not this run's: they stay out of the next record."""
        reads = dict(self.reads)
        try:
            return self._matches(record)
        finally:
            self.reads = reads

    def _matches(self, record: converged.Record) -> bool:
        for entry in record.facts:
            if "stamp" in entry:
                answer = self.answers.get(str(entry["stamp"]))
                if answer is None or converged.digest([answer[0], answer[1].stdout_lines]) != entry.get("value"):
                    return False
                continue
            cls = converged.fact_class(str(entry.get("fact")))
            if cls is None:
                return False
            try:
                value = self.box.get_fact(cls, *entry["args"], **entry["kwargs"])
            except Exception:  # a fact that cannot be read now is drift: the full pass says why
                return False
            if converged.digest(value) != entry.get("value"):
                return False
        return True

    def record(self, desired: str, verified: bool) -> converged.Record | None:
        """The box as this deploy left it, read in one round trip: every fact read in this run, except that facts
        about files are replaced by a stamp of those files. None when a fact's arguments are not plain data or a
        fact cannot be read."""
        replayed: list[converged.FactRead] = []
        groups: dict[tuple[bool, bool], set[str]] = {}
        for read in self.reads.values():
            paths = converged.fact_paths(read)
            if paths is None:
                replayed.append(read)
            else:
                groups.setdefault(paths[1:], set()).update(paths[0])
        stamps = [converged.raw_command(self.box, StringCommand(command), self._root())
                  for command in converged.stamp_commands(groups)]  # fmt: skip
        merges = self._merges(replayed)
        merged = {line for merge in merges for line in merge.members}
        lines = [line for read in replayed for line in read.commands if line not in merged]
        commands = list(dict.fromkeys([*lines, *(merge.command for merge in merges), *stamps]))
        self.forget()
        self.prefetch(commands, merges)
        entries: list[dict[str, Any]] = []
        for read in replayed:
            entry = converged.recordable(read)
            if entry is None:
                return None
            try:
                entry["value"] = converged.digest(self.box.get_fact(read.cls, *read.args, **read.kwargs))
            except Exception:  # no record: the next deploy runs its full pass
                return None
            entries.append(entry)
        for line in stamps:
            answer = self.answers.get(line)
            if answer is None:
                return None
            entries.append({"stamp": line, "value": converged.digest([answer[0], answer[1].stdout_lines])})
        return converged.Record(converged.now(), desired, entries, commands,
                                [dataclasses.asdict(m) for m in merges], verified)  # fmt: skip

    def _merges(self, reads: list[converged.FactRead]) -> list[converged.Merge]:
        """One command for the reads of a fact that can merge them (``converged.merging``), grouped by the
        arguments they must share and the connector arguments."""
        groups: dict[str, tuple[Callable[..., str], dict[str, Any], list[tuple[dict[str, Any], str]]]] = {}
        for read in reads:
            rule = converged.merging(read)
            if rule is None:
                continue
            merge_by, merged_command, arguments = rule
            connector = {k: v for k, v in read.kwargs.items() if k.startswith("_")}
            key = repr((read.name, [arguments.get(k) for k in merge_by], sorted(connector.items())))
            groups.setdefault(key, (merged_command, connector, []))[2].append((arguments, read.commands[0]))
        merges = []
        mark = f"{converged.MERGE_MARK}-{secrets.token_hex(6)}"
        for merged_command, connector, members in groups.values():
            if len(members) > 1:
                command = merged_command([arguments for arguments, _ in members], mark)
                line = converged.raw_command(self.box, StringCommand(command), connector)
                merges.append(converged.Merge(line, [member for _, member in members], mark))
        return merges

    def write_record(self, record: converged.Record | None) -> None:
        """Keep ``record`` on the box (root only), or remove the one there when ``record`` is None."""
        if record is None:
            self.run(StringCommand(f"rm -f {CONVERGED_RECORD}"), **self._root())
            return
        self.run(StringCommand(f"umask 077 && mkdir -p {Path(CONVERGED_RECORD).parent} && "
                               f"cat > {CONVERGED_RECORD}.new && mv {CONVERGED_RECORD}.new {CONVERGED_RECORD}"),
                 _stdin=record.as_json(), **self._root())  # fmt: skip

    def _root(self) -> dict[str, Any]:
        return {"_sudo": True} if self.box.data.get("_sudo") else {}


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
