"""`status` on replication slots: a lost or unreserved slot fails it in one line; one near the limit warns."""

from __future__ import annotations

from typing import Any

from postgressor.checks.status import slot_problems

GB = 1 << 30


def report(*slots: dict[str, Any], limit: str = "1024MB") -> dict[str, Any]:
    return {"settings": {"max_slot_wal_keep_size": limit}, "slots": list(slots)}


def slot(name: str, wal_status: str, retained: float | None) -> dict[str, Any]:
    return {"name": name, "plugin": "pgoutput", "wal_status": wal_status, "retained_bytes": retained}


def test_a_lost_electric_slot_fails_with_the_fix() -> None:
    lost, warnings = slot_problems(report(slot("electric_slot_default", "lost", None)), 0.8)
    assert lost.startswith("replication slot electric_slot_default is lost: PostgreSQL removed WAL it still needed")
    assert "run 'postgressor deploy'" in lost and "\n" not in lost
    assert warnings == []


def test_a_lost_slot_of_someone_else_fails_naming_it() -> None:
    lost, _ = slot_problems(report(slot("e2e_slot", "lost", None)), 0.8)
    assert lost.startswith("replication slot e2e_slot is lost") and "drop it and create it again" in lost


def test_an_unreserved_slot_fails_before_it_is_lost() -> None:
    lost, _ = slot_problems(report(slot("electric_slot_default", "unreserved", 2.0 * GB)), 0.8)
    assert lost.startswith("replication slot electric_slot_default is unreserved: PostgreSQL will remove WAL")
    assert "start its consumer now" in lost


def test_a_slot_near_the_limit_warns_and_one_below_does_not() -> None:
    near = slot("electric_slot_default", "extended", 0.85 * GB)
    fine = slot("other", "reserved", 0.5 * GB)
    lost, warnings = slot_problems(report(near, fine), 0.8)
    assert lost == ""
    assert warnings == ["replication slot electric_slot_default retains 870 MB of WAL, 85% of max_slot_wal_keep_size: "
                        "is its consumer running and keeping up?"]  # fmt: skip


def test_no_limit_means_no_warning() -> None:
    assert slot_problems(report(slot("s", "extended", 500.0 * GB), limit="-1"), 0.8) == ("", [])
