"""A stopped cloud server: `up` starts it through the provider's API and waits for SSH; `status` reports power.

Runs against the fakes in tests/cloudfakes (Hetzner poweron action, OCI InstanceAction START, OVH instance start).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfakes.clouds import NAMES, Cloud, started
from cloudfakes.harness import HOST_KEY, Recorder, fake_ssh, saved
from postgressor.checks.status import power_state
from postgressor.remote.ssh import HostKeyMismatch


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("HCLOUD_TOKEN", "OCI_CONFIG_FILE", "OCI_CLI_PROFILE", "OVH_ENDPOINT", "OVH_APPLICATION_KEY",
                 "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY", "OVH_CLOUD_PROJECT_SERVICE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=NAMES)
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    with started(request.param, tmp_path) as c:
        yield c


def stop(cloud: Cloud) -> None:
    """Stop the server as the user would in the console: the provider's own stop call, until it is off."""
    api = cloud.api
    if cloud.name == "hetzner":
        (server,) = api.servers.values()
        server["status"] = "off"
    elif cloud.name == "oracle":
        (instance,) = api.of("Instance")
        instance["lifecycleState"] = "STOPPED"
    else:
        (instance,) = api.instances.values()
        instance["status"] = "SHUTOFF"


def start_calls(cloud: Cloud) -> int:
    return len(cloud.api.power_actions)


def test_up_starts_a_stopped_server_and_waits_for_ssh(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    waited = fake_ssh(monkeypatch)
    first = cloud.provider(Recorder()).provision()
    stop(cloud)
    assert cloud.provider(Recorder()).power_state() == "off"
    rec = Recorder()
    again = cloud.provider(rec).provision()
    assert start_calls(cloud) == 1  # one start call, then polling until running
    assert again.address == first.address and again.host_key == HOST_KEY and len(waited) == 2
    assert any("starting it" in line or "powering it on" in line for line in rec.lines), rec.lines
    assert cloud.provider(Recorder()).power_state() == "running"
    assert cloud.count("server") == 1  # started, not re-created


def test_up_on_a_running_server_starts_nothing(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh(monkeypatch)
    cloud.provider(Recorder()).provision()
    cloud.provider(Recorder()).provision()
    assert start_calls(cloud) == 0


def test_a_started_server_with_a_new_host_key_is_refused(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh(monkeypatch)
    cloud.provider(Recorder()).provision()
    stop(cloud)
    from postgressor.providers import cloud as cloud_module

    monkeypatch.setattr(cloud_module, "wait_for_ssh", lambda address, port, timeout: HOST_KEY.replace("Fake", "Evil"))
    with pytest.raises(HostKeyMismatch, match="trust-host-key"):
        cloud.provider(Recorder()).provision()


def test_status_reports_power_without_ssh_when_off(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    from postgressor.checks import status as status_module

    fake_ssh(monkeypatch)
    cloud.provider(Recorder()).provision()
    state = saved(cloud.settings)
    assert state is not None
    assert power_state(cloud.settings, state) == "running"
    stop(cloud)
    assert power_state(cloud.settings, state) == "off"
    state.pg_version = 17
    state.save()

    def no_ssh(*args: object, **kwargs: object) -> None:
        raise AssertionError("status must not SSH to a server that is off")

    monkeypatch.setattr(status_module, "run", no_ssh)
    report = status_module.status(cloud.settings, "default")
    assert report["power"] == "off" and not report["reachable"] and "'postgressor up' starts it" in report["error"]


def test_status_power_is_unknown_without_credentials(cloud: Cloud) -> None:
    broken = {"hetzner": {"hetzner": {"token": None, "api_endpoint": "http://127.0.0.1:9/v1"}},
              "oracle": {"oracle": {"config_file": Path("/nonexistent/oci-config")}},
              "ovh": {"ovh": {"application_key": None}}}[cloud.name]  # fmt: skip
    settings = cloud.settings.model_copy(update={k: getattr(cloud.settings, k).model_copy(update=v)
                                                 for k, v in broken.items()})  # fmt: skip
    state = cloud.provider(Recorder()).state
    state.add("server", "x-1")
    assert power_state(settings, state).startswith("unknown (")


def test_the_same_server_at_a_new_address_keeps_its_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from postgressor.providers import cloud as cloud_module

    fake_ssh(monkeypatch)
    with started("hetzner", tmp_path) as hz:
        hz.provider(Recorder()).provision()
        stop(hz)
        (server,) = hz.api.servers.values()
        server["public_net"]["ipv4"]["ip"] = "192.0.2.200"  # a new address after the restart
        monkeypatch.setattr(cloud_module, "wait_for_ssh", lambda a, p, timeout: HOST_KEY.replace("Fake", "Evil"))
        with pytest.raises(HostKeyMismatch, match="trust-host-key"):
            hz.provider(Recorder()).provision()
        fake_ssh(monkeypatch)
        assert hz.provider(Recorder()).provision().address == "192.0.2.200"


def test_plan_says_a_stopped_server_will_be_powered_on(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh(monkeypatch)
    first = cloud.provider(Recorder()).provision()
    assert not [s for s in cloud.provider(Recorder()).plan() if "power" in s]
    stop(cloud)
    steps = cloud.provider(Recorder()).plan()
    assert any(s.startswith("power server ") and "(it is off)" in s for s in steps), steps
    assert start_calls(cloud) == 0 and cloud.provider(Recorder()).power_state() == "off"  # plan changed nothing
    assert first.address
