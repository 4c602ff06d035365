"""Resizing an existing cloud server: `up` with another size shows old → new and the prices, asks (or --yes),
resizes through the provider's API, records the new size once the provider confirms it, then deploys.

Runs against the fakes in tests/cloudfakes, which carry each API's resize rules: Hetzner change_type (server off,
same storage and an equal or bigger disk, started again after), OCI UpdateInstance (A1.Flex limits, a running
instance reboots), OVHcloud instance resize (no smaller disk, RESIZE then back to ACTIVE).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudfakes.clouds import NAMES, Cloud, config_for, started
from cloudfakes.harness import Recorder, isolated_cli, saved
from postgressor import lifecycle
from postgressor.box.converge import DeployResult
from postgressor.cli import app
from postgressor.errors import PostgressorError, UsageError

# Per cloud: the settings of the first server, a bigger size, and a downsize the provider refuses (from the
# first server, or from the bigger one when the refusal needs a bigger disk to start from).
SMALL: dict[str, dict[str, Any]] = {"hetzner": {}, "oracle": {}, "ovh": {}}
BIGGER: dict[str, dict[str, Any]] = {
    "hetzner": {"size": "cx33"}, "ovh": {"size": "b3-16"},
    "oracle": {"oracle": {"ocpus": 4, "memory_gb": 24}},
}  # fmt: skip
OLD_NEW = {"hetzner": ("cx23", "cx33"), "ovh": ("d2-4", "b3-16"),
           "oracle": ("VM.Standard.A1.Flex 2 OCPU / 12 GB", "VM.Standard.A1.Flex 4 OCPU / 24 GB")}  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolated_cli(monkeypatch, tmp_path)


@pytest.fixture(params=NAMES)
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    with started(request.param, tmp_path) as c:
        yield c


def changed(cloud: Cloud, **update: Any) -> Cloud:
    """The same cloud with other settings (nested sections merged, so the values count as set)."""
    values: dict[str, Any] = {}
    for key, value in update.items():
        if isinstance(value, dict):
            section = getattr(cloud.settings, key)
            values[key] = type(section)(**{**section.model_dump(exclude_unset=True), **value})
        else:
            values[key] = value
    cloud.settings = cloud.settings.model_copy(update=values)
    return cloud


def recorded_size(cloud: Cloud) -> dict[str, Any]:
    state = saved(cloud.settings)
    assert state is not None
    server = state.find("server")
    assert server is not None
    keys = {"hetzner": ("type",), "ovh": ("flavor",), "oracle": ("shape", "ocpus", "memory_gb")}[cloud.name]
    return {k: server.details.get(k) for k in keys}


def resize_calls(cloud: Cloud) -> list[tuple[str, str]]:
    """The calls that change the server, in order (method, last path part)."""
    api = cloud.api
    wanted = {"hetzner": ("shutdown", "poweroff", "poweron", "change_type"), "ovh": ("resize", "start", "stop")}
    if cloud.name == "oracle":
        return [(r.method, "update") for r in api.log if r.method == "PUT" and "/instances/" in r.path] + \
            [(r.method, r.query["action"]) for r in api.log if r.method == "POST" and "action" in r.query]
    return [(r.method, r.path.rsplit("/", 1)[1]) for r in api.log
            if r.method == "POST" and r.path.rsplit("/", 1)[1] in wanted[cloud.name]]  # fmt: skip


def live_size(cloud: Cloud) -> Any:
    api = cloud.api
    if cloud.name == "hetzner":
        (server,) = api.servers.values()
        return server["server_type"]["name"], server["status"]
    if cloud.name == "ovh":
        (instance,) = api.instances.values()
        return instance["flavorId"], instance["status"]
    (instance,) = api.of("Instance")
    return instance["shapeConfig"], instance["lifecycleState"]


# ---------------------------------------------------------------- through the provider


def test_same_size_makes_no_resize_call(cloud: Cloud) -> None:
    cloud.provider(Recorder()).provision()
    again = {"hetzner": {"size": "cx23"}, "ovh": {"size": "d2-4"},
             "oracle": {"oracle": {"ocpus": 2, "memory_gb": 12}}}[cloud.name]  # fmt: skip
    assert changed(cloud, **again).provider(Recorder()).size_change() is None
    assert resize_calls(cloud) == []


def test_upsize_resizes_records_and_leaves_the_server_running(cloud: Cloud) -> None:
    first = cloud.provider(Recorder()).provision()
    before = recorded_size(cloud)
    provider = changed(cloud, **BIGGER[cloud.name]).provider(rec := Recorder())
    change = provider.size_change()
    assert change is not None and (change.old, change.new) == OLD_NEW[cloud.name]
    provider.resize(change)
    after = recorded_size(cloud)
    assert after != before and after == change.target
    assert provider.power_state() == "running" or cloud.name == "oracle"  # OCI: still rebooting; up waits
    assert any("is now" in line for line in rec.lines), rec.lines
    if cloud.name == "hetzner":
        # shut down (ACPI), change the type keeping the disk; Hetzner starts it again itself
        assert resize_calls(cloud) == [("POST", "shutdown"), ("POST", "change_type")]
        assert cloud.api.change_types == [(int(change.server), "cx33", False)]
    elif cloud.name == "oracle":
        assert resize_calls(cloud) == [("PUT", "update")]
        assert cloud.api.updates == [{"shape": "VM.Standard.A1.Flex", "shapeConfig": {"ocpus": 4.0,
                                                                                    "memoryInGBs": 24.0}}]
    else:
        assert resize_calls(cloud) == [("POST", "resize")]
        assert cloud.api.resizes == [(change.server, f"flavor-b3-16-{cloud.settings.region}")]
    again = cloud.provider(Recorder()).provision()  # what up does next: same server, same pin
    assert again.address == first.address and again.host_key == first.host_key
    assert cloud.provider(Recorder()).size_change() is None  # done: nothing more to resize
    assert cloud.count("server") == 1


def test_hetzner_kept_disk_allows_going_back_down(tmp_path: Path) -> None:
    with started("hetzner", tmp_path) as hz:
        hz.provider(Recorder()).provision()
        for size in ("cx33", "cx23"):  # the disk stayed at 40 GB, so cx23 fits again
            provider = changed(hz, size=size).provider(Recorder())
            change = provider.size_change()
            assert change is not None
            provider.resize(change)
        assert recorded_size(hz) == {"type": "cx23"}
        assert [t for _, t, _ in hz.api.change_types] == ["cx33", "cx23"]


@pytest.mark.parametrize(("name", "first", "smaller", "why"), [
    ("hetzner", {"size": "cpx22"}, {"size": "cx23"}, r"disk \(40 GB\) is smaller than the server's \(80 GB\)"),
    ("hetzner", {}, {"size": "cax11"}, r"it is arm and the server's disk holds an x86 system"),
    ("ovh", {"size": "b3-16"}, {"size": "d2-8"}, r"disk \(50 GB\) is smaller than the instance's \(100 GB\)"),
])  # fmt: skip
def test_downsize_the_provider_refuses_says_why_before_anything_changes(
        tmp_path: Path, name: str, first: dict[str, Any], smaller: dict[str, Any], why: str) -> None:  # fmt: skip
    with started(name, tmp_path, **first) as c:
        c.provider(Recorder()).provision()
        size_before = recorded_size(c)
        with pytest.raises(UsageError, match=why) as err:
            changed(c, **smaller).provider(Recorder()).size_change()
        assert "\n" not in str(err.value)
        assert resize_calls(c) == [] and recorded_size(c) == size_before


def test_oci_refuses_too_little_memory_per_ocpu_and_nothing_changes(tmp_path: Path) -> None:
    with started("oracle", tmp_path) as oracle:
        oracle.provider(Recorder()).provision()
        provider = changed(oracle, oracle={"ocpus": 2, "memory_gb": 1}).provider(Recorder())
        change = provider.size_change()
        assert change is not None
        with pytest.raises(PostgressorError, match=r"does not support 2 OCPUs with 1 GB.*still records "
                                                   r"VM.Standard.A1.Flex 2 OCPU / 12 GB.*runs at its old size"):
            provider.resize(change)
        assert recorded_size(oracle) == {"shape": "VM.Standard.A1.Flex", "ocpus": 2.0, "memory_gb": 12.0}
        assert live_size(oracle) == ({"ocpus": 2.0, "memoryInGBs": 12.0}, "RUNNING")


@pytest.mark.parametrize("fault", ["action_error", "5xx_after_shutdown"])
def test_hetzner_failure_half_way_powers_back_on_and_keeps_the_old_size(tmp_path: Path, fault: str) -> None:
    with started("hetzner", tmp_path) as hz:
        hz.provider(Recorder()).provision()
        if fault == "action_error":
            hz.api.failing_actions["change_server_type"] = {"code": "server_error", "message": "migration failed"}
        else:
            hz.api.fail("POST", r"/v1/servers/\d+/actions/change_type", 503,
                        {"error": {"code": "unavailable", "message": "service unavailable", "details": {}}})
        provider = changed(hz, size="cx33").provider(Recorder())
        change = provider.size_change()
        assert change is not None
        with pytest.raises(PostgressorError) as err:
            provider.resize(change)
        message = str(err.value)
        assert "\n" not in message and "still records cx23" in message and "runs at its old size" in message
        assert ("migration failed" if fault == "action_error" else "unavailable") in message
        assert recorded_size(hz) == {"type": "cx23"}
        assert live_size(hz)[0] == "cx23"
        assert resize_calls(hz)[-1] == ("POST", "poweron")  # we stopped it, so we started it again
        assert provider.power_state() == "running"


def test_oci_api_lost_after_the_update_keeps_the_old_size_until_up_reads_the_new(tmp_path: Path) -> None:
    with started("oracle", tmp_path) as oracle:
        oracle.provider(Recorder()).provision()
        provider = changed(oracle, **BIGGER["oracle"]).provider(Recorder())
        change = provider.size_change()
        assert change is not None
        oracle.api.fail("GET", r"/20160918/instances/[^/]+", 503, {"code": "ServiceUnavailable", "message": "down"},
                        times=50)  # fmt: skip
        with pytest.raises(PostgressorError, match=r"could not resize .*still records VM.Standard.A1.Flex 2 OCPU"):
            provider.resize(change)
        assert recorded_size(oracle)["ocpus"] == 2.0  # not confirmed by the provider: the state keeps the old
        oracle.api.faults.clear()
        again = oracle.provider(Recorder())
        assert again.size_change() is None  # the provider reports the new size: nothing left to resize
        again.provision()
        assert recorded_size(oracle) == {"shape": "VM.Standard.A1.Flex", "ocpus": 4.0, "memory_gb": 24.0}
        assert len(oracle.api.updates) == 1


def test_ovh_resize_ending_in_error_keeps_the_old_flavor(tmp_path: Path) -> None:
    with started("ovh", tmp_path) as c:
        c.provider(Recorder()).provision()
        c.api.failed_resizes = 1
        provider = changed(c, size="b3-16").provider(Recorder())
        change = provider.size_change()
        assert change is not None
        with pytest.raises(PostgressorError, match=r"in ERROR after the resize.*still records d2-4"):
            provider.resize(change)
        assert recorded_size(c) == {"flavor": f"flavor-d2-4-{c.settings.region}"}
        assert live_size(c) == (f"flavor-d2-4-{c.settings.region}", "ERROR")


def test_ssh_provider_refuses_a_size_with_one_line(tmp_path: Path) -> None:
    from postgressor.config import Settings
    from postgressor.providers import get_provider
    from postgressor.state import HostRecord, open_state

    key = tmp_path / "key"
    key.write_text("k")
    settings = Settings(provider="ssh", state_dir=tmp_path / ".postgressor", size="big",  # type: ignore[arg-type]
                        ssh={"host": "192.0.2.9", "key_path": key})
    state = open_state(settings.state_dir, "default", "ssh")
    state.set_host(HostRecord("192.0.2.9", 22, "root", str(key), "ssh-ed25519 AAAA"))
    with pytest.raises(UsageError, match=r"provider 'ssh' cannot resize its server \(resize it where it runs, "
                                         r"then run 'postgressor deploy'"):
        get_provider(settings, state, lambda line: None).size_change()


# ---------------------------------------------------------------- through the CLI


def bigger_args(cloud: Cloud, tmp_path: Path) -> list[str]:
    if cloud.name == "oracle":
        with (tmp_path / "postgressor.toml").open("a") as fh:
            fh.write("ocpus = 4\nmemory_gb = 24\n")  # appended to [oracle]
        return []
    return ["--size", BIGGER[cloud.name]["size"]]


@pytest.fixture
def deploys(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The deploy step stubbed at the lifecycle boundary: records the size the state held when it ran."""
    seen: list[dict[str, Any]] = []

    def deploy_host(settings: Any, state: Any, host: Any, listener: Any, **kwargs: Any) -> tuple[Any, DeployResult]:
        seen.append(dict(state.find("server").details))
        spec = SimpleNamespace(pg_version=17, source="pgdg", database="app", owner="app")
        return spec, DeployResult()

    monkeypatch.setattr(lifecycle, "deploy_host", deploy_host)
    return seen


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout + result.stderr


