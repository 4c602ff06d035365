"""Fixtures shared by the integration tests: one real PostgreSQL cluster for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakebox import FakeBox, running_fake_box
from pgcluster import Cluster, running_cluster

from postgressor.box.layout import secret_path
from postgressor.state import HostRecord


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    with running_cluster() as cluster:
        yield cluster


APP_ROLE, APP_PASSWORD = "app_owner", "app-owner-pw"


@pytest.fixture
def app_db(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database owned by a non-superuser role that may create roles (like the box's owner)."""
    pg_cluster.ensure_role(APP_ROLE, APP_PASSWORD, "NOSUPERUSER", "CREATEROLE")
    name = pg_cluster.create_database(owner=APP_ROLE)
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture
def fake_box(pg_cluster: Cluster, tmp_path: Path) -> Iterator[tuple[FakeBox, HostRecord]]:
    """A box over SSH (fakebox.FakeBox) whose PostgreSQL is ``pg_cluster`` and whose owner password is APP_PASSWORD."""
    with running_fake_box(pg_cluster, tmp_path, {secret_path(f"{APP_ROLE}.password"): APP_PASSWORD + "\n"}) as box:
        yield box
