"""A converged box is read in one round trip and not deployed again (box/converged.py, box/converge.py).

The deploys run through pyinfra's @fake connector. ``FakeBox`` adds what a real box does with the three commands
postgressor itself sends: it keeps the record written to it, and it answers a batch by running each command in it
as the @fake connector answers that command alone (what ``sh`` does with the batch script).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pyinfra import host
from pyinfra.api import FactBase, Inventory, deploy, operation
from pyinfra.connectors.fake import FakeConnector
from pyinfra.connectors.util import CommandOutput, OutputLine
from test_deploys_fake import CONVERGED
from test_fact_memo import markers

from postgressor.box import converged
from postgressor.box.converge import DeployResult, run_deploys
from postgressor.box.deploys.base import base
from postgressor.box.deploys.postgres import postgresql
from postgressor.box.facts import PostgresScalar
from postgressor.box.layout import CONVERGED_RECORD
from postgressor.box.spec import Distro, box_spec
from postgressor.config import load_settings

BOOKWORM = Distro("debian", 12, "bookworm")
NOOP_COMMAND_LIMIT = 20  # issue 12: a no-op re-run asks the box at most this many times

UNITS_RUNNING = ["Id=fail2ban.service", "SubState=running", "Id=postgresql@15-main.service", "SubState=running",
                 "Id=unattended-upgrades.service", "SubState=running"]  # fmt: skip
UNITS_ENABLED = ["Id=fail2ban.service", "UnitFileState=enabled", "Id=postgresql@15-main.service",
                 "UnitFileState=enabled", "Id=unattended-upgrades.service", "UnitFileState=enabled"]  # fmt: skip
PACKAGES = [f"ii  {name}  1.0  amd64  x" for name in
            ("postgresql-15", "postgresql-contrib", "fail2ban", "ufw", "unattended-upgrades", "python3-systemd",
             "python3-psycopg2", "acl", "sudo", "curl", "gnupg", "ca-certificates")]  # fmt: skip
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/00-postgressor.conf"
TIMES = "2026-11-30 10:00:00.1 +0000|2026-11-30 10:00:00.1 +0000"
FILES = {SSHD_DROP_IN: f"regular file|644|root|root|131|310|{TIMES}",
     }  # fmt: skip
BASELINE = {
    **CONVERGED,
    "--property SubState": UNITS_RUNNING,
    "--property UnitFileState": UNITS_ENABLED,
    "dpkg -l": PACKAGES,
}


class FakeBox:
    """The @fake connector's box, plus the converged record and batches (see the module docstring)."""

    def __init__(self, responses: dict[str, Any]) -> None:
        self.responses = dict(responses)
        self.files = dict(FILES)  # path -> what stat prints after "path|"
        self.record = ""
        self.commands: list[str] = []

    def inventory(self) -> Inventory:
        data = {"fake_responses": self.responses, "fake_delay": 0, "fake_delay_jitter": 0}
        return Inventory(([("@fake/box", data)], {}))

    def answer(self, connector: FakeConnector, command: str, stdin: Any) -> tuple[bool, CommandOutput] | None:
        if command.startswith("stat ") and "-c '%n|" in command:  # a file stamp: one line per existing path
            words = shlex.split(command.split(" 2>/dev/null")[0])
            paths = words[words.index("--") + 1 :]
            found = [f for p in paths for f in sorted(self.files) if fnmatch.fnmatchcase(f, p)]  # as sh expands them
            return True, CommandOutput([OutputLine("stdout", f"{f}|{self.files[f]}") for f in found])
        if command.startswith(f": {converged.BATCH_MARK}"):
            return True, CommandOutput([OutputLine("stdout", line) for line in self.batch(connector, command)])
        if command.startswith("systemctl show") and converged.MERGE_MARK in command:  # units in the order given
            words = shlex.split(command.split(" | awk")[0])
            key, units = words[words.index("--property", 4) + 1], words[words.index("--property", 4) + 2 :]
            mark = re.search(r"awk -v m=(\S+) ", command)
            assert mark is not None, command
            lines = []
            for i, unit in enumerate(units):
                alone = connector._lookup_response(f"systemctl show --all --property Id --property {key} {unit}")
                block = " ".join(alone[1].stdout_lines).split("Id=")
                mine = next((b for b in block if b.startswith(unit)), f"{unit} {key}=dead").split()
                lines += [f"{mark[1]} {i}", f"Id={mine[0]}", *mine[1:]]  # as the awk prints them
            return True, CommandOutput([OutputLine("stdout", line) for line in lines])
        if converged.MERGE_MARK in command:  # psql runs each -c in turn: answer each query as it is answered alone
            words = shlex.split(command.split(" 2>/dev/null")[0])
            queries = [words[i + 1] for i, w in enumerate(words) if w == "-c"]
            lines = []
            for label, sql in zip(queries[::2], queries[1::2], strict=True):
                lines.append(label.removeprefix("SELECT '").removesuffix("'"))
                lines += connector._lookup_response(PostgresScalar().command(sql))[1].stdout_lines
            return True, CommandOutput([OutputLine("stdout", line) for line in lines])
        if f"cat > {CONVERGED_RECORD}.new" in command:
            self.record = stdin
            return True, CommandOutput([])
        if command.startswith(f"cat {CONVERGED_RECORD}"):
            return True, CommandOutput([OutputLine("stdout", line) for line in self.record.splitlines()])
        if command == f"rm -f {CONVERGED_RECORD}":
            self.record = ""
            return True, CommandOutput([])
        return None

    def batch(self, connector: FakeConnector, script: str) -> Iterator[str]:
        nonce = re.search(r"printf '%s %s begin\\n' (\w+) 0;", script)
        assert nonce is not None, script
        for i, line in enumerate(re.findall(r"begin\\n' \w+ \d+; \( (.*?)\n\) 2>", script, re.S)):
            inner = shlex.split(line)[-1] if line.startswith(("sh -c", "sudo ")) else line  # as @fake gets it
            ok, output = self.answer(connector, inner, None) or connector._lookup_response(inner)
            yield f"{nonce[1]} {i} begin"
            yield from output.stdout_lines
            yield ""
            yield f"{nonce[1]} status {0 if ok else 1}"
            yield f"{nonce[1]} stderr"
            yield from output.stderr_lines
            yield ""

    def deploy(self, monkeypatch: pytest.MonkeyPatch, deploys: Any, desired: str = "desired-1") -> DeployResult:
        real = FakeConnector.run_shell_command
        box = self

        def run_shell_command(self: FakeConnector, command: Any, *args: Any, **kwargs: Any) -> Any:
            text = command if isinstance(command, str) else command.get_masked_value()
            answered = box.answer(self, text, kwargs.get("_stdin"))
            if answered is None:
                return real(self, command, *args, **kwargs)
            self.executed_commands.append(text)
            return answered

        monkeypatch.setattr(FakeConnector, "run_shell_command", run_shell_command)
        inventory = self.inventory()
        result = run_deploys(inventory, deploys, lambda name, report: None, desired=lambda d: desired)
        self.commands = [str(c) for c in next(iter(inventory)).connector.executed_commands]
        return result

    def settle(self) -> None:
        """As if the pass just run had changed nothing (@fake answers never change, so its passes always do):
        the record it left lets the next pass be skipped."""
        record = json.loads(self.record)
        assert record["verified"] is False  # the pass changed the box: its record alone skips nothing
        self.record = json.dumps({**record, "verified": True})


