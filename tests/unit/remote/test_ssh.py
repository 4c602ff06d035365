"""Host-key pinning returns data; the provider records it (state file and known_hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from postgressor.config import load_settings
from postgressor.providers.ssh import SSHProvider
from postgressor.remote.ssh import HostKeyMismatch, known_hosts_path, pin_host_key
from postgressor.state import HostRecord, load_state, open_state

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDw4mxmfYzK4fJzHkqvMo6vG2dTPOtGX9MmZJ7oa5fAe"


def test_pinning_writes_nothing(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    pinned = pin_host_key(HostRecord("192.0.2.1", 22, "root", "k"), KEY, state)
    assert pinned.host_key == KEY
    assert list(tmp_path.iterdir()) == []  # no state file, no known_hosts


def test_a_changed_key_is_refused_naming_the_state_file(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    host = HostRecord("192.0.2.1", 22, "root", "k", host_key=KEY)
    with pytest.raises(HostKeyMismatch, match=r"demo.*man-in-the-middle.*postgressor trust-host-key --stack demo"):
        pin_host_key(host, KEY.replace("AAAAI", "AAAAJ"), state)


def test_the_provider_records_the_pinned_host(tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    provider = SSHProvider(load_settings(provider="ssh", ssh={"host": "192.0.2.1"}), state, lambda m: None)
    provider.pin(HostRecord("192.0.2.1", 2222, "root", "k"), KEY)
    saved = load_state(tmp_path, "demo")
    assert saved is not None and saved.host is not None and saved.host.host_key == KEY
    assert known_hosts_path(state).read_text() == f"[192.0.2.1]:2222 {KEY}\n"
