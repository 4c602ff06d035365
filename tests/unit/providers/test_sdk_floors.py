"""The hcloud SDK has no public switch for its own retries, so postgressor sets private attributes; the declared
floor is the first release that has all of them, and this test fails on any installed release that lacks one.

hetznercloud/hcloud-python: ``Client._client`` with ``_retry_max_retries`` since v2.1.0, ``_retry_interval_func``
since v2.6.0, ``Client._client_hetzner`` since v2.12.0 (hcloud/_client.py at each tag).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from hcloud import Client

FLOOR = (2, 12)
ROOT = Path(__file__).resolve().parents[3]


def test_the_installed_hcloud_has_the_private_attributes_we_set() -> None:
    client = Client(token="t" * 64)
    for base in (client._client, client._client_hetzner):
        assert isinstance(base._retry_max_retries, int)
        assert callable(base._retry_interval_func)


def test_the_declared_floor_is_where_they_exist() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("hcloud"))
    found = re.search(r">=(\d+)\.(\d+)", spec)
    assert found and (int(found.group(1)), int(found.group(2))) >= FLOOR, spec
