"""A host for running one custom operation's generator against given facts (as pyinfra's tests/operations do)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def fact_key(cls: type, kwargs: dict[str, Any]) -> str:
    """``Name`` for a fact without arguments, else ``Name:`` and its argument values joined by ``|``."""
    if not kwargs:
        return cls.__name__
    values = [",".join(v) if isinstance(v, list) else str(v) for v in kwargs.values()]
    return f"{cls.__name__}:{'|'.join(values)}"


class FakeHost:
    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.noops: list[str] = []
        self.asked: list[str] = []

    def get_fact(self, cls: type, **kwargs: Any) -> Any:
        key = fact_key(cls, {k: v for k, v in kwargs.items() if not k.startswith("_")})
        self.asked.append(key)
        if key not in self.facts:
            raise KeyError(f"fixture gives no fact {key!r}")
        value = self.facts[key]
        if cls.__name__ == "UfwStatus":
            value = {**value, "allowed": set(value["allowed"])}
        return value

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def get_temp_filename(self, hash_key: str | None = None, **kwargs: Any) -> str:
        return f"/tmp/pyinfra-upload-of{hash_key or ''}"


def fixtures(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(``name/case``, fixture) for every ``fixtures/<kind>/<name>/<case>.json``."""
    return [
        (f"{path.parent.name}/{path.stem}", json.loads(path.read_text()))
        for path in sorted((FIXTURES / kind).glob("*/*.json"))
    ]
