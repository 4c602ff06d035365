"""End-to-end fixtures: one real Debian VM (QEMU) provisioned once per run by the postgressor CLI.

The golden stack is the fullest configuration the tests need (sync with Electric's stand-in, backups on, a
migration): `up` runs once, the paused VM is saved, and each module gets its own copy resumed from that state
(vmstack.restore), so destructive scenarios never see each other's changes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from golden_stack import CPUS, FORWARDED, MEMORY_MB, write_golden_project

from vmstack import Golden, Stack, provisioned, restored, save_golden


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Golden]:
    project = tmp_path_factory.mktemp("golden")
    write_golden_project(project)
    with provisioned(project) as box:
        saved = save_golden(box, MEMORY_MB, CPUS, FORWARDED)
        try:
            yield saved
        finally:  # the overlays that used it are gone with their modules; free the disk space now
            shutil.rmtree(saved.stack_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(golden: Golden, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with restored(golden, tmp_path_factory.mktemp("project")) as box:
        yield box
