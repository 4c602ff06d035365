"""Golden values for the pgtune formulas (REFERENCE §6), worked out by hand."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postgressor.box.tuning import GB, MB, Machine, format_memory, slot_wal_keep_kb, tune


def test_small_web_box() -> None:
    got = tune(Machine(ram_kb=4 * GB, cpus=2, disk_kb=40 * GB), pg_version=15)
    assert got == {
        "max_connections": "200",
        "shared_buffers": "1GB",
        "effective_cache_size": "3GB",
        "maintenance_work_mem": "256MB",
        "wal_buffers": "16MB",
        "checkpoint_completion_target": "0.9",
        "default_statistics_target": "100",
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "work_mem": "5041kB",  # (4 GB - 1 GB) / ((200 + 8) * 3)
        "huge_pages": "off",
        "wal_compression": "lz4",
        "wal_level": "logical",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "max_slot_wal_keep_size": "8GB",  # 20 % of 40 GB
    }


def test_large_oltp_nvme_box() -> None:
    got = tune(Machine(ram_kb=16 * GB, cpus=8, disk_kb=500 * GB), 17, profile="oltp", storage="nvme")
    assert got["max_connections"] == "300"
    assert got["shared_buffers"] == "4GB"
    assert got["effective_cache_size"] == "12GB"
    assert got["maintenance_work_mem"] == "1GB"
    assert got["effective_io_concurrency"] == "1000"
    assert (got["min_wal_size"], got["max_wal_size"]) == ("2GB", "8GB")
    assert got["max_worker_processes"] == got["max_parallel_workers"] == "8"
    assert got["max_parallel_workers_per_gather"] == got["max_parallel_maintenance_workers"] == "4"
    assert got["work_mem"] == "13617kB"  # (16 GB - 4 GB) / ((300 + 8) * 3)
    assert got["huge_pages"] == "try"
    assert got["max_slot_wal_keep_size"] == "50GB"  # capped


def test_tiny_box_floors_and_old_postgres() -> None:
    got = tune(Machine(ram_kb=1 * GB, cpus=1, disk_kb=10 * GB), 14, max_connections=100)
    assert got["shared_buffers"] == "256MB"
    assert got["wal_buffers"] == "7864kB"  # 3 % of 256 MB
    assert got["work_mem"] == "4MB"  # the 4 MB floor
    assert got["max_connections"] == "100"
    assert "wal_compression" not in got
    assert "max_worker_processes" not in got
    assert got["max_slot_wal_keep_size"] == "2GB"


def test_six_cpus_cap_per_gather_and_hdd() -> None:
    got = tune(Machine(ram_kb=64 * GB, cpus=12, disk_kb=2000 * GB), 16, storage="hdd")
    assert got["max_parallel_workers_per_gather"] == "4"
    assert got["random_page_cost"] == "4"
    assert got["effective_io_concurrency"] == "2"
    assert got["maintenance_work_mem"] == "4GB"


def test_maintenance_work_mem_cap() -> None:
    assert tune(Machine(ram_kb=256 * GB, cpus=32, disk_kb=4000 * GB), 17)["maintenance_work_mem"] == "8GB"


@pytest.mark.parametrize(
    ("kb", "text"), [(1 * GB, "1GB"), (1536 * MB, "1536MB"), (5041, "5041kB"), (16 * MB, "16MB")]
)
def test_format_memory(kb: int, text: str) -> None:
    assert format_memory(kb) == text


@given(st.integers(min_value=512 * MB, max_value=1024 * GB), st.integers(1, 128), st.integers(4 * GB, 10**10))
def test_invariants(ram: int, cpus: int, disk: int) -> None:
    got = tune(Machine(ram, cpus, disk), 15)
    assert got["wal_level"] == "logical"
    keep = slot_wal_keep_kb(disk)
    assert 1 * GB <= keep <= 50 * GB
    assert keep <= max(disk // 5, 1 * GB)
