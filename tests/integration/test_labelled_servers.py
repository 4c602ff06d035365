"""Servers found by their labels when the state is gone (issue 14 item 5), on the Hetzner, OCI and OVH fakes.

Labels are stable (stack + project identity), so a CI runner whose state cache was evicted can still list
and remove a PR's staging server, and `up` refuses to adopt a server no state records.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudfakes.clouds import NAMES, Cloud, started
from cloudfakes.harness import Recorder, fake_ssh, quick_backoff, state_for
from postgressor.cli import app
from postgressor.config import Settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.providers.cloud import CloudProvider
from postgressor.providers.labelled import destroy_labelled, list_servers
from postgressor.state import StackState


@pytest.fixture(params=NAMES)
def cloud(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    fake_ssh(monkeypatch)
    with started(request.param, tmp_path, project="shop") as c:
        yield c


def provider(cloud: Cloud, stack: str, settings: Settings | None = None) -> CloudProvider:
    rec = Recorder()
    cfg = settings or cloud.settings
    return cloud.cls(cfg, state_for(cfg, stack), rec.log, backoff=quick_backoff(rec))


def lose_state(cloud: Cloud) -> None:
    shutil.rmtree(cloud.settings.state_dir)


def test_list_finds_each_stack_after_the_state_is_lost(cloud: Cloud) -> None:
    for stack in ("pr-1", "pr-2"):
        provider(cloud, stack).provision()
    lose_state(cloud)
    servers = list_servers(cloud.settings, Recorder().log)
    assert sorted(s.stack for s in servers) == ["pr-1", "pr-2"]
    assert {s.project for s in servers} == {"shop"}
    assert all(s.id and s.region and s.name.startswith("postgressor-pr-") for s in servers)


def test_another_projects_servers_are_not_listed(cloud: Cloud) -> None:
    provider(cloud, "pr-1").provision()
    other = cloud.settings.model_copy(update={"project": "blog"})
    assert list_servers(other, Recorder().log) == []


def test_destroy_by_label_removes_every_kind_of_that_stack_only(cloud: Cloud) -> None:
    kinds = provider(cloud, "pr-1").kinds
    provider(cloud, "pr-1").provision()
    provider(cloud, "pr-2").provision()
    lose_state(cloud)
    removed = destroy_labelled(cloud.settings, "pr-1", Recorder().log)
    assert len(removed) == len(kinds)
    assert [s.stack for s in list_servers(cloud.settings, Recorder().log)] == ["pr-2"]
    assert cloud.count("server") == 1
    assert destroy_labelled(cloud.settings, "pr-1", Recorder().log) == []  # twice is harmless
    assert not cloud.settings.state_dir.exists() or not any(cloud.settings.state_dir.iterdir())


def test_destroy_by_label_refuses_a_stack_with_a_state(cloud: Cloud) -> None:
    provider(cloud, "pr-1").provision()
    with pytest.raises(UsageError, match="use 'postgressor --stack pr-1 destroy'"):
        destroy_labelled(cloud.settings, "pr-1", Recorder().log)


def test_up_refuses_to_adopt_a_server_no_state_records(cloud: Cloud) -> None:
    provider(cloud, "pr-1").provision()
    lose_state(cloud)
    with pytest.raises(PostgressorError, match=r"servers destroy --provider") as err:
        provider(cloud, "pr-1").provision()
    assert "pr-1" in str(err.value) and "shop" in str(err.value)
    assert cloud.count("server") == 1
    assert not (cloud.settings.state_dir / "pr-1.json").exists()  # nothing recorded, nothing half-made


def test_a_state_with_a_pre_stable_random_tag_is_still_matched(cloud: Cloud) -> None:
    """States written before labels were stable carry a random tag; their resources are found by it."""
    state: StackState = state_for(cloud.settings, "old")
    first = provider(cloud, "old")
    state.add("cloud", "a1b2c3d4", region=first.region)
    rec = Recorder()
    old = cloud.cls(cloud.settings, state, rec.log, backoff=quick_backoff(rec))
    old.provision()
    assert "postgressor-project" not in old.labels()
    assert old.resource_name() == "postgressor-old-a1b2c3d4"
    assert old.destroy() and cloud.count("server") == 0


def test_the_cli_lists_and_destroys_by_label(cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider(cloud, "pr-9").provision()
    lose_state(cloud)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postgressor.toml").write_text(_toml(cloud))

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    listed = run("servers", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    (server,) = json.loads(listed.stdout)["servers"]
    assert server["stack"] == "pr-9" and server["project"] == "shop"
    refused = run("servers", "destroy", "--stack", "pr-9")  # no terminal, no --yes
    assert refused.exit_code == 2 and cloud.count("server") == 1
    done = run("servers", "destroy", "--stack", "pr-9", "--yes", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["ok"] and cloud.count("server") == 0


def _toml(cloud: Cloud) -> str:
    """The fake's settings as postgressor.toml (the CLI loads its own settings)."""
    s = cloud.settings
    lines = [f'provider = "{s.provider}"', 'project = "shop"', f'state_dir = "{s.state_dir}"']
    if s.region:
        lines.append(f'region = "{s.region}"')
    section = {"hetzner": s.hetzner, "oracle": s.oracle, "ovh": s.ovh}[s.provider]
    lines.append(f"[{s.provider}]")
    for key, value in section.model_dump(mode="json", exclude_defaults=True).items():
        secret = getattr(section, key)
        raw = secret.get_secret_value() if hasattr(secret, "get_secret_value") else value
        lines.append(f"{key} = {json.dumps(str(raw))}")
    return "\n".join(lines) + "\n"
