"""Time-to-ready of `postgressor up --provider local`, the no-op re-run, and remote commands for each.

Run as root on a machine with QEMU and debootstrap (scripts/setup): `.venv/bin/python bench/provision.py`.
It boots a throwaway VM stack in a temporary project and destroys it at the end. The floor is the time of
one `ssh host true` to the same VM.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from postgressor.state import load_state
from postgressor.vm.image import base_image, ensure_base_image


def cli(project: Path, *args: str) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "postgressor", "--json", *args], cwd=project,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"postgressor {' '.join(args)} failed: {proc.stderr.strip()}")
    return elapsed, json.loads(proc.stdout)


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


def main() -> None:
    image_seconds = 0.0
    if not base_image().exists():
        started = time.monotonic()
        ensure_base_image(lambda message: None)
        image_seconds = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="postgressor-bench-") as tmp:
        project = Path(tmp)
        (project / "postgressor.toml").write_text('provider = "local"\n[local]\nmemory_mb = 2048\ncpus = 2\n')
        try:
            up_s, up = cli(project, "up")
            rerun_s, rerun = cli(project, "deploy")
            floor = ssh_true_seconds(project)
        finally:
            subprocess.run([sys.executable, "-m", "postgressor", "destroy", "--yes"], cwd=project,
                           capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    rows = [
        ("base image build (once, cached)", image_seconds, None),
        ("up: boot + harden + PostgreSQL", up_s, up["deploy"]["remote_commands"]),
        ("no-op re-run (deploy)", rerun_s, rerun["deploy"]["remote_commands"]),
        ("floor: one `ssh host true`", floor, 1),
    ]
    print(f"{'step':<36} {'seconds':>9} {'remote cmds':>12}")
    for name, seconds, commands in rows:
        print(f"{name:<36} {seconds:>9.1f} {'' if commands is None else commands:>12}")
    per_command = rerun_s / max(1, rerun["deploy"]["remote_commands"])
    print(f"no-op re-run: {rerun['deploy']['changed']} changed; {per_command:.2f} s per remote command "
          f"({per_command / floor:.1f}x the ssh floor)")  # fmt: skip


if __name__ == "__main__":
    main()
