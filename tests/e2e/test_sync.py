"""Electric (a clearly named stand-in image), the gateway and Caddy on a real Debian VM.

The module's box is a copy of the run's golden stack (conftest.py), whose configuration enables sync for
`items`. Only the Electric container is replaced (Docker Hub is unreachable here): see electric_standin_image.py.
Docker, the deploy's image-archive path, the gateway in its virtualenv, Caddy, PostgreSQL and the firewall
are all real.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
from electric_standin_image import IMAGE
from golden_stack import ISSUER, SECRET

import reach
from postgressor.box.layout import LOOPBACK_GUARD_RULE, LOOPBACK_GUARD_UNIT
from vmstack import Stack

USER = str(uuid.uuid4())


def token(**overrides: object) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "authenticated", "sub": USER, "role": "authenticated",
              "iat": now - 5, "exp": now + 600, "session_id": str(uuid.uuid4())}  # fmt: skip
    claims.update(overrides)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def https(stack: Stack) -> httpx.Client:
    # `tls internal`: Caddy's own CA signs the certificate; the tests pin nothing and skip verification.
    return httpx.Client(base_url=f"https://127.0.0.1:{stack.forwarded(443)}", verify=False, timeout=30)


def test_services_run_under_systemd(stack: Stack) -> None:
    assert stack.up_result["deploy"]["failed"] == 0
    for unit in ("docker", "electric", "postgressor-gateway", "caddy", "postgresql@15-main"):
        assert stack.sh(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert stack.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
    ps = stack.sh("docker ps --format '{{.Image}} {{.Ports}}'").stdout
    assert IMAGE in ps and "127.0.0.1:3000->3000/tcp" in ps, ps
    report = stack.cli_json("status")
    assert report["sync"]["electric_health"] == "200"
    assert set(report["sync"]["units"].values()) == {"active"}
    assert "error" not in report


def test_secrets_stay_on_the_box(stack: Stack) -> None:
    modes = stack.sh("stat -c '%a %U %n' /etc/postgressor/electric.env /etc/postgressor/gateway.env "
                          "/etc/postgressor/gateway.toml /etc/postgressor/secrets/electric_secret").stdout  # fmt: skip
    for line in modes.splitlines():
        assert line.startswith("600 "), line
    state = (stack.project / ".postgressor" / "default.json").read_text()
    assert SECRET not in state
    assert "electric_secret" not in state
    env_names = stack.sh("cut -d= -f1 /etc/postgressor/electric.env").stdout.split()
    assert "ELECTRIC_USAGE_REPORTING" not in env_names  # removed in Electric 1.7.11 (REFERENCE section 9)


def test_migrate_through_the_ssh_tunnel_protects_the_synced_table(stack: Stack) -> None:
    result = stack.cli_json("migrate", "--yes")
    assert result["ok"], result
    flags = stack.sh(
        "cd / && runuser -u postgres -- psql -XAt -d app -c "
        "\"SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'items'\""
    ).stdout.strip()
    assert flags == "t|t"
    again = stack.cli_json("migrate", "--yes")
    assert again["ok"], again


def test_verify_jwt_proves_the_box_end_to_end(stack: Stack) -> None:
    proc = stack.cli("--json", "verify-jwt", "--mint", "--sub", USER, check=False)
    report = json.loads(proc.stdout)
    failed = [check for check in report["checks"] if check["status"] == "fail"]
    assert proc.returncode == 0 and not failed, failed
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    for name in (
        "gateway token",
        "gateway tampered",
        "gateway expired",
        "gateway no token",
        "postgres jwt.claims",
        "postgres rls items",
        "postgres isolation items",
        "electric health",
    ):
        assert statuses.get(name) == "pass", (name, statuses)
    assert SECRET not in proc.stdout + proc.stderr


def add_items(stack: Stack, *rows: tuple[str, str]) -> None:
    """Insert (user_id, note) rows into the migrated `items` as postgres (RLS does not apply to it)."""
    values = ", ".join(f"('{user}', '{note}')" for user, note in rows)
    stack.sh(f"cd / && runuser -u postgres -- psql -XAt -v ON_ERROR_STOP=1 -d app "
             f"-c \"INSERT INTO items (user_id, note) VALUES {values}\"")  # fmt: skip


def test_valid_token_through_caddy_gets_the_users_rows(stack: Stack) -> None:
    # `items` exists: test_migrate_through_the_ssh_tunnel_protects_the_synced_table ran `migrate` above.
    other = str(uuid.uuid4())
    add_items(stack, (USER, "mine-1"), (other, "theirs-1"), (USER, "mine-2"), (other, "theirs-2"))
    auth = {"Authorization": f"Bearer {token()}"}
    with https(stack) as client:
        response = client.get("/v1/shape/items", params={"offset": "-1"}, headers=auth)
        assert response.status_code == 200, response.text
        rows = [m for m in response.json() if "key" in m]  # the stand-in ran the pinned shape in PostgreSQL
        assert {r["value"]["user_id"] for r in rows} == {USER}
        assert {"mine-1", "mine-2"} <= {r["value"]["note"] for r in rows}
        assert not {"theirs-1", "theirs-2"} & {r["value"]["note"] for r in rows}
        handle, offset = response.headers["electric-handle"], response.headers["electric-offset"]
        assert re.fullmatch(r"\d+-\d+", handle) and offset == "0_inf"
        add_items(stack, (USER, "mine-later"), (other, "theirs-later"))
        follow = client.get("/v1/shape/items", params={"offset": offset, "handle": handle}, headers=auth)
    assert follow.status_code == 200, follow.text
    changes = [(m["headers"]["operation"], m["value"]["note"], m["value"]["user_id"])
               for m in follow.json() if "key" in m]  # fmt: skip
    assert changes == [("insert", "mine-later", USER)]  # read from the pgoutput slot, filtered by the shape
    assert follow.json()[-1]["headers"]["control"] == "up-to-date"
    assert "authorization" in response.headers.get("vary", "").lower()
    seen = parse_qs(response.headers["electric-standin-query"])  # what the stand-in Electric received
    assert seen["table"] == ['"items"']
    assert seen["where"] == ['"user_id" = $1']
    assert seen["params[1]"] == [USER]
    assert seen["secret"] == ["REDACTED"]  # the gateway added the box's Electric secret


def test_missing_or_bad_token_is_401(stack: Stack) -> None:
    with https(stack) as client:
        missing = client.get("/v1/shape/items", params={"offset": "-1"})
        expired = client.get("/v1/shape/items", params={"offset": "-1"},
                             headers={"Authorization": f"Bearer {token(exp=int(time.time()) - 3600)}"})  # fmt: skip
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "token_missing"
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "token_expired"


def test_only_the_shape_api_and_health_are_proxied(stack: Stack) -> None:
    with https(stack) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/v1/health").status_code == 404  # Electric's own endpoints stay private
    redirect = httpx.get(f"http://127.0.0.1:{stack.forwarded(80)}/v1/shape/items", timeout=30)
    assert redirect.status_code in (301, 308)
    assert redirect.headers["location"].startswith("https://")


def test_postgres_electric_and_gateway_ports_are_closed_from_outside(stack: Stack) -> None:
    # Inside the box each one answers its own protocol (the probes below would see it if a port were open)...
    inside = stack.sh(
        "curl -fsS http://127.0.0.1:3000/v1/health; echo; curl -fsS -o /dev/null -w '%{http_code}' "
        "http://127.0.0.1:3001/health; echo; pg_isready -q -h 127.0.0.1 -p 5432 && echo pg-ok"
    ).stdout.splitlines()
    assert len(inside) == 3 and json.loads(inside[0]) == {"status": "active"}, inside
    assert inside[1:] == ["200", "pg-ok"], inside
    # ...from outside only Caddy's 443 and SSH do (positive controls, same probes, same forwarding).
    assert reach.tls_answers(stack.forwarded(443)) and reach.ssh_answers(stack.host.port)
    assert not reach.postgres_answers(stack.forwarded(5432))
    assert not reach.http_answers(stack.forwarded(3000)), "Electric must not be reachable from outside"
    assert not reach.http_answers(stack.forwarded(3001)), "the gateway must be reached only through Caddy"
    proc = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(stack.forwarded(5432)), "-U", "electric", "-d", "app",
         "-c", "select 1"],
        capture_output=True, text=True, timeout=60, env={"PGCONNECT_TIMEOUT": "5", "PGPASSWORD": "x"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "password authentication failed" not in proc.stderr, proc.stderr  # a connection error, not a refusal


NEIGHBOUR = (  # a host on the box's network segment: a network namespace on a veth pair, in the box
    "ip netns add nbr && ip link add vb type veth peer name vn && ip link set vn netns nbr && "
    "ip addr add 192.0.2.1/24 dev vb && ip link set vb up && "
    # lo stays down in the namespace, so 127.0.0.1 is not local there and goes to the box, as an attacker's
    # packets with the box's MAC address would (route_localnet lets it send and receive them)
    "ip netns exec nbr sh -c 'sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.vn.route_localnet=1 && "
    "ip addr add 192.0.2.2/24 dev vn && ip link set vn up && ip route add 127.0.0.1/32 via 192.0.2.1 dev vn'"
)
FROM_NEIGHBOUR = "ip netns exec nbr curl -s -o /dev/null -m 5 -w '%{http_code}' http://127.0.0.1:3000/v1/health"


def test_electrics_loopback_port_is_unreachable_from_the_network_segment(stack: Stack) -> None:
    # Docker before 28.0 (Debian 12 ships 20.10) DNATs packets for a 127.0.0.1-published port whichever
    # interface they came in on; the deploy's raw-table guard drops them first.
    assert stack.sh(f"systemctl is-enabled {LOOPBACK_GUARD_UNIT}").stdout.strip() == "enabled"
    made = stack.sh(NEIGHBOUR)
    assert made.ok, made.stderr
    try:
        assert stack.sh(FROM_NEIGHBOUR).stdout == "000"
        # Positive control: without the guard the neighbour gets Electric's health (the hole the guard closes).
        assert stack.sh(f"systemctl stop {LOOPBACK_GUARD_UNIT}").ok
        assert stack.sh(FROM_NEIGHBOUR).stdout == "200"
    finally:
        stack.sh(f"systemctl start {LOOPBACK_GUARD_UNIT}; ip link del vb; ip netns del nbr")
    assert stack.sh(f"iptables -t raw -C {LOOPBACK_GUARD_RULE}").ok


def test_unpullable_image_stops_with_one_line_and_rerun_resumes(stack: Stack, tmp_path: Path) -> None:
    other = stack.project / "no-archive.toml"
    text = (stack.project / "postgressor.toml").read_text()
    # Without the [electric] table's image and archive (the [local] table's cloud image stays).
    other.write_text("\n".join(line for line in text.splitlines()
                               if not line.startswith(("image_archive", f'image = "{IMAGE}"'))))  # fmt: skip
    proc = stack.cli("--config", str(other), "deploy", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "cannot pull electricsql/electric:1.7.12" in errors[0]
    assert "electric.image_archive" in errors[0]
    # The stand-in keeps serving; the next test's last deploy shows the original config converges again.
    assert stack.sh("systemctl is-active electric").stdout.strip() == "active"


def test_broken_gateway_setting_is_rolled_back_while_clients_keep_getting_200(stack: Stack) -> None:
    # gateway.port = 5432 passes the pre-flight check, but PostgreSQL holds that port on the box: the new
    # gateway cannot start. The probe runs it beside the live gateway, so Caddy's upstream never goes away.
    broken = stack.project / "broken-gateway.toml"
    broken.write_text((stack.project / "postgressor.toml").read_text() + "\n[gateway]\nport = 5432\n")
    statuses: list[int | str] = []
    stop = threading.Event()

    def poll() -> None:
        with https(stack) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.get("/health").status_code)
                    shape = client.get("/v1/shape/items", params={"offset": "-1"},
                                       headers={"Authorization": f"Bearer {token()}"})  # fmt: skip
                    statuses.append(shape.status_code)
                except httpx.HTTPError as err:
                    statuses.append(f"{type(err).__name__}: {err}")
                time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        proc = stack.cli("--config", str(broken), "deploy", check=False)
    finally:
        stop.set()
        poller.join(timeout=60)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "the gateway" in errors[0] and "previous configuration" in errors[0], errors[0]
    assert "address already in use" in errors[0], errors[0]  # the gateway's own last journal line
    assert len(statuses) > 10 and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert "port = 3001" in stack.sh("cat /etc/postgressor/gateway.toml").stdout
    with https(stack) as client:
        assert client.get("/health").status_code == 200
    # The next good deploy (the lost-slot test's, below) changes nothing but what that test broke.


PSQL = "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1"


def test_a_lost_electric_slot_fails_status_and_deploy_rebuilds_electric(stack: Stack) -> None:
    # Electric's stand-in made its slot at start-up as Electric does, and never advances it: WAL past a tiny
    # max_slot_wal_keep_size makes PostgreSQL invalidate the slot at a checkpoint.
    slots = (f"{PSQL} -c \"SELECT slot_type || ':' || database FROM pg_replication_slots "
             "WHERE slot_name = 'electric_slot_default'\"")  # fmt: skip
    assert stack.sh(slots).stdout.split() == ["logical:app"]
    made = stack.sh(
        f"{PSQL} -c \"ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'\" -c 'SELECT pg_reload_conf()' && "
        "touch /var/lib/electric/shape-of-the-old-timeline"
    )
    assert made.ok, made.stderr
    try:
        state = ""
        for _ in range(5):
            churn = stack.sh(
                f"{PSQL} -d app -c 'CREATE TABLE IF NOT EXISTS wal_filler AS SELECT 1 AS g' "
                "-c 'INSERT INTO wal_filler SELECT g FROM generate_series(1, 100000) g' "
                "-c 'SELECT pg_switch_wal()' -c 'CHECKPOINT' && "
                f"{PSQL} -c \"SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'electric_slot_default'\"",
                timeout=600,
            )
            assert churn.ok, churn.stderr
            state = churn.stdout.strip().splitlines()[-1]
            if state == "lost":  # a checkpoint removed WAL the slot needed ("unreserved" only on the way there)
                break
        assert state == "lost", state
        status = stack.cli("--json", "status", check=False)
        assert status.returncode == 1
        error = json.loads(status.stdout)["error"]
        assert error.startswith(f"replication slot electric_slot_default is {state}"), error
        assert "postgressor deploy" in error
    finally:
        assert stack.sh(f"{PSQL} -c 'ALTER SYSTEM RESET max_slot_wal_keep_size' -c 'SELECT pg_reload_conf()' && "
                        f"{PSQL} -d app -c 'DROP TABLE IF EXISTS wal_filler'").ok  # fmt: skip
    result = stack.cli_json("deploy")
    assert result["deploy"]["failed"] == 0
    changed = {op["name"] for op in result["deploy"]["operations"] if op["status"] == "changed"}
    rebuilt = "Electric | Electric's replication slot usable (rebuilt when lost)"
    # and, if Electric was not healthy yet when it was next checked, the wait for it
    assert rebuilt in changed and changed <= {rebuilt, "Electric | Electric healthy (/v1/health = 200)"}, changed
    assert not stack.sh("test -e /var/lib/electric/shape-of-the-old-timeline").ok  # its shapes are rebuilt
    assert stack.sh(slots).stdout.split() == ["logical:app"]  # Electric made its slot again on start
    assert len(stack.cli_json("backup", "list")["backups"]) == 1  # a deploy takes no second "first" backup
    assert stack.sh("systemctl is-active electric").stdout.strip() == "active"
    assert stack.cli("status").returncode == 0
