"""Backups on a real Debian VM: pgBackRest set up by `up`, point-in-time restore, a broken repository.

Own module, own copy of the run's golden box (the `stack` fixture in conftest.py). Backups are on by default,
so the golden project gets them with a local-disk repository. That a second deploy takes no second "first"
backup is checked at the end of test_sync.py.
"""

from __future__ import annotations

import json

from vmstack import Stack

SQL = "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d app"


def sql(stack: Stack, statement: str) -> str:
    result = stack.sh(f"{SQL} -c {json.dumps(statement)}")
    assert result.ok, result.stderr
    return result.stdout.strip()


def test_up_sets_up_encrypted_backups(stack: Stack) -> None:
    assert stack.up_result["deploy"]["failed"] == 0
    listing = stack.cli_json("backup", "list")
    assert listing["ok"] and listing["cipher"] == "aes-256-cbc"
    assert [b["type"] for b in listing["backups"]] == ["full"]  # the deploy's first backup
    assert stack.sh("stat -c '%U %a' /etc/pgbackrest/pgbackrest.conf").stdout.split() == ["postgres", "600"]
    assert stack.sh("stat -c '%U %a' /etc/postgressor/secrets/pgbackrest_cipher").stdout.split() == ["root", "600"]
    shown = stack.sh("runuser -u postgres -- psql -XAtc 'SHOW archive_mode' -c 'SHOW archive_command'").stdout.split(
        "\n"
    )
    assert shown[0] == "on" and shown[1] == "pgbackrest --stanza=main archive-push %p"
    timers = stack.sh("systemctl is-enabled pgbackrest-full.timer pgbackrest-diff.timer").stdout.split()
    assert timers == ["enabled", "enabled"]


def test_passphrase_is_shown_on_request_and_kept_out_of_state(stack: Stack) -> None:
    refused = stack.cli("backup", "passphrase", check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    shown = stack.cli("backup", "passphrase", "--yes").stdout.strip()
    assert len(shown) == 40 and shown == stack.sh("cat /etc/postgressor/secrets/pgbackrest_cipher").stdout.strip()
    for path in (stack.project / ".postgressor").rglob("*"):
        if path.is_file() and path.name != "disk.qcow2":  # the VM's own disk holds it, of course
            assert shown.encode() not in path.read_bytes(), path
    assert shown not in stack.cli("--json", "status").stdout


def test_status_reports_the_last_backup_and_archiving(stack: Stack) -> None:
    report = stack.cli_json("status")
    backup = report["backup"]
    assert "error" not in backup and "error" not in report
    assert backup["last_backup"]["type"] == "full"
    assert backup["archiver"]["archive_mode"] == "on" and backup["archiver"]["archived_count"] >= 1


def test_point_in_time_restore_brings_back_exactly_the_rows_before_the_noted_time(stack: Stack) -> None:
    sql(stack, "CREATE TABLE pitr_items (id int PRIMARY KEY, batch text NOT NULL)")
    sql(stack, "INSERT INTO pitr_items SELECT g, 'one' FROM generate_series(1, 5) g")
    sql(stack, "SELECT 1 FROM pg_create_logical_replication_slot('pitr_slot', 'pgoutput')")
    taken = stack.cli_json("backup", "now", "--type", "incr")
    assert taken["ok"] and taken["backup"]["type"] == "incr"
    sql(stack, "INSERT INTO pitr_items SELECT g, 'two' FROM generate_series(6, 8) g")
    noted = sql(stack, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    sql(stack, "INSERT INTO pitr_items SELECT g, 'three' FROM generate_series(9, 12) g")
    sql(stack, "DELETE FROM pitr_items WHERE batch = 'one' AND id = 1")

    report = stack.cli_json("restore", "--to-time", noted, "--yes")
    assert report["ok"] and report["backup_set"] == taken["backup"]["label"]
    # Electric and the gateway read PostgreSQL: stopped first, started again after it (the golden box runs sync).
    sync_units = ["electric", "postgressor-gateway"]
    assert report["stopped"] == [*sync_units, "postgresql@15-main"], report["stopped"]
    assert report["started"] == ["postgresql@15-main", *sync_units], report["started"]
    rows = sql(stack, "SELECT batch || ':' || count(*) FROM pitr_items GROUP BY batch ORDER BY batch")
    assert rows.split() == ["one:5", "two:3"]
    assert sql(stack, "SELECT pg_is_in_recovery()") == "f"
    # Replication slots are not in a physical backup: Electric's would have to be created again.
    assert "pitr_slot" in report["slots_before"] and "pitr_slot" not in report["slots_after"]
    assert any("pitr_slot no longer exist" in note for note in report["notes"])
    # The restored database archives again, on a new timeline.
    checked = stack.cli_json("backup", "check")
    assert checked["ok"]
    assert stack.cli("status").returncode == 0


def test_restore_to_a_time_before_every_backup_is_refused(stack: Stack) -> None:
    proc = stack.cli("restore", "--to-time", "2001-01-01T00:00:00Z", "--yes", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no backup finished before 2001-01-01") and proc.stderr.count("\n") == 1
    assert sql(stack, "SELECT count(*) FROM pitr_items") == "8"  # nothing was touched


def test_broken_repository_fails_check_and_status_loudly(stack: Stack) -> None:
    moved = stack.sh("mv /var/lib/pgbackrest /var/lib/pgbackrest.moved")
    assert moved.ok, moved.stderr
    try:
        check = stack.cli("backup", "check", check=False, timeout=600)
        assert check.returncode == 1
        assert check.stderr.startswith("error: backup check failed: ") and check.stderr.count("\n") == 1
        assert "Traceback" not in check.stderr
        status = stack.cli("--json", "status", check=False)
        assert status.returncode == 1
        report = json.loads(status.stdout)
        assert report["backup"]["error"] and report["error"] == report["backup"]["error"]
    finally:
        stack.sh("rm -rf /var/lib/pgbackrest && mv /var/lib/pgbackrest.moved /var/lib/pgbackrest")
    assert stack.cli_json("backup", "check")["ok"]