def test_cli_up_with_a_bigger_size_shows_prices_resizes_then_deploys(
        cloud: Cloud, tmp_path: Path, deploys: list[dict[str, Any]]) -> None:  # fmt: skip
    config_for(cloud, tmp_path)
    code, out = run("up", "--yes")
    assert code == 0, out
    assert resize_calls(cloud) == [] and len(deploys) == 1
    code, out = run("up", "--yes", *bigger_args(cloud, tmp_path))
    assert code == 0, out
    old, new = OLD_NEW[cloud.name]
    assert f"from:     {old}" in out and f"to:       {new}" in out
    prices = {"hetzner": "price:    €4.11/month → €6.59/month excl. VAT",
              "ovh": "price:    €12.50/month → €74.68/month excl. VAT",
              "oracle": "price:    $0.00/month → $55.48/month excl. VAT"}[cloud.name]  # fmt: skip
    assert prices in out and "checked 20" in out
    if cloud.name == "hetzner":
        assert "note:     the disk stays 40 GB (upgrade_disk=false)" in out
    size = recorded_size(cloud)
    assert len(deploys) == 2 and {k: deploys[-1].get(k) for k in size} == size  # the deploy ran at the new size
    assert recorded_size(cloud) != {} and "Traceback" not in out
    code, out = run("up", "--yes", *([] if cloud.name == "oracle" else ["--size", BIGGER[cloud.name]["size"]]))
    assert code == 0 and "resize:" not in out  # same size now: no question, no call
    assert len([c for c in resize_calls(cloud) if c[1] in ("change_type", "update", "resize")]) == 1