def base_and_postgres(**settings: Any) -> list[Any]:
    spec = box_spec(load_settings(provider="local", **settings), BOOKWORM)
    return [(base, {"spec": spec}), (postgresql, {"spec": spec})]


def test_a_noop_rerun_skips_the_pass_in_a_few_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox(BASELINE)
    first = box.deploy(monkeypatch, base_and_postgres())
    assert not first.converged_since and first.operations and box.record
    box.settle()
    full_pass = len(box.commands)
    again = box.deploy(monkeypatch, base_and_postgres())
    assert again.converged_since and again.changed == 0 and not again.operations
    assert again.facts_compared >= 15
    assert again.remote_commands == len(box.commands) <= NOOP_COMMAND_LIMIT, box.commands
    assert len(box.commands) == 2, box.commands  # the record, then the batch (the boot wait is the caller's)
    assert full_pass > 3 * again.remote_commands
    assert not any("apt-get" in c for c in box.commands)
    assert not [c for c in box.commands if "psql" in c and not c.startswith(":")]  # every query in the batch
    batch = next(c for c in box.commands if c.startswith(f": {converged.BATCH_MARK}"))
    assert batch.count("runuser -u postgres -- psql") == 1 and batch.count("pg_has_role") >= 2  # one psql run
    assert batch.count("--property SubState") == 1 and batch.count("--property UnitFileState") == 1


