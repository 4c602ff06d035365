"""The health-gated apply script, run by sh against stand-ins for systemctl, systemd-run, curl and journalctl.

The stand-ins model only what the script relies on: a restarted service runs the configuration its file held
at restart time; curl answers 200 when the running configuration is good; journalctl prints the service's
last error line (the real one reads it from `journalctl _SYSTEMD_UNIT=<unit>.service`).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from postgressor.box.gated import gated_script

SHIMS = {
    # `systemctl restart svc` snapshots the config as what runs; other verbs succeed silently.
    "systemctl": 'echo "$*" >> "$STUB/calls"; [ "$1" = restart ] && cp "$STUB/app.conf" "$STUB/running"; exit 0',
    "curl": 'if grep -q broken "$STUB/running" 2>/dev/null; then printf 000; else printf 200; fi',
    "journalctl": 'echo "$*" >> "$STUB/journal-calls"; echo "OSError: address already in use"; echo',
    "sleep": "exit 0",
    "failing-validate": 'echo "Error: adapting config using caddyfile: unknown directive: bogus" >&2; exit 1',
}


@pytest.fixture
def box(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SHIMS.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "app.conf").write_text("good v1\n")
    (tmp_path / "app.conf.good").write_text("good v1\n")
    (tmp_path / "running").write_text("good v1\n")
    return tmp_path


def run(box: Path, apply: str = "systemctl restart app", probe: str = "") -> subprocess.CompletedProcess[str]:
    script = gated_script("the app", "app", [str(box / "app.conf")], apply, "http://127.0.0.1:1/health", 5,
                          f"touch {box}/marker", probe)  # fmt: skip
    env = {**os.environ, "PATH": f"{box / 'bin'}:{os.environ['PATH']}", "STUB": str(box)}
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)


def test_a_healthy_change_is_kept_and_marked(box: Path) -> None:
    (box / "app.conf").write_text("good v2\n")
    proc = run(box)
    assert proc.returncode == 0, proc.stderr
    assert (box / "marker").exists()
    assert (box / "app.conf.good").read_text() == "good v2\n"


def test_an_unhealthy_change_is_rolled_back_and_restarted_on_the_old_config(box: Path) -> None:
    (box / "app.conf").write_text("broken v2\n")
    proc = run(box)
    assert proc.returncode == 1
    assert (box / "app.conf").read_text() == "good v1\n"
    assert (box / "running").read_text() == "good v1\n"
    assert not (box / "marker").exists()
    assert (box / "calls").read_text().count("restart app") == 2
    assert "_SYSTEMD_UNIT=app.service" in (box / "journal-calls").read_text()
    line = proc.stderr.strip().splitlines()[-1]
    assert line == (
        "the app did not become healthy on the new configuration (OSError: address already in use); "
        "rolled back to the previous configuration and restarted the app on it (it answers 200 again)"
    )


def test_without_a_working_configuration_there_is_nothing_to_roll_back_to(box: Path) -> None:
    (box / "app.conf.good").unlink()
    (box / "app.conf").write_text("broken v1\n")
    proc = run(box)
    assert proc.returncode == 1
    assert (box / "app.conf").read_text() == "broken v1\n"
    assert "did not become healthy within 5 s (OSError: address already in use)" in proc.stderr


def test_a_refused_reload_names_its_own_error(box: Path) -> None:
    (box / "app.conf").write_text("good but invalid\n")
    proc = run(box, apply="failing-validate && systemctl restart app")
    assert proc.returncode == 1
    assert "(Error: adapting config using caddyfile: unknown directive: bogus)" in proc.stderr
    assert (box / "app.conf").read_text() == "good v1\n"


def test_a_failed_probe_never_restarts_the_live_service(box: Path) -> None:
    (box / "app.conf").write_text("broken v2\n")
    proc = run(box, probe='why="bind: address already in use"; false')
    assert proc.returncode == 1
    assert not (box / "calls").exists()  # no restart: the live service kept running
    assert (box / "app.conf").read_text() == "good v1\n"
    assert (
        "the app: the new configuration does not start (bind: address already in use); kept the app running"
        in proc.stderr
    )


def test_a_passing_probe_goes_on_to_the_gated_restart(box: Path) -> None:
    (box / "app.conf").write_text("good v2\n")
    proc = run(box, probe="true")
    assert proc.returncode == 0, proc.stderr
    assert (box / "calls").read_text().count("restart app") == 1


def sync_commands(tmp_path: Path, responses: dict[str, str]) -> list[str]:
    from pyinfra.api import Inventory

    from postgressor.box.converge import run_deploys
    from postgressor.box.deploys.sync import caddy, electric, gateway
    from postgressor.box.gateway_bundle import GatewayBundle
    from postgressor.box.spec import Distro, box_spec
    from postgressor.config import load_settings

    (tmp_path / "wheels").mkdir()
    (tmp_path / "src.tar").write_bytes(b"")
    (tmp_path / "p.toml").write_text(
        '[supabase]\njwt_secret = "' + "s" * 40 + '"\nissuer = "https://abc.supabase.co/auth/v1"\n'
        '[[sync.tables]]\nname = "notes"\nowner_column = "user_id"\n'
    )
    spec = box_spec(load_settings(tmp_path / "p.toml"), Distro("debian", 12, "bookworm"))
    bundle = GatewayBundle(tmp_path / "src.tar", tmp_path / "wheels", ("aiohttp==3.11.0",))
    data = {"fake_responses": {"uname -s": "Linux", "useradd": "/usr/sbin/useradd", **responses},
            "fake_delay": 0, "fake_delay_jitter": 0}  # fmt: skip
    inventory = Inventory(([("@fake/box", data)], {}))
    deploys = [(electric, {"spec": spec}), (gateway, {"spec": spec, "bundle": bundle}),
               (caddy, {"spec": spec, "public_address": "192.0.2.1"})]  # fmt: skip
    run_deploys(inventory, deploys, lambda name, report: None)
    return [str(c) for c in next(iter(inventory)).connector.executed_commands]


def test_sync_deploys_gate_each_service_and_probe_the_gateway(tmp_path: Path) -> None:
    commands = sync_commands(tmp_path, {})
    assert not any('cp -p "$f" "$f.good"; done; true' in c for c in commands)  # nothing healthy to keep yet
    gated = [c for c in commands if "restore()" in c]
    assert len(gated) == 3, commands
    electric_cmd, gateway_cmd, caddy_cmd = gated
    assert "systemctl restart electric" in electric_cmd and "/etc/postgressor/electric.env" in electric_cmd
    assert "http://127.0.0.1:3000/v1/health" in electric_cmd
    assert "systemd-run" in gateway_cmd and "postgressor-gateway-probe" in gateway_cmd
    assert "/etc/postgressor/gateway.toml" in gateway_cmd and "systemctl restart postgressor-gateway" in gateway_cmd
    assert "caddy validate" in caddy_cmd and "https://127.0.0.1/health" in caddy_cmd and "-k" in caddy_cmd
    assert "s" * 40 not in "\n".join(gated)  # the secret travels in the uploaded file only


def test_a_box_deployed_before_gating_keeps_its_working_files_first(tmp_path: Path) -> None:
    commands = sync_commands(tmp_path, {'.good" ] || n=': "2", "curl -s -o /dev/null": "200"})
    keeps = [c for c in commands if 'cp -p "$f" "$f.good"; done; true' in c]
    assert len(keeps) == 3
    assert "/etc/postgressor/gateway.toml" in keeps[1] and "/etc/caddy/Caddyfile" in keeps[2]
    assert commands.index(keeps[1]) < next(i for i, c in enumerate(commands) if "restore()" in c and "gateway" in c)


def test_the_gateway_user_gets_no_home_directory(tmp_path: Path) -> None:
    # pyinfra's server.user made and chowned `home` unless told not to; system_user never makes it.
    commands = sync_commands(tmp_path, {})
    useradd = [c for c in commands if "useradd" in c and "postgressor-gw" in c]
    assert useradd and all("--no-create-home" in c and "-m" not in c.split() for c in useradd), useradd
    assert not [c for c in commands if "/nonexistent" in c and ("mkdir" in c or "chown" in c)], commands