def test_cli_resize_needs_yes_without_a_terminal(tmp_path: Path, deploys: list[dict[str, Any]]) -> None:
    with started("hetzner", tmp_path) as hz:
        config_for(hz, tmp_path)
        assert run("up", "--yes")[0] == 0
        code, out = run("up", "--size", "cx33")
        assert code == 2
        assert out.strip().splitlines()[-1].startswith("error: confirmation needed: Resize the server from cx23 → "
                                                       "cx33? (no terminal to ask on; pass --yes to confirm)")
        assert resize_calls(hz) == [] and recorded_size(hz) == {"type": "cx23"} and len(deploys) == 1


def test_cli_refused_downsize_is_one_line_exit_2(tmp_path: Path, deploys: list[dict[str, Any]]) -> None:
    with started("hetzner", tmp_path) as hz:
        config_for(hz, tmp_path)
        assert run("up", "--yes", "--size", "cpx22")[0] == 0
        code, out = run("up", "--yes", "--size", "cx23")
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "never shrinks a disk" in errors[0], out
        assert resize_calls(hz) == [] and len(deploys) == 1


def test_cli_failure_half_way_is_one_line_exit_1_and_no_deploy(tmp_path: Path,
                                                               deploys: list[dict[str, Any]]) -> None:  # fmt: skip
    with started("hetzner", tmp_path) as hz:
        config_for(hz, tmp_path)
        assert run("up", "--yes")[0] == 0
        hz.api.failing_actions["change_server_type"] = {"code": "server_error", "message": "migration failed"}
        code, out = run("up", "--yes", "--size", "cx33")
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "Traceback" not in out, out
        assert "still records cx23" in errors[0] and "runs at its old size" in errors[0]
        assert recorded_size(hz) == {"type": "cx23"} and len(deploys) == 1
        assert hz.settings.hetzner.token is not None
        assert hz.settings.hetzner.token.get_secret_value() not in out


def test_cli_json_up_after_a_resize(tmp_path: Path, deploys: list[dict[str, Any]]) -> None:
    with started("hetzner", tmp_path) as hz:
        config_for(hz, tmp_path)
        assert run("up", "--yes")[0] == 0
        result = CliRunner().invoke(app, ["--json", "up", "--yes", "--size", "cx33"])
        assert result.exit_code == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["ok"] is True and recorded_size(hz) == {"type": "cx33"}


def test_plan_shows_a_pending_resize_and_changes_nothing(cloud: Cloud) -> None:
    cloud.provider(Recorder()).provision()
    assert not [s for s in cloud.provider(Recorder()).plan() if "resize" in s]
    before = recorded_size(cloud)
    steps = changed(cloud, **BIGGER[cloud.name]).provider(Recorder()).plan()
    old, new = OLD_NEW[cloud.name]
    assert any(s.startswith("resize server ") and old in s and new in s for s in steps), steps
    assert resize_calls(cloud) == [] and recorded_size(cloud) == before
