"""A fact is read once per run until an operation changes the box (box/converge.py _FactReader)."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, Inventory, deploy, operation

from postgressor.box.converge import run_deploys


class Marker(FactBase[str]):
    def command(self) -> str:
        return "cat /etc/marker"

    def process(self, output: list[str]) -> str:
        return "\n".join(output)


@operation()
def marker(value: str) -> Any:
    if host.get_fact(Marker) != value:
        yield f"echo {value} > /etc/marker"
    else:
        host.noop(f"/etc/marker says {value}")


@deploy("Markers")
def markers(values: list[str]) -> None:
    for value in values:
        marker(name=f"marker {value}", value=value)


def run(values: list[str], on_box: str) -> tuple[list[str], Any]:
    data = {"fake_responses": {"cat /etc/marker": on_box}, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/box", data)], {}))
    result = run_deploys(inventory, [(markers, {"values": values})], lambda name, report: None)
    return [str(c) for c in next(iter(inventory)).connector.executed_commands], result


def test_a_fact_is_read_once_when_nothing_changes() -> None:
    commands, result = run(["a", "a", "a"], on_box="a")
    assert [op.status for op in result.operations] == ["unchanged"] * 3
    # pyinfra evaluates each of the three operations twice: six reads without the memo
    assert sum("cat /etc/marker" in c for c in commands) == 1, commands


def test_a_change_makes_later_operations_read_the_fact_again() -> None:
    commands, result = run(["b", "a"], on_box="a")
    assert [op.status for op in result.operations] == ["changed", "unchanged"]
    reads = [i for i, c in enumerate(commands) if "cat /etc/marker" in c]
    write = next(i for i, c in enumerate(commands) if "echo b" in c)
    assert len(reads) == 2 and reads[0] < write < reads[1], commands


class Clock(FactBase[str]):
    volatile = True  # what time or another process changes: never answered from memory

    def command(self) -> str:
        return "date +%s"

    def process(self, output: list[str]) -> str:
        return "\n".join(output)


@operation()
def clock_read() -> Any:
    host.get_fact(Clock)
    host.noop("read the clock")
    yield from ()


@deploy("Clocks")
def clocks() -> None:
    clock_read(name="first")
    clock_read(name="second")


def test_a_volatile_fact_is_read_every_time() -> None:
    data = {"fake_responses": {"date +%s": "1"}, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/box", data)], {}))
    run_deploys(inventory, [(clocks, {})], lambda name, report: None)
    commands = [str(c) for c in next(iter(inventory)).connector.executed_commands]
    assert sum("date +%s" in c for c in commands) == 4, commands  # two operations, each planned and run
