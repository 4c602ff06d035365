"""The PostgreSQL version is recorded in the state at deploy and read from there, never rediscovered on the box."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postgressor.errors import PostgressorError, UsageError
from postgressor.state import HostRecord, load_state, open_state, recorded_version


def test_version_round_trips_through_the_state_file(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    state.set_host(HostRecord(address="192.0.2.1", port=22, user="root", key_path="key"))
    assert load_state(tmp_path, "demo").pg_version is None  # type: ignore[union-attr]
    state.pg_version = 17
    state.save()
    loaded = load_state(tmp_path, "demo")
    assert loaded is not None and recorded_version(loaded) == 17


def test_a_stack_without_a_recorded_version_says_to_deploy(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    with pytest.raises(UsageError, match="postgressor deploy --stack demo"):
        recorded_version(state)


def test_a_non_integer_version_is_an_unreadable_state(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    state.save()
    data = json.loads(state.path.read_text())
    data["pg_version"] = "17; rm -rf /"
    state.path.write_text(json.dumps(data))
    with pytest.raises(PostgressorError, match="pg_version"):
        load_state(tmp_path, "demo")
