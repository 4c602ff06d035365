"""Each custom fact: the command it runs for given arguments, and the value it parses from a command output.

Fixtures follow pyinfra's tests/facts/<fact>/<case>.json: ``kwargs``, ``command``, ``output`` and ``fact``.
"""

from __future__ import annotations

from typing import Any

import pytest
from fake_host import fixtures
from pyinfra.api import FactBase

from postgressor.box import facts

CASES = fixtures("facts")


def plain(value: Any) -> Any:
    """Sets as sorted lists and dataclasses as dicts, so a parsed fact compares with JSON."""
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return value


@pytest.mark.parametrize(("name", "fixture"), CASES, ids=[name for name, _ in CASES])
def test_fact(name: str, fixture: dict[str, Any]) -> None:
    fact = getattr(facts, name.split("/")[0])()
    if "command" in fixture:
        assert fact.command(**fixture.get("kwargs", {})) == fixture["command"]
    assert plain(fact.process(fixture["output"])) == fixture["fact"]


def test_every_custom_fact_has_a_fixture() -> None:
    defined = {n for n, v in vars(facts).items() if isinstance(v, type) and issubclass(v, FactBase)
               and v.__module__ == facts.__name__}  # fmt: skip
    assert defined - {name.split("/")[0] for name, _ in CASES} == set()
