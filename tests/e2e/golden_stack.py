"""The golden stack's project: the fullest configuration the VM tests need, provisioned once per run on the
cloud image stand-in (tests/cloudimage_builder.py), booted through cloud-init as the clouds' images are."""

from __future__ import annotations

import json
from pathlib import Path

from electric_standin_image import IMAGE, build_archive

SECRET = "postgressor-e2e-hs256-secret-0123456789abcdef"
ISSUER = "https://e2etest.supabase.co/auth/v1"
MEMORY_MB, CPUS, FORWARDED = 2048, 2, [3000, 3001, 5432, 8080]

LOCAL = f"""provider = "local"

[local]
memory_mb = {MEMORY_MB}
cpus = {CPUS}
forward_ports = {FORWARDED}
image = {{image}}
"""

# What the box runs, whichever provider made it: sync for `items` (Electric's stand-in), backups on by default.
BOX = """
[supabase]
jwt_secret = "{secret}"
issuer = "{issuer}"

[[sync.tables]]
name = "items"
owner_column = "user_id"

[electric]
image = "{image}"
image_archive = "{archive}"

# The box's own backup timers (01:30 UTC by default, up to 10 min later) must not take backups in the middle of a
# test: a copy of the golden box has its clock set forward, past 01:30 when a run crosses it. Keep last: tests
# append [backup] keys.
[backup]
full_schedule = "2099-01-04 01:30:00"
diff_schedule = "2099-01-05 01:30:00"
"""

MIGRATION = (
    "CREATE TABLE items (id bigserial PRIMARY KEY, user_id uuid NOT NULL DEFAULT auth.uid(), note text);\n"
    "GRANT SELECT, INSERT, UPDATE, DELETE ON items TO authenticated;\n"
)


def write_box_files(root: Path) -> str:
    """Write the migration and Electric's stand-in archive under ``root``; return the box's config tables."""
    archive = build_archive(root / "electric-standin.tar")
    (root / "migrations").mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "001_items.sql").write_text(MIGRATION)
    return BOX.format(secret=SECRET, issuer=ISSUER, image=IMAGE, archive=archive)


def write_golden_project(root: Path, image: Path) -> None:
    (root / "postgressor.toml").write_text(LOCAL.format(image=json.dumps(str(image))) + write_box_files(root))
