"""Each custom operation against fixture facts: the commands it yields, or the reason it gives for doing nothing.

Fixtures follow pyinfra's tests/operations/<op>/<case>.json: ``args``/``kwargs``, the ``facts`` the operation
reads, then either ``commands`` or ``noop_description``.
"""

from __future__ import annotations

from typing import Any

import pytest
from fake_host import FakeHost, fixtures
from pyinfra.api import FileUploadCommand

from postgressor.box import operations

CASES = fixtures("operations")


@pytest.mark.parametrize(("name", "fixture"), CASES, ids=[name for name, _ in CASES])
def test_operation(name: str, fixture: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHost(fixture.get("facts", {}))
    monkeypatch.setattr(operations, "host", fake)
    op = getattr(operations, name.split("/")[0])
    commands = [command_text(c) for c in op._inner(*fixture.get("args", []), **fixture.get("kwargs", {}))]
    assert commands == fixture.get("commands", [])
    if "noop_description" in fixture:
        assert fake.noops == [fixture["noop_description"]]
    else:
        assert commands and not fake.noops, "an operation that changes something says nothing about a noop"


def command_text(command: Any) -> str:
    """A shell command as its text; an upload as ``upload <what> to <dest>`` (its source read, for the fixture)."""
    if isinstance(command, FileUploadCommand):
        source = command.src.getvalue() if hasattr(command.src, "getvalue") else str(command.src)
        return f"upload {source!r} to {command.dest}"
    return str(command)


def test_every_custom_operation_has_a_change_and_a_noop_fixture() -> None:
    ops = {n for n, v in vars(operations).items() if callable(getattr(v, "_inner", None))}
    changes = {name.split("/")[0] for name, f in CASES if "commands" in f}
    noops = {name.split("/")[0] for name, f in CASES if "noop_description" in f}
    assert ops - changes == set() and ops - noops == set()
