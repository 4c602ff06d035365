"""Hetzner, OCI and OVH providers against fake APIs on loopback: one server per stack, under faults.

The same scenarios run for each provider: rate limits, 5xx (also after the create happened), a Ctrl-C
between a create returning and the state being saved, SSH that never answers, bad credentials.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfakes.clouds import NAMES, Cloud, started
from cloudfakes.harness import Recorder, fake_ssh, no_real_sleep, saved
from postgressor.errors import PostgressorError, UsageError
from postgressor.providers.cloud import META


@pytest.fixture(params=NAMES)
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    with started(request.param, tmp_path) as c:
        yield c


@pytest.fixture
def ssh_waits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    return fake_ssh(monkeypatch)


def interrupt_at(event: str):  # type: ignore[no-untyped-def]
    def hook(seen: str) -> None:
        if seen == event:
            raise KeyboardInterrupt

    return hook


def test_up_creates_one_server_and_records_every_resource(cloud: Cloud, ssh_waits: list) -> None:
    rec = Recorder()
    provider = cloud.provider(rec)
    host = provider.provision()
    state = saved(cloud.settings)
    assert state is not None
    assert [r.kind for r in state.resources] == [META, *provider.kinds]
    assert {kind: cloud.count(kind) for kind in provider.kinds} == dict.fromkeys(provider.kinds, 1)
    assert (host.user, host.port) == (cloud.user, 22)
    assert ssh_waits == [(host.address, 22)]
    assert state.host is not None and state.host.host_key.startswith("ssh-ed25519 ")
    assert (state.stack_dir / "known_hosts").read_text().startswith(f"{host.address} ssh-ed25519 ")


def test_rerunning_up_reuses_the_server(cloud: Cloud, ssh_waits: list) -> None:
    first = cloud.provider(Recorder()).provision()
    second = cloud.provider(Recorder()).provision()
    assert second.address == first.address
    assert cloud.api.calls(*cloud.create) == 1
    assert cloud.count("server") == 1


def test_rate_limited_create_is_retried_with_the_injected_sleep(
    cloud: Cloud, ssh_waits: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_real_sleep(monkeypatch)  # the SDKs' own retry sleeps would trip this
    cloud.api.fail(*cloud.create, *cloud.rate_limited, times=2)
    rec = Recorder()
    cloud.provider(rec).provision()
    assert cloud.count("server") == 1
    assert cloud.api.calls(*cloud.create) == 3
    assert len(rec.sleeps) >= 2
    assert any("retrying" in line for line in rec.lines)


def test_5xx_after_the_server_was_created_does_not_create_a_second(cloud: Cloud, ssh_waits: list) -> None:
    cloud.api.fail(*cloud.create, *cloud.server_error, after=True)
    rec = Recorder()
    provider = cloud.provider(rec)
    provider.provision()
    assert cloud.count("server") == 1
    assert cloud.api.calls(*cloud.create) == 1  # it looked before creating again, and found it
    state = saved(cloud.settings)
    assert state is not None and state.find("server") is not None


def test_persistent_5xx_is_one_line_and_destroy_cleans_up(cloud: Cloud, ssh_waits: list) -> None:
    cloud.api.fail(*cloud.create, *cloud.server_error, times=100)
    provider = cloud.provider(Recorder())
    with pytest.raises(PostgressorError) as caught:
        provider.provision()
    message = str(caught.value)
    assert "\n" not in message and "destroy" in message
    state = saved(cloud.settings)
    assert state is not None and state.find("server") is None
    assert cloud.count("server") == 0
    removed = cloud.provider(Recorder()).destroy()
    assert removed
    assert cloud.leftovers(provider.kinds) == {}


@pytest.mark.parametrize("step", [0, -1], ids=["first-resource", "server"])
def test_ctrl_c_between_create_and_save_then_up_resumes_without_duplicates(
    cloud: Cloud, ssh_waits: list, step: int
) -> None:
    kinds = cloud.cls.kinds
    kind = kinds[step]
    with pytest.raises(KeyboardInterrupt):
        cloud.provider(Recorder(), hook=interrupt_at(f"created {kind}")).provision()
    state = saved(cloud.settings)
    assert state is not None and state.find(kind) is None  # the save never happened
    assert cloud.count(kind) == 1  # but the provider has it
    cloud.provider(Recorder()).provision()
    assert {k: cloud.count(k) for k in kinds} == dict.fromkeys(kinds, 1)
    state = saved(cloud.settings)
    assert state is not None and all(state.find(k) is not None for k in kinds)


@pytest.mark.parametrize("step", [0, -1], ids=["first-resource", "server"])
def test_ctrl_c_between_create_and_save_then_destroy_removes_the_unrecorded(
    cloud: Cloud, ssh_waits: list, step: int
) -> None:
    kinds = cloud.cls.kinds
    with pytest.raises(KeyboardInterrupt):
        cloud.provider(Recorder(), hook=interrupt_at(f"created {kinds[step]}")).provision()
    assert cloud.count(kinds[step]) == 1
    removed = cloud.provider(Recorder()).destroy()
    assert any(kinds[step].replace("_", " ") in line for line in removed)
    assert cloud.leftovers(kinds) == {}
    state = saved(cloud.settings)
    assert state is not None and state.resources == []


def test_ssh_that_never_answers_fails_clearly_and_leaves_the_server_recorded(
    cloud: Cloud, tmp_path: Path
) -> None:
    # Nothing listens on 127.0.0.9:22; the short timeout keeps the test quick.
    if cloud.name == "hetzner":
        cloud.api.on_create = lambda server, body: "127.0.0.9"
    else:
        cloud.api.on_create = cloud.api.on_launch = lambda *args: "127.0.0.9"
    section = {"hetzner": "hetzner", "oracle": "oracle", "ovh": "ovh"}[cloud.name]
    config = getattr(cloud.settings, section).model_copy(update={"ssh_timeout": 2})
    provider = cloud.provider(Recorder(), **{section: config})
    with pytest.raises(PostgressorError) as caught:
        provider.provision()
    assert "127.0.0.9:22 did not answer" in str(caught.value)
    assert "postgressor destroy" in str(caught.value)
    state = saved(cloud.settings)
    assert state is not None and state.find("server") is not None and state.host is None
    cloud.provider(Recorder()).destroy()
    assert cloud.leftovers(cloud.cls.kinds) == {}


def test_unknown_region_is_refused_before_any_api_call(cloud: Cloud) -> None:
    provider = cloud.provider(Recorder(), region="atlantis")
    with pytest.raises(UsageError, match=r"unknown .* region 'atlantis'"):
        provider.validate()
    assert cloud.api.log == []
    assert saved(cloud.settings) is None


def test_state_file_and_log_hold_no_secret(cloud: Cloud, ssh_waits: list) -> None:
    rec = Recorder()
    cloud.provider(rec).provision()
    text = (cloud.settings.state_dir / "default.json").read_text()
    json.loads(text)
    for secret in cloud.secrets:
        assert secret not in text
        assert all(secret not in line for line in rec.lines)
    assert "PRIVATE KEY" not in text


def test_destroy_twice_is_harmless(cloud: Cloud, ssh_waits: list) -> None:
    cloud.provider(Recorder()).provision()
    assert cloud.provider(Recorder()).destroy()
    assert cloud.leftovers(cloud.cls.kinds) == {}
    again = cloud.provider(Recorder()).destroy()
    assert not any(line.startswith(f"deleted {cloud.cls.title}") for line in again)


def test_key_path_survives_a_relative_state_dir(
    cloud: Cloud, ssh_waits: list, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # state_dir defaults to ".postgressor" (relative): the recorded key must still be found after a reload.
    monkeypatch.chdir(tmp_path)
    provider = cloud.provider(Recorder(), state_dir=Path(".postgressor"))
    provider.provision()
    state = saved(provider.settings)
    assert state is not None and state.host is not None
    assert Path(state.host.key_path).is_file()
