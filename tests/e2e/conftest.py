"""End-to-end fixtures: one real Debian VM (QEMU) per test module, provisioned by the postgressor CLI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmstack import Stack, provisioned, write_project


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = tmp_path_factory.mktemp("project")
    write_project(project)
    with provisioned(project) as box:
        yield box
