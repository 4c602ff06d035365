"""Time-to-ready of `postgressor up --provider local` with sync and backups on, the no-op re-run, and the repair
of one hand-edited file: seconds and remote commands for each, as ratios to a floor measured in the same run.
A pass that changed something is followed by one full pass that changes nothing (it records the box as
converged); the no-op re-runs come after it.

Run as root on a machine with QEMU and debootstrap (scripts/setup): `.venv/bin/python bench/provision.py`.
It boots a throwaway VM stack in a temporary project (Electric's test stand-in, as the VM tests use) and destroys
it at the end. The floor is the median of five `ssh host true` to the same VM; the boot is the provider's own
step (from starting QEMU to sshd's first key exchange).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from postgressor.state import load_state
from postgressor.vm.image import base_image, ensure_base_image

sys.path[:0] = [str(Path(__file__).parents[1] / "tests"), str(Path(__file__).parents[1] / "tests" / "e2e")]
from golden_stack import write_box_files  # noqa: E402 (the VM tests' box: sync with Electric's stand-in, backups)

HAND_EDIT = "echo '# edited by hand' >> /etc/ssh/sshd_config.d/00-postgressor.conf"


def cli(project: Path, *args: str) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """(seconds, the JSON result, the progress lines) of one postgressor command."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "postgressor", "--json", *args], cwd=project,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"postgressor {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    progress = []
    for line in proc.stderr.splitlines():
        try:
            progress.append(json.loads(line))
        except ValueError:
            continue
    return elapsed, (json.loads(proc.stdout) if proc.stdout.strip() else {}), progress


def ssh_true_seconds(project: Path, runs: int = 5) -> float:
    state = load_state(project / ".postgressor", "default")
    assert state is not None and state.host is not None
    host = state.host
    argv = ["ssh", "-i", host.key_path, "-p", str(host.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={state.stack_dir / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            f"{host.user}@{host.address}", "true"]  # fmt: skip
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def boot_seconds(progress: list[dict[str, Any]]) -> float:
    """The provider's boot steps of `up` (starting QEMU, waiting for SSH), from its progress lines."""
    done = [p for p in progress if p.get("seconds") is not None and ("booting" in p["step"] or "SSH" in p["step"])]
    return sum(float(p["seconds"]) for p in done)


def main() -> None:
    image_seconds = 0.0
    if not base_image().exists():
        started = time.monotonic()
        ensure_base_image(lambda message: None)
        image_seconds = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="postgressor-bench-") as tmp:
        project = Path(tmp)
        config = 'provider = "local"\n[local]\nmemory_mb = 2048\ncpus = 2\n' + write_box_files(project)
        (project / "postgressor.toml").write_text(config)
        try:
            up_s, up, up_progress = cli(project, "up")
            verify_s, verify, _ = cli(project, "deploy")  # changes nothing: records the box as converged
            noop_s, noop, _ = cli(project, "deploy")
            subprocess.run([sys.executable, "-m", "postgressor", "ssh", "--", HAND_EDIT], cwd=project, check=True,
                           capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
            repair_s, repair, _ = cli(project, "deploy")
            reverify_s, reverify, _ = cli(project, "deploy")
            after_s, after, _ = cli(project, "deploy")
            floor = ssh_true_seconds(project)
        finally:
            subprocess.run([sys.executable, "-m", "postgressor", "destroy", "--yes", "--skip-final-backup"],
                           cwd=project, capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    boot = boot_seconds(up_progress)
    rows = [
        ("base image build (once, cached)", image_seconds, None),
        ("boot (QEMU start to SSH)", boot, None),
        ("up: boot, harden, PostgreSQL, sync, backups", up_s, up["deploy"]),
        ("first re-run: full pass, records the box", verify_s, verify["deploy"]),
        ("no-op re-run (deploy)", noop_s, noop["deploy"]),
        ("repair of one hand-edited file (deploy)", repair_s, repair["deploy"]),
        ("full pass after the repair (deploy)", reverify_s, reverify["deploy"]),
        ("no-op after that (deploy)", after_s, after["deploy"]),
        ("floor: one `ssh host true`", floor, None),
    ]
    print(f"{'step':<44} {'seconds':>8} {'x floor':>8} {'remote cmds':>12} {'changed':>8}")
    for name, seconds, deploy in rows:
        commands = "" if deploy is None else deploy["remote_commands"]
        changed = "" if deploy is None else deploy["changed"]
        print(f"{name:<44} {seconds:>8.1f} {seconds / floor:>8.1f} {commands:>12} {changed:>8}")
    skipped = [d["converged_since"] is not None for d in (noop["deploy"], after["deploy"])]
    print(f"no-op re-runs skipped the operation pass: {skipped}; the repair ran it: "
          f"{repair['deploy']['converged_since'] is None} ({repair['deploy']['changed']} changed)")  # fmt: skip


if __name__ == "__main__":
    main()
