"""Each cloud provider describes every kind it creates in one table (list + delete), in creation order."""

from __future__ import annotations

from pathlib import Path

import pytest

from postgressor.config import load_settings
from postgressor.providers.hetzner import HetznerProvider
from postgressor.providers.ovh import OVHProvider
from postgressor.state import open_state


@pytest.mark.parametrize("cls", [HetznerProvider, OVHProvider])
def test_the_table_covers_exactly_the_kinds(cls: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "t" * 64)
    provider = cls(load_settings(provider=cls.name), open_state(tmp_path, "demo", cls.name), lambda m: None)
    assert tuple(provider.resource_kinds()) == provider.kinds


def test_an_unknown_kind_is_a_key_error_not_a_silent_fallback(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "t" * 64)
    provider = HetznerProvider(load_settings(provider="hetzner"), open_state(tmp_path, "d", "hetzner"), lambda m: None)
    with pytest.raises(KeyError):
        provider.find_all("volume")