DRIFTS = {
    "a unit stopped": ("--property SubState", [line.replace("running", "dead") for line in UNITS_RUNNING]),
    "a unit disabled": ("--property UnitFileState", [line.replace("=enabled", "=disabled") for line in UNITS_ENABLED]),
    "a role's membership revoked": ("pg_has_role", "f"),
    "a package removed": ("dpkg -l", [line for line in PACKAGES if "fail2ban" not in line]),
    "a firewall rule removed": ("ufw status verbose", CONVERGED["ufw status verbose"][:-2]),
    "the firewall stopped (its rules flushed, its files as they were)": ("ufw status verbose", ["Status: inactive"]),
    "password login switched back on": ("sshd -T", ["passwordauthentication yes", *CONVERGED["sshd -T"][1:]]),
    "fail2ban's sshd jail stopped (the unit still running)": (
        "sshd -T", [line.replace("fail2ban-sshd on", "fail2ban-sshd off") for line in CONVERGED["sshd -T"]]),
    "the machine resized": ("/proc/meminfo", "16777216 8 83886080"),
}  # fmt: skip


STAMP = "regular file|644|root|root|131|310|2026-11-30 10:00:00.1 +0000|2026-11-30 10:00:00.1 +0000"
FILE_DRIFTS = {
    "a managed file edited by hand": (SSHD_DROP_IN, STAMP.replace("10:00:00.1 +0000", "11:00:00.2 +0000")),
    "a managed file replaced (renamed into place)": (SSHD_DROP_IN, STAMP.replace("|131|", "|977|")),
    "a managed file's mode changed": (SSHD_DROP_IN, STAMP.replace("|644|", "|666|")),
}


@pytest.mark.parametrize("kind", list(FILE_DRIFTS))
def test_each_kind_of_file_drift_brings_the_full_pass_back(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres())
    box.settle()
    assert SSHD_DROP_IN in box.record  # stamped, not read back through its File and Sha1File facts
    assert box.deploy(monkeypatch, base_and_postgres()).converged_since
    path, stamp = FILE_DRIFTS[kind]
    box.files[path] = stamp
    result = box.deploy(monkeypatch, base_and_postgres())
    assert not result.converged_since and result.operations, kind


@pytest.mark.parametrize("kind", list(DRIFTS))
def test_each_kind_of_drift_brings_the_full_pass_back(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres())
    box.settle()
    matcher, drifted = DRIFTS[kind]
    box.responses[matcher] = drifted
    result = box.deploy(monkeypatch, base_and_postgres())
    assert not result.converged_since and result.operations, kind


def test_a_changed_config_runs_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres(), desired="desired-1")
    result = box.deploy(monkeypatch, base_and_postgres(), desired="desired-2")
    assert not result.converged_since and result.operations


def test_the_desired_digest_follows_settings_code_and_uploads(tmp_path: Any) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"one")
    first = converged.desired_digest(base_and_postgres(), [str(archive)])
    assert converged.desired_digest(base_and_postgres(), [str(archive)]) == first
    assert converged.desired_digest(base_and_postgres(postgres={"max_connections": 150}), [str(archive)]) != first
    archive.write_bytes(b"other")
    assert converged.desired_digest(base_and_postgres(), [str(archive)]) != first


def test_a_record_naming_a_module_not_loaded_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres())
    box.record = box.record.replace('"fact": "pyinfra.facts.server:Command"', '"fact": "antigravity:Command"', 1)
    box.record = re.sub(r'"fact": "[^"]+"', '"fact": "antigravity:Fly"', box.record, count=1)
    result = box.deploy(monkeypatch, base_and_postgres())
    assert not result.converged_since and result.operations
    assert converged.fact_class("antigravity:Fly") is None and converged.fact_class("os:path") is None


def test_a_pass_removes_the_old_record_before_it_changes_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres())
    box.deploy(monkeypatch, base_and_postgres(), desired="desired-2")
    removal = box.commands.index(f"rm -f {CONVERGED_RECORD}")
    first_change = next(i for i, c in enumerate(box.commands) if "apt-get" in c or "ufw allow" in c or "install" in c)
    assert removal < first_change


