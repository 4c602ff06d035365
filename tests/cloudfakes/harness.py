"""Helpers shared by the cloud provider tests: settings for a fake, a recording sleep, a fake SSH wait."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from postgressor.config import Settings
from postgressor.providers import cloud, retry
from postgressor.state import StackState, load_state, open_state

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForTestsOnly0000000000000000000"


@dataclass
class Recorder:
    """Stands in for time.sleep (records instead of waiting) and for the provider's log."""

    sleeps: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def log(self, line: str) -> None:
        self.lines.append(line)


def fake_ssh(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """SSH 'answers' at once with a fixed host key; returns the addresses that were waited for."""
    seen: list[tuple[str, int]] = []

    def wait(address: str, port: int, timeout: float) -> str:
        seen.append((address, port))
        return HOST_KEY

    monkeypatch.setattr(cloud, "wait_for_ssh", wait)
    return seen


def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any sleep not injected through postgressor's backoff fails the test (e.g. an SDK's own retry)."""

    def forbidden(seconds: float) -> None:
        raise AssertionError(f"a real sleep of {seconds} s happened outside the injected backoff")

    monkeypatch.setattr("time.sleep", forbidden)


def settings(state_dir: Path, provider: str, **values: Any) -> Settings:
    return Settings(provider=provider, state_dir=state_dir, **values)  # type: ignore[arg-type]


def state_for(settings: Settings, stack: str = "default") -> StackState:
    return open_state(settings.state_dir, stack, settings.provider)


def saved(settings: Settings, stack: str = "default") -> StackState | None:
    return load_state(settings.state_dir, stack)


def quick_backoff(rec: Recorder, attempts: int = 6) -> retry.Backoff:
    return retry.Backoff(attempts=attempts, sleep=rec.sleep)


CLOUD_ENV = ("HCLOUD_TOKEN", "OCI_CONFIG_FILE", "OCI_CLI_PROFILE", "OVH_ENDPOINT", "OVH_APPLICATION_KEY",
             "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY", "OVH_CLOUD_PROJECT_SERVICE", "CI")  # fmt: skip


def isolated_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A CLI run in ``tmp_path`` as home, with no cloud credentials from this machine, SSH faked and no waits
    (the SDKs' own waiters, hcloud's action.wait_until_finished and oci.wait_until, sleep with time.sleep)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)
    fake_ssh(monkeypatch)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    monkeypatch.setattr(retry, "sleep", lambda seconds: None)
