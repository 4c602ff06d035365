"""End-to-end fixtures: one real Debian VM (QEMU) provisioned once per run by the postgressor CLI.

The golden stack is the fullest configuration the tests need (sync with Electric's stand-in, backups on, a
migration) on the cloud image stand-in, booted through cloud-init as the clouds' images are. `up` runs once,
the paused VM is saved, and each module gets its own copy resumed from that state (vmstack.restore), so
destructive scenarios never see each other's changes.

The images and the golden stack are built in background threads as soon as collection selects a VM test, and
the VM tests are moved last: the tests that need no VM run meanwhile (QEMU under TCG keeps about one of the
machine's cores busy, so the other one is free for them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pytest
from golden_stack import CPUS, FORWARDED, MEMORY_MB, write_golden_project

import cloudimage_builder
from postgressor.vm import image
from vmstack import GOLDEN_RECORD, Golden, Stack, load_golden, restored, save_golden, vm_tools_problem

T = TypeVar("T")
KEEP_GOLDEN = "E2E_KEEP_GOLDEN"  # development only: keep the golden there, reuse it (the CLI refuses POSTGRESSOR_ ones)


class Background(Generic[T]):
    """``build()`` in a daemon thread; ``result()`` waits for it and fails the asking test if it raised."""

    def __init__(self, what: str, build: Callable[[], T]) -> None:
        self.what, self.build = what, build
        self.value: T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=what, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.value = self.build()
        except BaseException as err:  # reported to every test that needs it
            self.error = err

    def result(self) -> T:
        self.thread.join()
        if self.error is not None:
            pytest.fail(f"{self.what} failed: {type(self.error).__name__}: {self.error}", pytrace=False)
        assert self.value is not None
        return self.value


UP_TIMEOUT = 3600  # seconds for the golden's `up` under TCG


class GoldenBuild:
    """The cloud image, then `postgressor up` of the golden project and the saved VM; ``cancel`` ends the `up`."""

    def __init__(self, root: Path) -> None:
        # A developer's run may keep its golden in a directory of their choosing and reuse it later (never CI:
        # a kept golden is not rebuilt when the product changes).
        kept = os.environ.get(KEEP_GOLDEN, "")
        self.project = Path(kept) if kept else root / "golden"
        self.log = root / "golden-up.log"
        self.up: subprocess.Popen[str] | None = None
        self.cancelled = False

    def __call__(self) -> Golden:
        kept = os.environ.get(KEEP_GOLDEN, "")
        if kept and Path(kept, GOLDEN_RECORD).is_file():
            return load_golden(Path(kept))
        missing = cloudimage_builder.missing_tools()
        problem = vm_tools_problem() or (missing and f"the VM tests need {', '.join(missing)}: run scripts/setup")
        if problem:
            raise RuntimeError(problem)
        cloud_image = cloudimage_builder.ensure_cloud_image()
        self.project.mkdir(parents=True, exist_ok=True)
        write_golden_project(self.project, cloud_image)
        box = Stack(self.project, {})
        try:
            if self.cancelled:
                raise RuntimeError("cancelled")
            # Its progress lines go to a file as they come: `tail -f` it to follow a slow run.
            with self.log.open("w") as progress:
                self.up = subprocess.Popen([sys.executable, "-m", "postgressor", "--json", "up"], cwd=self.project,
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=progress,
                                           text=True)  # fmt: skip
                if self.cancelled:  # cancel() ran between the check above and Popen
                    self.up.terminate()
                try:
                    out, _ = self.up.communicate(timeout=UP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.up.kill()
                    self.up.wait()
                    raise
            if self.up.returncode != 0:
                errors = [line for line in self.log.read_text().splitlines() if "error" in line]
                raise RuntimeError(f"postgressor up exited {self.up.returncode}: {' / '.join(errors[-3:])}")
            box.up_result = json.loads(out)
            # The pass after `up` changes nothing and so records the box as converged (box/converged.py): every
            # module's copy then starts from a box whose no-op deploy skips the operation pass, as users' boxes do.
            settled = box.cli_json("deploy", timeout=UP_TIMEOUT)["deploy"]
            if settled["changed"] or settled["failed"]:
                raise RuntimeError(f"the deploy after the golden's up changed {settled['changed']} operations")
            return save_golden(box, cloud_image, MEMORY_MB, CPUS, FORWARDED)
        except BaseException:
            box.cli("destroy", "--yes", "--skip-final-backup", check=False, timeout=120)
            raise

    def cancel(self) -> None:
        self.cancelled = True
        if self.up is not None and self.up.poll() is None:
            self.up.terminate()


def none() -> None:
    """What a build that no selected test needs does."""


GOLDEN = pytest.StashKey[Background[Golden]]()
GOLDEN_BUILD = pytest.StashKey[GoldenBuild]()
BASE_IMAGE = pytest.StashKey[Background[image.BaseImage]]()
ROOT = pytest.StashKey[Path]()


def is_vm_test(item: pytest.Item) -> bool:
    return "tests/e2e/" in str(item.fspath)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `-m "not vm"` leaves them out
def pytest_itemcollected(item: pytest.Item) -> None:
    if is_vm_test(item):
        item.add_marker(pytest.mark.vm)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only VM tests that will run start a build
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    vm_tests = [item for item in items if is_vm_test(item)]
    if not vm_tests or config.option.collectonly:
        return
    # VM tests last; among them first those that do not wait for the golden (the base image's), so they run
    # while the golden is still provisioning.
    vm_tests.sort(key=lambda item: "golden" in getattr(item, "fixturenames", ()))
    items[:] = [item for item in items if item not in vm_tests] + vm_tests
    needs = {name for item in vm_tests for name in getattr(item, "fixturenames", ())}
    root = Path(tempfile.mkdtemp(prefix="postgressor-e2e-"))
    config.stash[ROOT] = root
    config.stash[GOLDEN_BUILD] = build = GoldenBuild(root)
    # Only what the selected tests use is built (a fixture's closure names what it depends on).
    config.stash[GOLDEN] = Background("provisioning the golden stack", build if "golden" in needs else none)
    config.stash[BASE_IMAGE] = Background(
        "building the base image", (lambda: image.ensure_base_image(lambda _: None)) if "base_image" in needs else none
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """End a build still running (an interrupted run), then remove the golden box and its files."""
    config = session.config
    if ROOT not in config.stash:
        return
    config.stash[GOLDEN_BUILD].cancel()
    for key in (GOLDEN, BASE_IMAGE):
        config.stash[key].thread.join()
    golden = config.stash[GOLDEN].value
    kept = golden is not None and (golden.project / GOLDEN_RECORD).is_file() and bool(os.environ.get(KEEP_GOLDEN))
    if golden is not None and not kept and (golden.project / ".postgressor" / "default.json").exists():
        Stack(golden.project, {}).cli("destroy", "--yes", "--skip-final-backup", check=False, timeout=120)
    shutil.rmtree(config.stash[ROOT], ignore_errors=True)


@pytest.fixture(scope="session")
def golden(request: pytest.FixtureRequest) -> Golden:
    return request.config.stash[GOLDEN].result()


@pytest.fixture(scope="session")
def cloud_image(golden: Golden) -> Path:
    """The cloud image stand-in under the golden box (built once with debootstrap, cached)."""
    return golden.image


@pytest.fixture(scope="session")
def base_image(request: pytest.FixtureRequest) -> image.BaseImage:
    return request.config.stash[BASE_IMAGE].result()


@pytest.fixture(scope="module")
def stack(golden: Golden, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with restored(golden, tmp_path_factory.mktemp("project")) as box:
        yield box
