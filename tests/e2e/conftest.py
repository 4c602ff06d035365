"""End-to-end fixtures: one real Debian VM (QEMU) per test module, provisioned by the postgressor CLI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from vmstack import Stack, write_project

REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"VM tests need {', '.join(missing)}: run .ci/run or apt-get install them", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("VM tests build the base image with debootstrap and need root", pytrace=False)
    project = tmp_path_factory.mktemp("project")
    write_project(project)
    box = Stack(project, {})
    try:
        box.up_result = box.cli_json("up")
        yield box
    finally:
        box.cli("destroy", "--yes", check=False, timeout=120)
