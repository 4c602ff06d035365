"""The backup drill through S3 on a real Debian VM: a box moved to an off-box repository, and a point-in-time
restore from it.

The repository is moto's server with IAM authentication behind TLS (tests/s3_standin.py) on this machine's
loopback, which the VM reaches as 10.0.2.2 (QEMU user networking's alias for the host). Every request the box's
pgBackRest sends is signed with the keys the deploy composed into pgbackrest.conf from its secret files and
checked by moto, so a wrong key or a missing substitution fails the deploy here.

The module's box starts as the golden (an on-box repository and a passphrase generated on the box) and moves to
S3 the way the README says: `backup passphrase --yes` to take custody of the passphrase, the S3 settings, the
keys and the passphrase in the environment, `deploy`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from s3_standin import BUCKET, Moto, running_moto, s3
from vmstack import Stack

HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking: the host's loopback as the guest sees it
PREFIX = "drill"
SQL = "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d app"


def sql(stack: Stack, statement: str) -> str:
    result = stack.sh(f"{SQL} -c {json.dumps(statement)}")
    assert result.ok, result.stderr
    return result.stdout.strip()


def objects(server: Moto) -> list[str]:
    listing = s3(server).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with running_moto(tmp_path_factory.mktemp("tls")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_stack(stack: Stack, moto: Moto) -> Iterator[Stack]:
    passphrase = stack.cli("backup", "passphrase", "--yes").stdout.strip()
    config = stack.project / "postgressor.toml"
    config.write_text(config.read_text() + f"""
[backup]
s3_endpoint = "{HOST_FROM_GUEST}"
s3_port = {moto.port}
s3_region = "us-east-1"
s3_bucket = "{BUCKET}"
s3_path = "/{PREFIX}"
s3_uri_style = "path"
s3_verify_tls = false   # moto's self-signed certificate
""")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("POSTGRESSOR_BACKUP__S3_KEY", moto.key)
        env.setenv("POSTGRESSOR_BACKUP__S3_KEY_SECRET", moto.key_secret)
        env.setenv("POSTGRESSOR_BACKUP__CIPHER_PASS", passphrase)
        yield stack
        # The stack fixture's own destroy runs after this context: without the keys its config would not load.
        if (stack.project / ".postgressor" / "default.json").exists():
            stack.cli("destroy", "--yes", "--skip-final-backup", check=False, timeout=300)


def test_deploy_moves_backups_to_s3_with_a_first_full_backup(s3_stack: Stack, moto: Moto) -> None:
    assert not objects(moto)
    result = s3_stack.cli_json("deploy", timeout=2400)
    assert result["ok"] and result["deploy"]["failed"] == 0, result
    conf = s3_stack.sh("cat /etc/pgbackrest/pgbackrest.conf").stdout
    assert "repo1-type=s3" in conf and f"repo1-s3-endpoint={HOST_FROM_GUEST}" in conf
    assert s3_stack.sh("stat -c '%U %a' /etc/pgbackrest/pgbackrest.conf").stdout.split() == ["postgres", "600"]
    listing = s3_stack.cli_json("backup", "list")
    assert listing["ok"] and [b["type"] for b in listing["backups"]] == ["full"], listing
    stored = objects(moto)
    assert any(key.startswith(f"{PREFIX}/backup/main/") for key in stored), stored
    assert any(key.startswith(f"{PREFIX}/archive/main/") for key in stored), stored
    report = s3_stack.cli_json("status")
    assert "error" not in report["backup"], report["backup"]


def test_point_in_time_restore_from_s3(s3_stack: Stack) -> None:
    stack = s3_stack
    sql(stack, "CREATE TABLE s3_items (id int PRIMARY KEY, batch text NOT NULL)")
    sql(stack, "INSERT INTO s3_items SELECT g, 'one' FROM generate_series(1, 5) g")
    taken = stack.cli_json("backup", "now", "--type", "incr")
    assert taken["ok"] and taken["backup"]["type"] == "incr"
    sql(stack, "INSERT INTO s3_items SELECT g, 'two' FROM generate_series(6, 8) g")
    noted = sql(stack, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    sql(stack, "INSERT INTO s3_items SELECT g, 'three' FROM generate_series(9, 12) g")
    report = stack.cli_json("restore", "--to-time", noted, "--yes")
    assert report["ok"] and report["backup_set"] == taken["backup"]["label"]
    # Electric and the gateway read PostgreSQL: stopped first, started again after it (the golden box runs sync).
    sync_units = ["electric", "postgressor-gateway"]
    assert report["stopped"] == [*sync_units, "postgresql@15-main"], report["stopped"]
    assert report["started"] == ["postgresql@15-main", *sync_units], report["started"]
    rows = sql(stack, "SELECT batch || ':' || count(*) FROM s3_items GROUP BY batch ORDER BY batch")
    assert rows.split() == ["one:5", "two:3"]
    assert sql(stack, "SELECT pg_is_in_recovery()") == "f"
    # Replication slots are not in a physical backup: Electric's is made again when it starts.
    assert "electric_slot_default" in report["slots_before"]
    assert stack.cli_json("backup", "check")["ok"]  # archiving to S3 again, on the new timeline
    # Electric comes back after PostgreSQL (its stand-in needs about a minute under TCG): status passes then.
    deadline = time.monotonic() + 300
    while (status := stack.cli("--json", "status", check=False)).returncode != 0:
        assert time.monotonic() < deadline, status.stdout[-500:]
        time.sleep(10)
