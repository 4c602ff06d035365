"""PostgreSQL settings computed from the box's RAM, CPUs and disk (pgtune's web/oltp formulas).

Pure functions: values are integers in kB (memory) or plain numbers, rendered in PostgreSQL units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

KB = 1
MB = 1024 * KB
GB = 1024 * MB

Profile = Literal["web", "oltp"]
Storage = Literal["ssd", "nvme", "hdd"]

@dataclass(frozen=True)
class Machine:
    ram_kb: int
    cpus: int
    disk_kb: int


def format_memory(kb: int) -> str:
    """Largest exact unit PostgreSQL accepts: 1GB, 512MB, 5041kB."""
    if kb % GB == 0:
        return f"{kb // GB}GB"
    if kb % MB == 0:
        return f"{kb // MB}MB"
    return f"{kb}kB"


def slot_wal_keep_kb(disk_kb: int) -> int:
    """WAL an inactive replication slot may hold: 20 % of the disk, between 1 GB and 50 GB."""
    return max(1 * GB, min(50 * GB, (disk_kb // 5) // MB * MB))


def tune(
    machine: Machine,
    pg_version: int,
    profile: Profile = "web",
    storage: Storage = "ssd",
    max_connections: int | None = None,
) -> dict[str, str]:
    """The postgressor conf.d settings for ``machine``, in a stable order."""
    ram = machine.ram_kb
    connections = max_connections or (300 if profile == "oltp" else 200)
    shared_buffers = ram // 4
    wal_buffers = min(16 * MB, max(32, shared_buffers * 3 // 100))
    settings: dict[str, str] = {
        "max_connections": str(connections),
        "shared_buffers": format_memory(shared_buffers),
        "effective_cache_size": format_memory(ram * 3 // 4),
        "maintenance_work_mem": format_memory(min(ram // 16, 8 * GB)),
        "wal_buffers": format_memory(wal_buffers),
        "checkpoint_completion_target": "0.9",
        "default_statistics_target": "100",
        "random_page_cost": "4" if storage == "hdd" else "1.1",
        "effective_io_concurrency": {"hdd": "2", "ssd": "200", "nvme": "1000"}[storage],
        "min_wal_size": "2GB" if profile == "oltp" else "1GB",
        "max_wal_size": "8GB" if profile == "oltp" else "4GB",
    }
    workers = 8  # PostgreSQL's default max_worker_processes
    if machine.cpus >= 4:
        workers = machine.cpus
        per_gather = min(math.ceil(machine.cpus / 2), 4)
        settings.update(
            max_worker_processes=str(workers),
            max_parallel_workers=str(workers),
            max_parallel_workers_per_gather=str(per_gather),
            max_parallel_maintenance_workers=str(per_gather),
        )
    work_mem = max(4 * MB, (ram - shared_buffers) // ((connections + workers) * 3))
    settings["work_mem"] = format_memory(work_mem)
    settings["huge_pages"] = "try" if shared_buffers >= 2 * GB else "off"
    if pg_version >= 15:
        settings["wal_compression"] = "lz4"
    settings.update(
        wal_level="logical",
        max_wal_senders="10",
        max_replication_slots="10",
        max_slot_wal_keep_size=format_memory(slot_wal_keep_kb(machine.disk_kb)),
    )
    return settings
