"""Fixtures shared by the integration tests: one real PostgreSQL cluster for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pgcluster import Cluster, running_cluster


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
