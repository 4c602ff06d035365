"""`postgressor up --provider local` on a real Debian VM (a copy of the golden box), checked from outside and inside."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

import paramiko
import pytest

import reach
from postgressor.box.layout import psql
from postgressor.config import load_settings
from postgressor.remote.database import stack_target
from postgressor.remote.ssh import wait_for_ssh
from postgressor.vm.machine import running_pid
from vmstack import Stack

APP_PW = "PGPASSWORD=$(cat /etc/postgressor/secrets/app.password)"
ELECTRIC_PW = "PGPASSWORD=$(cat /etc/postgressor/secrets/electric.password)"


def test_up_changed_the_box(stack: Stack) -> None:
    deploy = stack.up_result["deploy"]
    assert stack.up_result["postgres"]["version"] == 15
    assert deploy["failed"] == 0
    assert deploy["changed"] > 10


def test_the_first_up_restarted_postgres_once(stack: Stack) -> None:
    # The package starts the cluster; the tuning and WAL archiving drop-ins are applied together: one restart.
    journal = stack.sh("journalctl --no-pager -o cat -u postgresql@15-main").stdout
    assert journal.count("Started postgresql@15-main.service") == 2, journal
    assert journal.count("Stopping postgresql@15-main.service") == 1, journal


def test_postgres_runs_under_systemd_with_logical_wal(stack: Stack) -> None:
    assert stack.sh("systemctl is-active postgresql@15-main").stdout.strip() == "active"
    assert stack.sh("systemctl is-enabled postgresql@15-main").stdout.strip() == "enabled"
    show = stack.sh("runuser -u postgres -- psql -XAtc 'SHOW wal_level' -c 'SHOW password_encryption'")
    assert show.stdout.split() == ["logical", "scram-sha-256"]


def test_postgres_listens_on_localhost_only(stack: Stack) -> None:
    listeners = stack.sh("ss -Hltn 'sport = :5432' | awk '{print $4}'").stdout.split()
    # Loopback, and the Docker bridge's address for Electric's container (the golden box runs sync).
    assert listeners and all(addr.startswith(("127.0.0.1:", "[::1]:", "172.17.0.1:")) for addr in listeners), listeners
    # From outside the VM (through the forwarded port) PostgreSQL must not answer; SSH does (positive control).
    assert reach.ssh_answers(stack.host.port)
    assert not reach.postgres_answers(stack.forwarded(5432))
    proc = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(stack.forwarded(5432)), "-U", "app", "-d", "app", "-c", "select 1"],
        capture_output=True, text=True, timeout=60, env={"PGCONNECT_TIMEOUT": "5", "PGPASSWORD": "x"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "password authentication failed" not in proc.stderr, proc.stderr  # a connection error, not a refusal


def test_electric_role_streams_an_insert_over_logical_replication(stack: Stack) -> None:
    app = f"{APP_PW} psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -U app -d app"
    electric = f"{ELECTRIC_PW} psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -U electric -d app"
    setup = stack.sh(
        f"{app} -c 'CREATE TABLE e2e_items (id serial PRIMARY KEY, note text NOT NULL)' && "
        f"{electric} -c 'CREATE PUBLICATION e2e_pub FOR TABLE e2e_items' "
        "-c \"SELECT 1 FROM pg_create_logical_replication_slot('e2e_slot', 'pgoutput')\""
    )
    assert setup.ok, setup.stderr
    insert = stack.sh(f"{app} -c \"INSERT INTO e2e_items (note) VALUES ('hello-from-e2e')\" && "
                      f"{electric} -c 'SELECT pg_current_wal_lsn()'")  # fmt: skip
    assert insert.ok, insert.stderr
    end_lsn = insert.stdout.split()[-1]
    # Stream it over a real replication connection, as Electric does.
    stream = stack.sh(
        f"{ELECTRIC_PW} pg_recvlogical -h 127.0.0.1 -U electric -d app -S e2e_slot --start --no-loop "
        f"-o proto_version=1 -o publication_names=e2e_pub -E {end_lsn} -f /tmp/e2e.out && "
        "grep -c hello-from-e2e /tmp/e2e.out",
        timeout=120,
    )
    assert stream.ok, stream.stderr
    assert int(stream.stdout.strip()) >= 1


def test_a_superuser_session_through_the_tunnel_leaves_no_password(stack: Stack,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # What `move` uses for CREATE SUBSCRIPTION: the box's psql as postgres (stdin), the tunnel, scram over TCP.
    monkeypatch.chdir(stack.project)
    settings = load_settings(stack.project / "postgressor.toml")
    with stack_target(settings, "default", superuser=True) as target:
        row = target.conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == ("postgres", True)
    assert stack.sh(psql("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'")).stdout.strip() == "t"


def test_status_reports_postgres_and_the_slot(stack: Stack) -> None:
    report = stack.cli_json("status")
    assert report["reachable"] and report["service"] == "active"
    assert report["postgres"]["version"].startswith("15.")
    assert report["postgres"]["settings"]["wal_level"] == "logical"
    slots = {slot["name"]: slot for slot in report["postgres"]["slots"]}
    assert slots["e2e_slot"]["plugin"] == "pgoutput"
    assert slots["e2e_slot"]["retained_bytes"] is not None


def test_password_ssh_login_is_refused(stack: Stack) -> None:
    sock = socket.create_connection(("127.0.0.1", stack.host.port), timeout=30)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=30)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("root", "any-password")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_firewall_admits_web_ports_and_denies_others(stack: Stack) -> None:
    # Caddy serves port 80 on this box; something answers 8080 inside it too. Python's http.server takes seconds
    # to start under TCG: wait for both inside the box (bounded).
    start = stack.sh(
        "(setsid python3 -m http.server 8080 --bind 0.0.0.0 -d /tmp >/dev/null 2>&1 &); "
        "for i in $(seq 60); do curl -sS -o /dev/null -m 2 http://127.0.0.1:80/ && "
        "curl -fsS -o /dev/null -m 2 http://127.0.0.1:8080/ && echo inside-ok && break; sleep 1; done"
    )
    try:
        assert "inside-ok" in start.stdout, start.stderr
        assert reach.http_answers(stack.forwarded(80)), "port 80 must be open"
        assert not reach.http_answers(stack.forwarded(8080)), "port 8080 must be filtered by the firewall"
    finally:
        stack.sh("pkill -f 'http.server' || true")
    rules = stack.sh("ufw status").stdout
    assert "Status: active" in rules
    allowed = [line for line in rules.splitlines() if " ALLOW " in line]
    assert {line.split()[0] for line in allowed} == {"22/tcp", "80/tcp", "443/tcp", "5432/tcp"}, rules
    # PostgreSQL only for Electric's container, on the Docker bridge
    assert all(" on docker0 " in line for line in allowed if line.startswith("5432/tcp")), rules


def test_fail2ban_and_unattended_upgrades(stack: Stack) -> None:
    assert stack.sh("fail2ban-client status sshd").ok
    assert 'Unattended-Upgrade "1"' in stack.sh("apt-config dump APT::Periodic").stdout
    assert stack.sh("swapon --show=NAME --noheadings").stdout.strip() == "/swapfile"


def test_ssh_verb_runs_one_command(stack: Stack) -> None:
    proc = stack.cli("ssh", "--", "hostname")
    assert proc.stdout.strip() == "postgressor-default"  # from the NoCloud seed


def test_logs_reads_each_services_journal(stack: Stack) -> None:
    # A fresh PostgreSQL entry ("Reloading PostgreSQL Cluster 15-main..."), however long ago the golden box booted.
    assert stack.sh("systemctl reload postgresql@15-main").ok
    proc = stack.cli("logs", "postgres", "-n", "20", timeout=300)
    assert "PostgreSQL Cluster 15-main" in proc.stdout, proc.stdout + proc.stderr
    assert all(line.split(" ", 2)[1] == "postgres" for line in proc.stdout.splitlines() if not line.startswith(" "))
    records = [json.loads(line) for line in stack.cli("--json", "logs", "all", "--since", "1h", timeout=300).stdout
               .splitlines()]  # fmt: skip
    assert records and all(set(r) == {"time", "service", "unit", "priority", "message"} for r in records)
    assert any(r["service"] == "postgres" and r["unit"] == "postgresql@15-main.service" for r in records), records
    assert {r["service"] for r in records} <= {"postgres", "electric", "gateway", "caddy", "backup"}
    # No scheduled backup has run yet (the first one runs during the deploy): the timers still answer.
    backup = stack.cli("logs", "backup", timeout=300, check=False)
    assert backup.returncode == 0, backup.stderr
    bad = stack.cli("logs", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since 'yesterday' is not a time" in bad.stderr


def test_logs_follow_streams_until_ctrl_c(stack: Stack) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "postgressor", "logs", "gateway", "-f"], cwd=stack.project, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    try:
        first = lines.get(timeout=180)  # the newest entries come first (SSH to a slow VM included)
        assert first is not None and first.split(" ", 2)[1] == "gateway", proc.stderr.read() if first is None else first
        # A new entry arrives while following: systemd's own lines about restarting the gateway, stamped (UTC,
        # to the second, as the plain lines are) no earlier than the box's clock before the restart.
        before = stack.sh("date -u +%Y-%m-%dT%H:%M:%SZ").stdout.strip()
        assert stack.sh("systemctl restart postgressor-gateway").ok
        deadline = time.monotonic() + 180
        seen: list[str] = []
        while not any(line[:20] >= before and line.split(" ", 2)[1] == "gateway" for line in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "logs -f ended by itself: " + "".join(seen[-20:])
            seen.append(line)
    except queue.Empty:
        proc.kill()
        pytest.fail("logs -f printed nothing new within 180 s", pytrace=False)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("logs -f did not end within 30 s of Ctrl-C", pytrace=False)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # Nothing keeps following on the box once the session is gone.
    deadline = time.monotonic() + 60
    while stack.sh("pgrep -f '[j]ournalctl.*--follow'").ok:  # [j]: the pattern does not match this command
        assert time.monotonic() < deadline, "journalctl --follow still runs on the box"
        time.sleep(2)


def test_plan_on_the_converged_box_changes_nothing(stack: Stack) -> None:
    plan = stack.cli_json("plan")
    assert plan["provider_steps"] == []
    assert plan["operations"] and not [op for op in plan["operations"] if op["status"] == "would change"]


NOOP_COMMAND_LIMIT = 20  # issue 12


def assert_noop(deploy: dict) -> None:
    """A deploy that found the box as the last one left it: no operation pass, a few remote commands."""
    assert deploy["converged_since"] and deploy["changed"] == 0 and deploy["operations"] == [], deploy
    assert deploy["remote_commands"] <= NOOP_COMMAND_LIMIT, deploy


def test_a_noop_deploy_skips_the_pass_and_drift_brings_it_back(stack: Stack) -> None:
    first = stack.cli_json("deploy")["deploy"]
    assert first["changed"] == 0 and first["failed"] == 0, first
    if not first["converged_since"]:  # the tests before this one changed the box: this pass recorded it again
        assert_noop(stack.cli_json("deploy")["deploy"])
    else:
        assert_noop(first)
    # Drift of kinds no file stamp sees: a unit stopped, a role's membership revoked, an account edited.
    drift = stack.sh("systemctl stop pgbackrest-diff.timer && " + psql("REVOKE anon FROM app") + " && "
                     "usermod --shell /bin/bash postgressor-gw")  # fmt: skip
    assert drift.ok, drift.stderr
    repair = stack.cli_json("deploy")["deploy"]
    assert not repair["converged_since"] and repair["failed"] == 0, repair
    changed = {op["name"] for op in repair["operations"] if op["status"] == "changed"}
    assert {"Backups | diff backup timer active", "PostgreSQL | app may act as the Supabase roles",
            "Gateway | Gateway user"} <= changed, changed  # fmt: skip
    assert stack.sh("systemctl is-active pgbackrest-diff.timer").stdout.strip() == "active"
    assert stack.sh(psql("SELECT pg_has_role('app', 'anon', 'MEMBER')")).stdout.strip() == "t"
    assert stack.sh("getent passwd postgressor-gw").stdout.strip().endswith(":/usr/sbin/nologin")
    # After changes, the next pass runs in full and proves the box converged (its record then skips the one after)
    verified = stack.cli_json("deploy")["deploy"]
    assert not verified["converged_since"] and verified["changed"] == 0 and verified["operations"], verified


HOLD_APT_LOCKS = (
    "(setsid python3 -c \"import fcntl, time; held = [open(p, 'a') for p in ('/var/lib/apt/lists/lock', "
    "'/var/lib/dpkg/lock-frontend')]; [fcntl.lockf(f, fcntl.LOCK_EX) for f in held]; time.sleep(30)\" "
    "</dev/null >/dev/null 2>&1 &); sleep 5; lslocks -n -o PATH"
)


def test_deploy_killed_half_way_then_rerun_converges(stack: Stack) -> None:
    # Undo part of the hardening and make sshd actually run with it, so the re-run has real work. The drop-in
    # cloud-init writes on many images (passwords on) stays: the deploy's own drop-in must win over it.
    drift = stack.sh(
        "rm /etc/ssh/sshd_config.d/00-postgressor.conf && "
        "echo 'PasswordAuthentication yes' > /etc/ssh/sshd_config.d/50-cloud-init.conf && systemctl reload ssh && "
        "ufw delete allow 443/tcp && "
        "rm /etc/postgresql/15/main/conf.d/50-postgressor.conf && systemctl reload postgresql@15-main"
    )
    assert drift.ok, drift.stderr
    wait_for_ssh("127.0.0.1", stack.host.port, timeout=120)  # sshd re-executes itself on reload
    # apt busy as at a cloud server's first boot, with a package to install: another process holds apt's lists
    # lock and dpkg's frontend lock for 30 s. `apt-get update` alone would fail at once on the lists lock, and the
    # install comes before the SSH step below, so reaching that step shows the deploy waited, then installed.
    assert stack.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q python3-venv", timeout=600).ok
    held = stack.sh(HOLD_APT_LOCKS)
    assert "/var/lib/apt/lists/lock" in held.stdout and "/var/lib/dpkg/lock-frontend" in held.stdout, held
    proc = subprocess.Popen(
        [sys.executable, "-m", "postgressor", "deploy"], cwd=stack.project, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    # stderr is not a TTY, so the deploy prints "started NAME", then "STATUS NAME" when that operation ends.
    reader = threading.Thread(target=pump, args=(proc.stderr,), daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 600  # a real timeout: no wait on the queue outlives it
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            pytest.fail("deploy never reached the SSH step within 600 s:\n" + "".join(seen[-20:]), pytrace=False)
        assert line is not None, "deploy ended before the SSH step:\n" + "".join(seen)
        seen.append(line)
        if line.split(None, 1)[:1] == ["started"] and "SSH: keys only" in line:
            proc.send_signal(signal.SIGKILL)  # at once: the operation is on its way over SSH
            break
    proc.wait(timeout=60)
    reader.join(timeout=60)
    while (rest := lines.get_nowait()) is not None:  # what the deploy wrote before it died
        seen.append(rest)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    # Proof it was cut mid-deploy: operations finished before, and the SSH one started and never finished.
    statuses = {"changed", "unchanged", "failed", "skipped", "conditional"}  # converge.py OpReport.status
    words = [parts for line in seen if len(parts := line.split(None, 1)) == 2]

    def name(rest: str) -> str:  # "NAME (12 s)" or "NAME (3 s): error" -> NAME
        return re.sub(r" \(\d+ s\)(:.*)?$", "", rest.strip())

    started = [name(rest) for word, rest in words if word == "started"]
    finished = [name(rest) for word, rest in words if word in statuses]
    unfinished = [name for name in started if name not in finished]
    assert finished, "the kill came before any operation finished:\n" + "".join(seen)
    assert any("SSH: keys only" in name for name in unfinished), "".join(seen)
    assert stack.sh("dpkg-query -W -f '${Status}' python3-venv").stdout == "install ok installed"

    first = stack.cli_json("deploy")
    assert first["deploy"]["failed"] == 0 and first["deploy"]["changed"] > 0
    second = stack.cli_json("deploy")["deploy"]
    assert [op["name"] for op in second["operations"] if op["status"] == "changed"] == [], second
    # Converged: the running sshd refuses passwords again, 443 is open, PostgreSQL has its settings.
    test_password_ssh_login_is_refused(stack)
    assert "443/tcp" in stack.sh("ufw status").stdout
    assert stack.sh("runuser -u postgres -- psql -XAtc 'SHOW wal_level'").stdout.strip() == "logical"
    assert stack.sh("runuser -u postgres -- psql -XAtc 'SHOW max_slot_wal_keep_size'").stdout.strip() != "-1"


def test_a_drop_in_that_wins_over_the_hardening_fails_the_deploy(stack: Stack) -> None:
    # sshd keeps the first value it reads: a file sorted before the deploy's own turns passwords back on while
    # `sshd -t` still passes. The deploy checks `sshd -T` and stops with one line naming the files.
    sneaky = "/etc/ssh/sshd_config.d/00-aaa-image.conf"
    assert stack.sh(f"echo 'PasswordAuthentication yes' > {sneaky} && systemctl reload ssh").ok
    wait_for_ssh("127.0.0.1", stack.host.port, timeout=120)  # sshd re-executes itself on reload
    try:
        proc = stack.cli("deploy", check=False)
        assert proc.returncode == 1, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr
        assert "sshd passwordauthentication is yes" in errors[0] and sneaky in errors[0], errors[0]
        assert "Traceback" not in proc.stderr
    finally:
        assert stack.sh(f"rm -f {sneaky} && systemctl reload ssh").ok
    wait_for_ssh("127.0.0.1", stack.host.port, timeout=120)  # sshd re-executes itself on reload
    test_password_ssh_login_is_refused(stack)


def test_changed_host_key_is_a_hard_error(stack: Stack) -> None:
    state_dir = stack.project / ".postgressor"
    data = json.loads((state_dir / "default.json").read_text())
    data["stack"] = "tampered"
    kind, _ = data["host"]["host_key"].split(" ", 1)
    data["host"]["host_key"] = f"{kind} AAAAC3NzaC1lZDI1NTE5AAAAIOnQ6s3Yp9gC1q7w0mXv0t8mYb0kq1qz7hZfC0x0x0x0"
    (state_dir / "tampered.json").write_text(json.dumps(data))
    # The same running VM: status reads its power state from the stack's pid file before it goes over SSH.
    (state_dir / "tampered").mkdir()
    shutil.copy(state_dir / "default" / "qemu.pid", state_dir / "tampered" / "qemu.pid")
    try:
        proc = stack.cli("--stack", "tampered", "status", check=False, timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "does not match the pinned one" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        (state_dir / "tampered.json").unlink()
        shutil.rmtree(state_dir / "tampered")


def test_wrong_ssh_user_is_one_line(stack: Stack) -> None:
    key = stack.host.key_path
    proc = stack.cli(
        "--stack", "wronguser", "up", "--provider", "ssh", "--host", "127.0.0.1",
        "--port", str(stack.host.port), "--user", "nobody", "--key", key, check=False, timeout=300,
    )  # fmt: skip
    try:
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr  # progress lines may precede it; the error is one line
        assert "SSH login as 'nobody'" in errors[0] and "was refused" in errors[0]
        assert "Traceback" not in proc.stderr
    finally:
        stack.cli("--stack", "wronguser", "destroy", "--yes", "--skip-final-backup", check=False)


def test_destroy_refuses_without_yes_and_then_removes_the_vm(stack: Stack) -> None:
    # The box's backups live on its own disk: destroy refuses, even with --yes, unless told to skip them.
    proc = stack.cli("destroy", "--yes", check=False)
    assert proc.returncode == 2 and "--skip-final-backup" in proc.stderr and "/var/lib/pgbackrest" in proc.stderr
    proc = stack.cli("destroy", "--skip-final-backup", check=False)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    pid_file = stack.state.stack_dir / "qemu.pid"
    assert running_pid(pid_file) is not None
    stack.cli("destroy", "--yes", "--skip-final-backup")
    assert running_pid(pid_file) is None
    assert not (stack.project / ".postgressor" / "default.json").exists()
    assert not (stack.project / ".postgressor" / "default").exists()
