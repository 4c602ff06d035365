"""Defaults from today's facts (issue 22, item 1): Debian 13 on the clouds, the distro's PostgreSQL everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from postgressor.box.spec import Distro, PostgresChoice, box_spec, image_distro, postgres_choice
from postgressor.cli import app
from postgressor.config import Settings, load_settings
from postgressor.errors import UsageError
from postgressor.providers import get_provider
from postgressor.state import open_state

# provider: the OS of its default image, and the PostgreSQL that OS's archive ships
DEFAULTS = {"hetzner": ("Debian 13", 17), "ovh": ("Debian 13", 17), "oracle": ("Ubuntu 24.04", 16),
            "local": ("Debian 12", 15)}  # fmt: skip


@pytest.fixture(autouse=True)
def project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HCLOUD_TOKEN", "x")  # no API call is made
    for name in ("POSTGRESSOR_PROVIDER", "POSTGRESSOR_REGION", "POSTGRESSOR_POSTGRES__SOURCE"):
        monkeypatch.delenv(name, raising=False)


def default_distro(provider: str, **settings: Any) -> tuple[Settings, Distro]:
    cfg = load_settings(provider=provider, **settings)
    distro = image_distro(get_provider(cfg, open_state(cfg.state_dir, "s", provider), print).image())
    assert distro is not None
    return cfg, distro


@pytest.mark.parametrize("provider", DEFAULTS)
def test_default_image_per_provider(provider: str) -> None:
    assert default_distro(provider)[1].title == DEFAULTS[provider][0]


@pytest.mark.parametrize("provider", DEFAULTS)
def test_default_source_is_the_distros(provider: str) -> None:
    assert postgres_choice(*default_distro(provider)) == PostgresChoice("distro", DEFAULTS[provider][1])


def plan(*args: str, version: str) -> tuple[int, str, str]:
    env = {"POSTGRESSOR_POSTGRES__VERSION": version}
    result = CliRunner().invoke(app, [*args, "--provider", "hetzner", "--region", "fsn1"], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_a_version_debian_lacks_comes_from_pgdg_and_plan_says_so() -> None:
    line = "PostgreSQL 16 is not in Debian 13's archive: from PGDG"
    code, out, _ = plan("plan", version="16")
    assert code == 0 and line in out.splitlines()
    code, _, err = plan("up", version="16")  # said before the question (no terminal: refused, nothing made)
    assert code == 2 and line in err.splitlines() and "pass --yes" in err
    assert "PGDG" not in plan("plan", version="17")[1]


def test_explicit_distro_without_the_version_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRESSOR_POSTGRES__SOURCE", "distro")
    for verb in ("plan", "up"):
        code, out, err = plan(verb, version="16")
        assert code == 2 and not out
        assert err.strip() == ("error: PostgreSQL 16 is not in Debian 13's archive (it has 17); set "
                               "postgres.version = 17 or postgres.source = 'pgdg'")  # fmt: skip
    assert not Path(".postgressor").exists()  # nothing recorded, nothing made


def test_a_box_keeps_the_version_it_runs() -> None:
    # a Debian 12 box deployed under the old default (PGDG 17) is not moved to Debian's 15
    cfg, bookworm = default_distro("hetzner", hetzner={"image": "debian-12"})
    assert postgres_choice(cfg, bookworm, installed=17).source == "pgdg"
    assert postgres_choice(cfg, bookworm, installed=15) == PostgresChoice("distro", 15)


def test_an_extension_the_distro_lacks_comes_from_pgdg_at_the_distros_version() -> None:
    cfg, bookworm = default_distro("hetzner", hetzner={"image": "debian-12"}, postgres={"extensions": ["vector"]})
    assert postgres_choice(cfg, bookworm) == PostgresChoice(
        "pgdg", 15, "postgresql-15-pgvector is not in Debian 12's archive: PostgreSQL 15 from PGDG")
    explicit, _ = default_distro("hetzner", postgres={"extensions": ["vector"], "source": "distro"})
    with pytest.raises(UsageError, match="has no package in debian 12's own archive"):
        box_spec(explicit, bookworm)
