"""End-to-end fixtures: one real Debian VM (QEMU) provisioned once per run by the postgressor CLI.

The golden stack is the fullest configuration the tests need (sync with Electric's stand-in, backups on, a
migration) on the cloud image stand-in, booted through cloud-init as the clouds' images are. `up` runs once,
the paused VM is saved, and each module gets its own copy resumed from that state (vmstack.restore), so
destructive scenarios never see each other's changes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from golden_stack import CPUS, FORWARDED, MEMORY_MB, write_golden_project

import cloudimage_builder
from vmstack import Golden, Stack, provisioned, restored, save_golden


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def cloud_image() -> Path:
    """The cloud image stand-in every golden box boots (built once with debootstrap, cached)."""
    missing = cloudimage_builder.missing_tools()
    if missing:
        pytest.fail(f"the VM tests need {', '.join(missing)}: run scripts/setup", pytrace=False)
    return cloudimage_builder.ensure_cloud_image()


@pytest.fixture(scope="session")
def golden(cloud_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Golden]:
    project = tmp_path_factory.mktemp("golden")
    write_golden_project(project, cloud_image)
    with provisioned(project) as box:
        saved = save_golden(box, cloud_image, MEMORY_MB, CPUS, FORWARDED)
        try:
            yield saved
        finally:  # the overlays that used it are gone with their modules; free the disk space now
            shutil.rmtree(saved.stack_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(golden: Golden, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with restored(golden, tmp_path_factory.mktemp("project")) as box:
        yield box
