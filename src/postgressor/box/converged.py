"""A converged box is not asked the same thing twice: its facts in one round trip, and no operation pass when
nothing changed since the last successful deploy.

After a deploy succeeds, the box keeps a record (``layout.CONVERGED_RECORD``, root only, JSON; ``Record``)::

    {"version": 1, "at": ISO-8601 time, "desired": sha256 of what was deployed (``desired_digest``),
     "facts": [{"fact": "module:Class", "args": [...], "kwargs": {...}, "value": sha256 of its value}
               or {"stamp": a stat of the files the file facts read, "value": sha256 of its output}, ...],
     "commands": [the shell lines the batch runs, after sudo wrapping],
     "merges": [{"command", "members", "mark"}: one command answering several facts' commands],
     "verified": true when the pass that wrote it changed nothing}

The next deploy runs the recorded commands in one SSH command (``run_batch``) and pyinfra reads its facts from
those answers exactly as it would from the box. When the record is verified and the desired state and every
value match, no operation would change anything: the pass is skipped. Any drift (a file edited by hand, a unit
stopped, a role dropped, a firewall rule removed, a package removed, sshd's effective settings) changes a value,
and the full pass runs and repairs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import secrets
import shlex
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyinfra.api import FactBase, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.connectors.util import CommandOutput, OutputLine, make_unix_command_for_host

import postgressor
from postgressor.box.layout import CONVERGED_RECORD

RECORD_VERSION = 1
_CODE_ROOT = Path(__file__).parent  # the deploys, operations, facts and templates: part of the desired state
_VOLATILE_KEYS = frozenset({"atime"})  # read times in pyinfra's File fact: reading a file is not drift
# Connector arguments a cached answer can stand in for (others, such as _stdin or _success_exit_codes, go to the box)
CACHEABLE_ARGUMENTS = frozenset({"_sudo", "_sudo_user", "_use_sudo_login", "_preserve_sudo_env", "_su_user",
                                 "_use_su_login", "_preserve_su_env", "_su_shell", "_doas", "_doas_user",
                                 "_shell_executable", "_chdir", "_env", "_timeout"})  # fmt: skip


def canonical(value: Any) -> Any:
    """``value`` as JSON-able data with a stable order: dataclasses as dicts, sets sorted, local paths as the
    digests of their files, times in ISO form; dict keys in ``_VOLATILE_KEYS`` are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                if k not in _VOLATILE_KEYS}  # fmt: skip
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):  # a local file or directory a deploy uploads: its files' content
        if value.is_dir():
            return [str(value), [local_file_digest(str(p)) for p in sorted(value.iterdir()) if p.is_file()]]
        return local_file_digest(str(value))
    if isinstance(value, bytes):
        return value.hex()
    if callable(value):
        return f"{getattr(value, '__module__', '')}:{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(value), sort_keys=True).encode()).hexdigest()


