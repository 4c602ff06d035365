"""Electric (a clearly named stand-in image), the gateway and Caddy on a real Debian VM.

Only the Electric container is replaced (Docker Hub is unreachable here): see electric_standin_image.py.
Docker, the deploy's image-archive path, the gateway in its virtualenv, Caddy, PostgreSQL and the firewall
are all real.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from electric_standin_image import IMAGE, build_archive

from vmstack import Stack, provisioned

SECRET = "postgressor-e2e-hs256-secret-0123456789abcdef"
ISSUER = "https://e2etest.supabase.co/auth/v1"
USER = str(uuid.uuid4())


def token(**overrides: object) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "authenticated", "sub": USER, "role": "authenticated",
              "iat": now - 5, "exp": now + 600, "session_id": str(uuid.uuid4())}  # fmt: skip
    claims.update(overrides)
    return jwt.encode(claims, SECRET, algorithm="HS256")


CONFIG = """provider = "local"

[local]
memory_mb = 2048
cpus = 2
forward_ports = [3000, 5432]

[supabase]
jwt_secret = "{secret}"
issuer = "{issuer}"

[[sync.tables]]
name = "items"
owner_column = "user_id"

[electric]
image = "{image}"
image_archive = "{archive}"
"""


@pytest.fixture(scope="module")
def sync_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = tmp_path_factory.mktemp("sync-project")
    archive = build_archive(project / "electric-standin.tar")
    (project / "migrations").mkdir()
    (project / "migrations" / "001_items.sql").write_text(
        "CREATE TABLE items (id bigserial PRIMARY KEY, user_id uuid NOT NULL DEFAULT auth.uid(), note text);\n"
        "GRANT SELECT, INSERT, UPDATE, DELETE ON items TO authenticated;\n"
    )
    (project / "postgressor.toml").write_text(
        CONFIG.format(secret=SECRET, issuer=ISSUER, image=IMAGE, archive=archive)
    )
    with provisioned(project) as box:
        yield box


def https(stack: Stack) -> httpx.Client:
    # `tls internal`: Caddy's own CA signs the certificate; the tests pin nothing and skip verification.
    return httpx.Client(base_url=f"https://127.0.0.1:{stack.forwarded(443)}", verify=False, timeout=30)


def test_services_run_under_systemd(sync_stack: Stack) -> None:
    assert sync_stack.up_result["deploy"]["failed"] == 0
    for unit in ("docker", "electric", "postgressor-gateway", "caddy", "postgresql@15-main"):
        assert sync_stack.sh(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert sync_stack.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
    ps = sync_stack.sh("docker ps --format '{{.Image}} {{.Ports}}'").stdout
    assert IMAGE in ps and "127.0.0.1:3000->3000/tcp" in ps, ps
    report = sync_stack.cli_json("status")
    assert report["sync"]["electric_health"] == "200"
    assert set(report["sync"]["units"].values()) == {"active"}
    assert "error" not in report


def test_secrets_stay_on_the_box(sync_stack: Stack) -> None:
    modes = sync_stack.sh("stat -c '%a %U %n' /etc/postgressor/electric.env /etc/postgressor/gateway.env "
                          "/etc/postgressor/gateway.toml /etc/postgressor/secrets/electric_secret").stdout  # fmt: skip
    for line in modes.splitlines():
        assert line.startswith("600 "), line
    state = (sync_stack.project / ".postgressor" / "default.json").read_text()
    assert SECRET not in state
    assert "electric_secret" not in state
    env_names = sync_stack.sh("cut -d= -f1 /etc/postgressor/electric.env").stdout.split()
    assert "ELECTRIC_USAGE_REPORTING" not in env_names  # removed in Electric 1.7.11 (REFERENCE section 9)


def test_migrate_through_the_ssh_tunnel_protects_the_synced_table(sync_stack: Stack) -> None:
    result = sync_stack.cli_json("migrate", "--yes")
    assert result["ok"], result
    flags = sync_stack.sh(
        "cd / && runuser -u postgres -- psql -XAt -d app -c "
        "\"SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'items'\""
    ).stdout.strip()
    assert flags == "t|t"
    again = sync_stack.cli_json("migrate", "--yes")
    assert again["ok"], again


def test_verify_jwt_proves_the_box_end_to_end(sync_stack: Stack) -> None:
    proc = sync_stack.cli("--json", "verify-jwt", "--mint", "--sub", USER, check=False)
    report = json.loads(proc.stdout)
    failed = [check for check in report["checks"] if check["status"] == "fail"]
    assert proc.returncode == 0 and not failed, failed
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    for name in ("gateway token", "gateway tampered", "gateway expired", "gateway no token",
                 "postgres jwt.claims", "postgres rls items", "postgres isolation items", "electric health"):
        assert statuses.get(name) == "pass", (name, statuses)
    assert SECRET not in proc.stdout + proc.stderr


def test_valid_token_through_caddy_gets_the_users_rows(sync_stack: Stack) -> None:
    with https(sync_stack) as client:
        response = client.get("/v1/shape/items", params={"offset": "-1"},
                              headers={"Authorization": f"Bearer {token()}"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["electric-handle"] == "standin-1"
    assert "authorization" in response.headers.get("vary", "").lower()
    seen = parse_qs(response.headers["electric-standin-query"])  # what the stand-in Electric received
    assert seen["table"] == ['"items"']
    assert seen["where"] == ['"user_id" = $1']
    assert seen["params[1]"] == [USER]
    assert seen["secret"] == ["REDACTED"]  # the gateway added the box's Electric secret


def test_missing_or_bad_token_is_401(sync_stack: Stack) -> None:
    with https(sync_stack) as client:
        missing = client.get("/v1/shape/items", params={"offset": "-1"})
        expired = client.get("/v1/shape/items", params={"offset": "-1"},
                             headers={"Authorization": f"Bearer {token(exp=int(time.time()) - 3600)}"})  # fmt: skip
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "token_missing"
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "token_expired"


def test_only_the_shape_api_and_health_are_proxied(sync_stack: Stack) -> None:
    with https(sync_stack) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/v1/health").status_code == 404  # Electric's own endpoints stay private
    redirect = httpx.get(f"http://127.0.0.1:{sync_stack.forwarded(80)}/v1/shape/items", timeout=30)
    assert redirect.status_code in (301, 308)
    assert redirect.headers["location"].startswith("https://")


def test_postgres_and_electric_ports_are_closed_from_outside(sync_stack: Stack) -> None:
    assert sync_stack.sh("curl -fsS http://127.0.0.1:3000/v1/health").stdout.strip() == '{"status":"active"}'
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{sync_stack.forwarded(3000)}/v1/health", timeout=8)
    proc = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(sync_stack.forwarded(5432)), "-U", "electric", "-d", "app",
         "-c", "select 1"],
        capture_output=True, text=True, timeout=60, env={"PGCONNECT_TIMEOUT": "5", "PGPASSWORD": "x"},
    )  # fmt: skip
    assert proc.returncode != 0


def test_second_deploy_changes_nothing(sync_stack: Stack) -> None:
    result = sync_stack.cli_json("deploy")
    changed = [op["name"] for op in result["deploy"]["operations"] if op["status"] == "changed"]
    assert changed == []


def test_unpullable_image_stops_with_one_line_and_rerun_resumes(sync_stack: Stack, tmp_path: Path) -> None:
    other = sync_stack.project / "no-archive.toml"
    text = (sync_stack.project / "postgressor.toml").read_text()
    other.write_text("\n".join(line for line in text.splitlines() if not line.startswith(("image", "image_archive"))))
    proc = sync_stack.cli("--config", str(other), "deploy", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "cannot pull electricsql/electric:1.7.12" in errors[0]
    assert "electric.image_archive" in errors[0]
    # The stand-in keeps serving; the original config converges again without changes to Electric.
    again = json.loads(sync_stack.cli("--json", "deploy").stdout)
    assert again["deploy"]["failed"] == 0
    assert sync_stack.sh("systemctl is-active electric").stdout.strip() == "active"


def test_broken_gateway_setting_is_rolled_back_while_clients_keep_getting_200(sync_stack: Stack) -> None:
    # gateway.port = 5432 passes the pre-flight check, but PostgreSQL holds that port on the box: the new
    # gateway cannot start. The probe runs it beside the live gateway, so Caddy's upstream never goes away.
    broken = sync_stack.project / "broken-gateway.toml"
    broken.write_text((sync_stack.project / "postgressor.toml").read_text() + "\n[gateway]\nport = 5432\n")
    statuses: list[int | str] = []
    stop = threading.Event()

    def poll() -> None:
        with https(sync_stack) as client:
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
        proc = sync_stack.cli("--config", str(broken), "deploy", check=False)
    finally:
        stop.set()
        poller.join(timeout=60)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "the gateway" in errors[0] and "previous configuration" in errors[0], errors[0]
    assert "address already in use" in errors[0], errors[0]  # the gateway's own last journal line
    assert len(statuses) > 10 and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert "port = 3001" in sync_stack.sh("cat /etc/postgressor/gateway.toml").stdout
    # A later good deploy works and finds nothing left to change.
    again = sync_stack.cli_json("deploy")
    assert again["deploy"]["failed"] == 0
    assert [op["name"] for op in again["deploy"]["operations"] if op["status"] == "changed"] == []
    with https(sync_stack) as client:
        assert client.get("/health").status_code == 200