class Health(FactBase[str]):
    volatile = True  # what another process changes: a batch answers it once

    def command(self) -> str:
        return "curl -s http://127.0.0.1:3000/v1/health"

    def process(self, output: list[str]) -> str:
        return "\n".join(output)


@operation()
def wait_healthy() -> Any:
    for _ in range(3):
        if host.get_fact(Health) == "ok":
            host.noop("healthy")
            return
    yield "false"


@deploy("Health")
def health() -> None:
    wait_healthy(name="healthy")


def test_a_volatile_fact_is_answered_from_a_batch_once(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox({"v1/health": "starting"})
    box.deploy(monkeypatch, [(health, {})])
    box.responses["v1/health"] = "ok"
    box.deploy(monkeypatch, [(health, {})])  # a pass: the box changed; its record says "ok"
    box.responses["v1/health"] = "starting"
    result = box.deploy(monkeypatch, [(health, {})])
    assert not result.converged_since
    reads = [c for c in box.commands if "v1/health" in c and not c.startswith(":")]
    assert len(reads) >= 2, box.commands  # after the batch's one answer, each poll asks the box


def test_the_batch_script_keeps_each_commands_output_status_and_stderr() -> None:
    commands = ["printf 'a\\nb\\n'", "printf 'no newline'", "echo out; echo err >&2; exit 3", "true",
                "printf '\\n\\n'", "cat"]  # fmt: skip
    script = converged.batch_script(commands, "n0nce")
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, stdin=subprocess.PIPE)
    answers = converged.parse_batch(proc.stdout.split("\n")[:-1], "n0nce", len(commands))
    got = {i: (ok, out.stdout_lines, out.stderr_lines) for i, (ok, out) in answers.items()}
    assert got == {
        0: (True, ["a", "b"], []),
        1: (True, ["no newline"], []),
        2: (False, ["out"], ["err"]),
        3: (True, [], []),
        4: (True, ["", ""], []),
        5: (True, [], []),  # no input: a command that reads stdin ends at once
    }


def test_only_a_pass_that_changed_nothing_lets_the_next_one_be_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox({"cat /etc/marker": "old"})
    changed = box.deploy(monkeypatch, [(markers, {"values": ["new"]})])
    assert changed.changed == 1 and json.loads(box.record)["verified"] is False
    box.responses["cat /etc/marker"] = "new"  # what the change made
    checked = box.deploy(monkeypatch, [(markers, {"values": ["new"]})])
    assert not checked.converged_since and checked.changed == 0 and json.loads(box.record)["verified"] is True
    assert box.deploy(monkeypatch, [(markers, {"values": ["new"]})]).converged_since


def test_a_record_keeps_only_what_the_last_pass_read(monkeypatch: pytest.MonkeyPatch) -> None:
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres())
    box.settle()
    spec = base_and_postgres()[0]
    box.deploy(monkeypatch, [spec], desired="base only")  # the facts of the PostgreSQL deploy are not read
    fresh = FakeBox(BASELINE)
    fresh.deploy(monkeypatch, [spec], desired="base only")
    assert len(json.loads(box.record)["facts"]) == len(json.loads(fresh.record)["facts"])


def test_a_command_that_failed_in_the_batch_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server booted from a snapshot of a converged box: PostgreSQL is not up when the batch runs.
    box = FakeBox(BASELINE)
    box.deploy(monkeypatch, base_and_postgres())
    box.settle()
    down = {"success": False, "stderr": "psql: error: connection to server failed"}
    box.responses = {"pg_roles": down, **box.responses}
    real_batch = box.batch

    def batch_then_up(connector: FakeConnector, script: str) -> Iterator[str]:
        yield from real_batch(connector, script)
        del box.responses["pg_roles"]  # up by the time the operations read the roles

    monkeypatch.setattr(box, "batch", batch_then_up)
    result = box.deploy(monkeypatch, base_and_postgres())
    assert not result.converged_since and not result.failed
    batch = next(i for i, c in enumerate(box.commands) if c.startswith(f": {converged.BATCH_MARK}"))
    assert any("pg_roles" in c for c in box.commands[batch + 1 :])  # read again, from the box
