"""Backups on a real Debian VM with the repository on the box: pgBackRest set up by `up`, custody of the
passphrase, status, a refused restore and a broken repository.

Own module, own copy of the run's golden box (the `stack` fixture in conftest.py). Backups are on by default,
so the golden project gets them with a local-disk repository. The point-in-time restore is drilled through S3
(test_backup_s3_drill.py: the same restore command, a repository that survives the box). That a second deploy
takes no second "first" backup is checked at the end of test_sync.py.
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


def test_restore_to_a_time_before_every_backup_is_refused(stack: Stack) -> None:
    proc = stack.cli("restore", "--to-time", "2001-01-01T00:00:00Z", "--yes", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no backup finished before 2001-01-01") and proc.stderr.count("\n") == 1
    assert sql(stack, "SELECT pg_is_in_recovery()") == "f"  # nothing was touched: PostgreSQL still serves


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