def code_digest() -> str:
    """sha256 of postgressor's version and every file of its deploys (modules and templates)."""
    h = hashlib.sha256(postgressor.__version__.encode())
    for path in sorted(p for p in _CODE_ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".j2")):
        h.update(str(path.relative_to(_CODE_ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def local_file_digest(path: str) -> list[Any]:
    """(path, sha256 of its content) of a local file a deploy uploads; (path, None) when it is missing. Content,
    not times: the gateway's tarball is written again, byte for byte the same, on every run."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as src:
            while chunk := src.read(1 << 20):
                h.update(chunk)
    except OSError:
        return [path, None]
    return [path, h.hexdigest()]


def desired_digest(deploys: Iterable[tuple[Any, dict[str, Any]]], uploads: Iterable[str] = ()) -> str:
    """sha256 of what a pass would deploy: each deploy and its arguments, postgressor's deploy code, and the
    content of the local files it uploads (``uploads``)."""
    return digest({"deploys": [[func, kwargs] for func, kwargs in deploys], "code": code_digest(),
                   "uploads": [local_file_digest(p) for p in uploads]})  # fmt: skip


@dataclasses.dataclass
class FactRead:
    """One fact as an operation asked for it: its class, arguments (connector ones such as _sudo_user included)
    and the exact shell lines it ran."""

    cls: type[FactBase]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    commands: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.cls.__module__}:{self.cls.__qualname__}"


@dataclasses.dataclass
class Record:
    at: str
    desired: str
    facts: list[dict[str, Any]]  # {"fact", "args", "kwargs", "value"} or {"stamp": shell line, "value"}
    commands: list[str]  # what the batch runs
    merges: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # Merge as {"command", "members", "mark"}
    verified: bool = False  # written after a pass that changed nothing: only such a record lets a pass be skipped

    def as_json(self) -> str:
        return json.dumps({"version": RECORD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)


def merges_of(record: Record) -> list[Merge]:
    return [Merge(m["command"], m["members"], m["mark"]) for m in record.merges]


def parse_record(text: str) -> Record | None:
    """The record the box holds, or None when there is none or it is not one this version wrote."""
    try:
        data = json.loads(text)
        if data.get("version") != RECORD_VERSION:
            return None
        merges = [{"command": str(m["command"]), "members": [str(x) for x in m["members"]], "mark": str(m["mark"])}
                  for m in data.get("merges", [])]  # fmt: skip
        return Record(str(data["at"]), str(data["desired"]), list(data["facts"]), [str(c) for c in data["commands"]],
                      merges, data.get("verified") is True)  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def fact_class(name: str) -> type[FactBase] | None:
    """The fact class ``module:Class`` names, from modules this process has already imported (a record on the
    box never makes the CLI import anything)."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    cls = getattr(module, qualname, None) if module is not None and "." not in qualname else None
    return cls if isinstance(cls, type) and issubclass(cls, FactBase) else None


def recordable(read: FactRead) -> dict[str, Any] | None:
    """The record's entry for ``read`` (without its value), or None when its arguments are not plain data."""
    entry = {"fact": read.name, "args": list(read.args), "kwargs": read.kwargs}
    try:
        return entry if json.loads(json.dumps(entry)) == entry else None
    except (TypeError, ValueError):
        return None


def cacheable(arguments: dict[str, Any]) -> bool:
    """Whether a command run with connector ``arguments`` can be answered from a batch."""
    if list(arguments.get("_success_exit_codes") or [0]) != [0]:
        return False
    used = {k for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS and v}
    return used - {"_success_exit_codes", "_retries", "_retry_delay"} <= CACHEABLE_ARGUMENTS


# Facts whose value follows from files alone: (the argument naming the path or paths, read through symlinks).
# Their files are compared by one stat of all of them (``stamp_commands``) instead of each fact's own command.
PATH_FACTS = {
    "pyinfra.facts.files:File": ("path", False),
    "pyinfra.facts.files:Link": ("path", False),
    "pyinfra.facts.files:Directory": ("path", False),
    "pyinfra.facts.files:Md5File": ("path", True),
    "pyinfra.facts.files:Sha1File": ("path", True),
    "pyinfra.facts.files:Sha256File": ("path", True),
    "pyinfra.facts.files:Sha384File": ("path", True),
    "pyinfra.facts.files:FindInFile": ("path", True),
    "postgressor.box.facts:FileText": ("path", True),
    "postgressor.box.facts:FileMtime": ("paths", False),
}
# A file's identity, type, mode, owner, size and times to the nanosecond: any write, rename into place, chmod or
# chown changes it (the change time cannot be set by hand). A directory's times change with its entries, which
# pyinfra's directory operations never look at.
FILE_STAMP = "%n|%F|%a|%U|%G|%i|%s|%y|%z"
DIRECTORY_STAMP = "%n|%F|%a|%U|%G|%i"


def fact_arguments(read: FactRead) -> dict[str, Any] | None:
    """The fact's own arguments by name, defaults included (None when they do not fit its command)."""
    given = {k: v for k, v in read.kwargs.items() if not k.startswith("_")}
    try:
        bound = inspect.signature(read.cls().command).bind(*read.args, **given)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def fact_paths(read: FactRead) -> tuple[list[str], bool, bool] | None:
    """(paths, read through symlinks, a directory fact) for a fact in ``PATH_FACTS``, else None."""
    follows = getattr(read.cls, "follows_files", None)
    if follows:
        return list(follows), True, False
    rule = PATH_FACTS.get(read.name)
    if rule is None:
        return None
    argument, follow = rule
    paths = (fact_arguments(read) or {}).get(argument)
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return None
    return paths, follow, read.name.endswith(":Directory")


def stamp_commands(groups: dict[tuple[bool, bool], set[str]]) -> list[str]:
    """One stat command per (read through symlinks, directories) group of paths; a missing path prints nothing, and
    a ``*`` pattern stands for the files that match it then."""
    commands = []
    for (follow, directories), paths in sorted(groups.items()):
        if paths:
            stamp = DIRECTORY_STAMP if directories else FILE_STAMP
            quoted = " ".join(shlex.quote(p).replace("*", "'*'") for p in sorted(paths))  # a * stays a pattern
            commands.append(f"stat {'-L ' if follow else ''}-c '{stamp}' -- {quoted} 2>/dev/null; true")
    return commands


MERGE_MARK = "postgressor-merge"


@dataclasses.dataclass
class Merge:
    """Several facts' commands answered by one (``command``): ``members`` are their shell lines, in the order of
    the ``<mark> <i>`` lines that start each one's output (``mark``: MERGE_MARK and a random part, new for each
    record, so no output a box can be made to print in advance splits it)."""

    command: str
    members: list[str]
    mark: str

    def split(self, answer: tuple[bool, CommandOutput]) -> dict[str, tuple[bool, CommandOutput]]:
        """Each member's answer, or {} when the merged command failed or a member's mark is missing."""
        ok, output = answer
        parts: dict[int, list[str]] = {}
        current: list[str] | None = None
        for line in output.stdout_lines:
            mark, _, index = line.partition(" ")
            if mark == self.mark and index.isdigit():
                current = parts.setdefault(int(index), [])
            elif current is not None:
                current.append(line)
        if not ok or set(parts) != set(range(len(self.members))):
            return {}
        return {line: (True, CommandOutput([OutputLine("stdout", text) for text in parts[i]]))
                for i, line in enumerate(self.members)}  # fmt: skip


def _systemd_merge(state_key: str) -> Callable[[list[dict[str, Any]], str], str]:
    """pyinfra's SystemdStatus/SystemdEnabled for several units in one ``systemctl show``: it prints the units
    in the order given, each starting with its ``Id=`` line (checked on systemd 252)."""

    def merged_command(calls: list[dict[str, Any]], mark: str) -> str:
        units = " ".join(shlex.quote(_unit(call["services"])) for call in calls)
        return (f"systemctl show --all --property Id --property {state_key} {units} | "
                f"awk -v m={mark} '/^Id=/ {{print m \" \" i++}} /./ {{print}}'")  # fmt: skip

    return merged_command


def _unit(services: str | list[str]) -> str:
    return services if isinstance(services, str) else services[0]


def _one_system_unit(arguments: dict[str, Any]) -> bool:
    services = arguments.get("services")
    one = isinstance(services, str) or (isinstance(services, list) and len(services) == 1 and
                                        isinstance(services[0], str))  # fmt: skip
    return one and not any(arguments.get(k) for k in ("user_mode", "machine", "user_name"))


# pyinfra's facts that can share one command, declared as facts of ours declare it (``merge_by``, a
# ``merged_command``), with the reads it covers
_PYINFRA_MERGES: dict[str, tuple[tuple[str, ...], Callable[[list[dict[str, Any]], str], str],
                                 Callable[[dict[str, Any]], bool]]] = {
    "pyinfra.facts.systemd:SystemdStatus": ((), _systemd_merge("SubState"), _one_system_unit),
    "pyinfra.facts.systemd:SystemdEnabled": ((), _systemd_merge("UnitFileState"), _one_system_unit),
}  # fmt: skip


def merging(
    read: FactRead,
) -> tuple[tuple[str, ...], Callable[[list[dict[str, Any]], str], str], dict[str, Any]] | None:
    """(the arguments reads must share, the merged command, this read's arguments by name) when ``read`` can
    share a command with others."""
    arguments = fact_arguments(read)
    if arguments is None or len(read.commands) != 1:
        return None
    merged = getattr(read.cls, "merged_command", None)
    if merged is not None:
        return tuple(getattr(read.cls, "merge_by", ())), merged, arguments
    rule = _PYINFRA_MERGES.get(read.name)
    if rule is None or not rule[2](arguments):
        return None
    return rule[0], rule[1], arguments


def raw_command(box: Any, command: Any, arguments: dict[str, Any]) -> str:
    """The shell line the SSH connector runs for ``command`` with connector ``arguments`` (sudo wrapping and all)."""
    if not isinstance(command, StringCommand):
        command = StringCommand(command)
    wrapping = {k: v for k, v in arguments.items()
                if k in CONNECTOR_ARGUMENT_KEYS and k not in ("_get_pty", "_timeout", "_stdin", "_success_exit_codes")}
    return make_unix_command_for_host(box.state, box, command, **wrapping).get_raw_value()


BATCH_MARK = "postgressor-batch"
BATCH_TIMEOUT = 1200  # seconds: a fact may wait for apt (AptBusy, 900 s) as the deploy itself would


def batch_script(commands: list[str], nonce: str) -> str:
    """One shell script that runs all ``commands`` at once, each with no input, and then prints, for command i::

        <nonce> <i> begin
        its stdout, then one newline
        <nonce> status <exit status>
        <nonce> stderr
        its stderr, then one newline

    (one ``cat`` for all the output: under emulation each process started costs about 0.1 s)."""
    lines = [f": {BATCH_MARK}", "d=$(mktemp -d) || exit 1", "trap 'rm -rf \"$d\"' EXIT"]
    for i, command in enumerate(commands):
        lines.append(f"{{ printf '%s %s begin\\n' {nonce} {i}; ( {command}\n) 2>\"$d/{i}e\" </dev/null; "
                     f"printf '\\n%s status %s\\n%s stderr\\n' {nonce} \"$?\" {nonce}; printf '\\n' >>\"$d/{i}e\"; "
                     f"}} >\"$d/{i}\" &")  # fmt: skip
    lines.append("wait")
    lines.append("cd \"$d\" && cat " + " ".join(f"{i} {i}e" for i in range(len(commands))))
    return "\n".join(lines)


def parse_batch(lines: list[str], nonce: str, count: int) -> dict[int, tuple[bool, CommandOutput]]:
    """Each command's (succeeded, output) from ``batch_script``'s output lines, by index; a command whose status
    line is missing (the batch was cut off) has no answer."""
    answers: dict[int, tuple[bool, CommandOutput]] = {}
    current: int | None = None
    status: int | None = None
    stdout: list[str] = []
    stderr: list[str] = []
    buffer = stdout

    def close() -> None:
        if current is None or status is None:
            return
        for part in (stdout, stderr):
            if part and part[-1] == "":  # the newline printed after each part
                part.pop()
        output = [OutputLine("stdout", line) for line in stdout] + [OutputLine("stderr", line) for line in stderr]
        answers[current] = (status == 0, CommandOutput(output))

    for line in lines:
        head = line.split(" ")
        if len(head) == 3 and head[0] == nonce and head[1].isdigit() and head[2] == "begin":
            close()
            current, status, stdout, stderr = int(head[1]), None, [], []
            buffer = stdout
        elif len(head) == 3 and head[0] == nonce and head[1] == "status" and head[2].isdigit():
            status = int(head[2])
        elif line == f"{nonce} stderr":
            buffer = stderr
        elif current is not None:
            buffer.append(line)
    close()
    return {i: answer for i, answer in answers.items() if i < count}


def run_batch(box: Any, run: Any, commands: list[str]) -> dict[str, tuple[bool, CommandOutput]]:
    """Run ``commands`` (shell lines as ``raw_command`` gives them) in one SSH command through the connector's
    ``run``; returns each one's (succeeded, output), or {} when the batch itself failed."""
    if not commands:
        return {}
    nonce = secrets.token_hex(8)
    ok, output = run(StringCommand(batch_script(commands, nonce)), _timeout=BATCH_TIMEOUT)
    if not ok and not output.stdout_lines:
        return {}
    answers = parse_batch(output.stdout_lines, nonce, len(commands))
    return {commands[i]: answer for i, answer in answers.items()}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["CONVERGED_RECORD", "FactRead", "Record", "desired_digest", "parse_record", "run_batch"]
