"""Backups without a server: the deploy's commands (@fake connector), config validation, info parsing, CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Inventory
from typer.testing import CliRunner

from postgressor.box.converge import run_deploys
from postgressor.box.deploys.backup import backup, conf_lines
from postgressor.box.deploys.postgres import postgresql
from postgressor.box.spec import Distro, backup_spec, box_spec
from postgressor.checks import backups as health
from postgressor.checks.backups import (
    archive_problem,
    backup_status,
    dropped_at,
    dropped_problem,
    info_problem,
    parse_info,
)
from postgressor.cli import app
from postgressor.config import load_settings, masked_dump
from postgressor.day2 import backups
from postgressor.day2.backups import (
    choose_set,
    parse_target,
    pg_time,
    restore_command,
    restore_notes,
)
from postgressor.errors import ConfigError, PostgressorError, UsageError
from postgressor.lifecycle import BoxFacts, deploys_for
from postgressor.remote.ssh import CommandResult
from postgressor.state import HostRecord, load_state, open_state

BOOKWORM = Distro("debian", 12, "bookworm")
S3 = {"s3_endpoint": "fsn1.your-objectstorage.com", "s3_region": "fsn1", "s3_bucket": "my-backups",
      "s3_key": "AKIAEXAMPLEKEY1234", "s3_key_secret": "s3cr3t-Value-That-Must-Not-Leak"}  # fmt: skip

# A real `pgbackrest --output=json info` from pgBackRest 2.45 (tests/integration/test_backup_s3.py's run).
INFO = {
    "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1", "max": "000000010000000000000004",
                 "min": "000000010000000000000001"}],
    "backup": [{
        "archive": {"start": "000000010000000000000003", "stop": "000000010000000000000003"},
        "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": False,
        "info": {"delta": 23025315, "repository": {"delta": 2835920, "size": 2835920}, "size": 23025315},
        "label": "20261125-040122F", "lsn": {"start": "0/3000028", "stop": "0/3000138"}, "prior": None,
        "reference": None, "timestamp": {"start": 1795579282, "stop": 1795579305}, "type": "full",
    }],
    "cipher": "aes-256-cbc",
    "db": [{"id": 1, "repo-key": 1, "system-id": 7711954270052820274, "version": "15"}],
    "name": "main",
    "repo": [{"cipher": "aes-256-cbc", "key": 1, "status": {"code": 0, "message": "ok"}}],
    "status": {"code": 0, "lock": {"backup": {"held": False}}, "message": "ok"},
}  # fmt: skip


def with_diff() -> dict[str, Any]:
    info = json.loads(json.dumps(INFO))
    diff = json.loads(json.dumps(INFO["backup"][0]))
    diff.update(label="20261126-013000F_20261126-013000D", type="diff", prior="20261125-040122F",
                timestamp={"start": 1795650000, "stop": 1795650060})  # fmt: skip
    info["backup"] = [diff, info["backup"][0]]  # out of order on purpose
    return info


# ---- the deploy through the @fake connector --------------------------------------------------------------


def run_fake(responses: dict[Any, Any], **settings: Any) -> tuple[list[str], Any, list[tuple[str, str]]]:
    settings.setdefault("provider", "local")
    cfg = load_settings(**settings)
    spec = box_spec(cfg, BOOKWORM)
    plan = deploys_for(spec, BoxFacts(BOOKWORM, "3.11", "x86_64"), HostRecord("h", 22, "root", "k"))
    plan = plan[1:]  # skip the base deploy: its own tests cover it
    data = {"fake_responses": responses, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/box", data)], {}))
    box = next(iter(inventory))
    uploads: list[tuple[str, str]] = []
    real_connect = box.connect

    def connect(*args: Any, **kwargs: Any) -> Any:  # record uploads once the connector exists
        result = real_connect(*args, **kwargs)
        put = box.connector.put_file

        def recording_put(src: Any, dest: str, *a: Any, **kw: Any) -> bool:
            uploads.append((dest, src.read() if hasattr(src, "read") else str(src)))
            if hasattr(src, "seek"):
                src.seek(0)
            return put(src, dest, *a, **kw)

        box.connector.put_file = recording_put
        return result

    box.connect = connect
    result = run_deploys(inventory, plan, lambda n, r: None)
    return [str(c) for c in box.connector.executed_commands], result, uploads


FRESH = {"/proc/meminfo": "2015496 2 16431572"}


def stat_line(path: str) -> str:
    return f"user=root group=root mode=-rw------- atime=1 mtime=1 ctime=1 size=41 '{path}'"


def converged(**settings: Any) -> dict[Any, Any]:
    settings.setdefault("provider", "local")
    cfg = load_settings(**settings)
    repo_id = backup_spec(cfg, box_spec(cfg, BOOKWORM).pg_version).repo_id
    return {  # first match wins: the composed-file check also names the cipher file
        re.compile(r"sha256sum /etc/pgbackrest/pgbackrest\.conf"): "same",
        "/proc/meminfo": "8388608 4 83886080",
        "secrets/pgbackrest_cipher": stat_line("/etc/postgressor/secrets/pgbackrest_cipher"),
        "applied/pgbackrest-stanza": repo_id,
        "applied/pgbackrest-first-backup": repo_id,
        "secrets/app.password": stat_line("/etc/postgressor/secrets/app.password"),
        "secrets/electric.password": stat_line("/etc/postgressor/secrets/electric.password"),
    }


def test_backup_follows_postgresql_and_can_be_disabled() -> None:
    facts, host = BoxFacts(BOOKWORM, "3.11", "x86_64"), HostRecord("h", 22, "root", "k")
    cfg = load_settings(provider="local")
    spec = box_spec(cfg, BOOKWORM)
    names = [func for func, _ in deploys_for(spec, facts, host)]
    assert names.index(backup) == names.index(postgresql) + 1
    off = load_settings(provider="local", backup={"enabled": False})
    assert box_spec(off, BOOKWORM).backup is None
    assert backup not in [func for func, _ in deploys_for(box_spec(off, BOOKWORM), facts, host)]


def test_fresh_box_gets_pgbackrest_in_its_own_apt_run_and_an_encrypted_repository() -> None:
    commands, result, _ = run_fake(FRESH)
    assert not result.failed
    installs = [c for c in commands if "apt-get" in c and " install " in c]
    assert len([c for c in installs if "pgbackrest" in c]) == 1
    assert not any("pgbackrest" in c and "postgresql-15" in c for c in installs)
    secret = next(c for c in commands if "secrets/pgbackrest_cipher.new" in c)
    assert "/dev/urandom" in secret and "umask 077" in secret
    conf = next(c for c in commands if "pgbackrest.conf.new" in c)
    assert "repo1-cipher-type=aes-256-cbc" in conf and "chown postgres:postgres" in conf and "chmod 600" in conf
    assert "repo1-cipher-pass=\"$(cat /etc/postgressor/secrets/pgbackrest_cipher)\"" in conf
    assert "repo1-path=/var/lib/pgbackrest" in conf and "pg1-path=/var/lib/postgresql/15/main" in conf


def test_fresh_box_order_stanza_then_archiving_then_first_backup_then_timers() -> None:
    commands, _, _ = run_fake(FRESH)

    def first(pattern: str) -> int:
        return next(i for i, c in enumerate(commands) if re.search(pattern, c))

    stanza = first(r"pgbackrest --stanza=main stanza-create")
    apply = first(r"systemctl reload postgresql@15-main")
    full = first(r"pgbackrest --stanza=main check && .*--type=full backup")
    units = first(r"systemctl daemon-reload && systemctl try-restart pgbackrest-full.timer")
    assert stanza < full and apply < full < units
    assert any("enable" in c and "pgbackrest-diff.timer" in c for c in commands)


def test_archive_dropin_settings() -> None:
    cfg = load_settings(provider="local", backup={"archive_timeout": 60})
    from postgressor.box.deploys.backup import archive_settings

    settings = archive_settings(backup_spec(cfg, 15))
    assert settings == {"archive_mode": "on", "archive_command": "pgbackrest --stanza=main archive-push %p",
                        "archive_timeout": "60s"}  # fmt: skip


def test_converged_box_runs_no_backup_command() -> None:
    commands, result, _ = run_fake(converged())
    ours = {"Backup encryption passphrase", "pgbackrest.conf (0600, postgres)", "Stanza main", "First full backup",
            "Backup units loaded"}  # fmt: skip
    changed = {op.name.removeprefix("Backups | ") for op in result.operations if op.status == "changed"}
    assert not ours & changed, changed
    assert ours <= {op.name.removeprefix("Backups | ") for op in result.operations}
    joined = "\n".join(commands)
    for needle in ("stanza-create", "--type=full backup", "pgbackrest_cipher.new", "pgbackrest.conf.new"):
        assert needle not in joined


def test_a_fresh_box_applies_tuning_and_archiving_with_one_restart() -> None:
    commands, result, uploads = run_fake(FRESH)
    names = [op.name for op in result.operations]
    archiving = names.index("PostgreSQL | WAL archiving (postgresql.conf drop-in)")
    assert archiving < names.index("PostgreSQL | Apply config (reload, restart only if needed)")
    assert not [n for n in names if n.startswith("Backups |") and "WAL archiving" in n]
    applies = [c for c in commands if "systemctl reload postgresql@15-main" in c]
    assert len(applies) == 1, applies  # one reload, restarting only if a setting needs it: once
    assert any(dest.endswith("conf.d/60-postgressor-backup.conf") for dest, _ in uploads)


def test_a_changed_repository_gets_its_own_stanza_and_first_backup() -> None:
    responses = converged()  # markers of the local repository...
    commands, _, _ = run_fake(responses, backup=S3)  # ...while the config now points at S3
    joined = "\n".join(commands)
    assert "stanza-create" in joined and "--type=full backup" in joined


def test_archiving_config_written_but_never_loaded_is_applied() -> None:
    responses = {re.compile(r"stat -c %Y .*60-postgressor-backup\.conf"): "2000000000",
                 "pg_conf_load_time()))": "1000000000", **converged()}  # fmt: skip
    commands, _, _ = run_fake(responses)
    assert any("systemctl reload postgresql@15-main" in c for c in commands)


def test_s3_keys_are_uploaded_0600_and_never_in_a_command() -> None:
    commands, result, uploads = run_fake(FRESH, backup=S3)
    assert not result.failed
    joined = "\n".join(commands)
    assert S3["s3_key"] not in joined and S3["s3_key_secret"] not in joined
    assert dict(uploads)["/etc/postgressor/secrets/pgbackrest_s3_key"] == S3["s3_key"]
    assert dict(uploads)["/etc/postgressor/secrets/pgbackrest_s3_key_secret"] == S3["s3_key_secret"]
    assert any("chmod 600 /etc/postgressor/secrets/pgbackrest_s3_key" in c for c in commands)
    conf = next(c for c in commands if "pgbackrest.conf.new" in c)
    assert "repo1-type=s3" in conf and "repo1-s3-endpoint=fsn1.your-objectstorage.com" in conf
    assert "repo1-s3-key-secret=\"$(cat /etc/postgressor/secrets/pgbackrest_s3_key_secret)\"" in conf
    assert "repo1-storage-verify-tls" not in conf and "repo1-storage-port" not in conf  # defaults


def test_local_repository_removes_stale_s3_keys() -> None:
    responses = {"secrets/pgbackrest_s3_key": stat_line("/etc/postgressor/secrets/pgbackrest_s3_key"), **converged()}
    commands, _, _ = run_fake(responses)
    assert any("rm -f /etc/postgressor/secrets/pgbackrest_s3_key" in c for c in commands)


# ---- configuration ---------------------------------------------------------------------------------------


def test_partial_s3_config_is_one_line_naming_what_is_missing() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(backup={"s3_endpoint": "fsn1.your-objectstorage.com", "s3_bucket": "b"})
    message = str(err.value)
    assert "\n" not in message
    assert "backup: S3 repository needs s3_region, s3_key, s3_key_secret too" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("full_schedule", "Sun 01:30\nExecStart=/bin/sh", "systemd OnCalendar"),
        ("retention_full", 0, "greater than or equal to 1"),
        ("s3_path", "relative/path", "absolute path"),
        ("s3_uri_style", "virtual", "'host' or 'path'"),
    ],
)
def test_bad_backup_values_are_refused(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_settings(backup={field: value})


def test_s3_bucket_with_shell_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match="s3_bucket may hold only"):
        load_settings(backup={**S3, "s3_bucket": 'b"; rm -rf /'})


def test_s3_keys_from_the_environment_are_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSTGRESSOR_BACKUP__S3_KEY", S3["s3_key"])
    monkeypatch.setenv("POSTGRESSOR_BACKUP__S3_KEY_SECRET", S3["s3_key_secret"])
    settings = load_settings(backup={k: v for k, v in S3.items() if "key" not in k})
    assert settings.backup.s3
    dumped = json.dumps(masked_dump(settings))
    assert S3["s3_key"] not in dumped and S3["s3_key_secret"] not in dumped
    spec = backup_spec(settings, box_spec(settings, BOOKWORM).pg_version)
    assert S3["s3_key_secret"] not in repr(spec) and S3["s3_key_secret"] not in "\n".join(conf_lines(spec))


def test_template_config_parses_with_the_backup_block(tmp_path: Path) -> None:
    from importlib import resources

    text = (resources.files("postgressor.cli") / "postgressor.toml").read_text()
    assert "[backup]" in text
    path = tmp_path / "postgressor.toml"
    path.write_text(text)
    assert load_settings(path).backup.enabled


# ---- info, status and restore decisions ------------------------------------------------------------------


def test_parse_info_of_a_real_answer() -> None:
    info = parse_info(json.dumps([INFO]) + "\n")
    assert info["status"] == {"code": 0, "message": "ok"} and info["cipher"] == "aes-256-cbc"
    assert info["archive"] == {"min": "000000010000000000000001", "max": "000000010000000000000004"}
    (only,) = info["backups"]
    assert only["label"] == "20261125-040122F" and only["type"] == "full"
    assert only["stop"] == "2026-11-25T04:01:45+00:00" and only["repo_size"] == 2835920
    assert info_problem(info) == ""


def test_backups_are_sorted_oldest_first() -> None:
    info = parse_info(json.dumps([with_diff()]))
    assert [b["type"] for b in info["backups"]] == ["full", "diff"]


def test_missing_stanza_and_empty_repository_are_problems() -> None:
    missing = dict(INFO, backup=[], archive=[], status={"code": 1, "message": "missing stanza path"},
                   repo=[{"key": 1, "status": {"code": 1, "message": "missing stanza path"}}])  # fmt: skip
    assert (
        info_problem(parse_info(json.dumps([missing])))
        == "backup repository: missing stanza path (pgBackRest status 1)"
    )
    empty = dict(INFO, backup=[], status={"code": 2, "message": "no valid backups"}, repo=[])
    assert "no valid backups" in info_problem(parse_info(json.dumps([empty])))
    assert info_problem(parse_info("[]"))  # no stanza at all


def test_undecryptable_message_is_reduced_to_one_printable_line() -> None:
    message = "[FormatError] unable to load info file\n\x07\x1b"
    broken = dict(INFO, backup=[], status={"code": 99, "message": "other"},
                  repo=[{"key": 1, "status": {"code": 99, "message": message}}])  # fmt: skip
    text = json.dumps([broken]).replace("\\u0007", "\x07")  # raw control characters, as pgBackRest prints them
    info = parse_info(text)
    assert info["status"]["message"] == "[FormatError] unable to load info file"


def test_unreadable_info_names_the_pgbackrest_error() -> None:
    with pytest.raises(PostgressorError, match=r"unreadable: unable to load info file '/var/lib/pgbackrest/x'$"):
        parse_info("WARN: something\nERROR: [055]: unable to load info file '/var/lib/pgbackrest/x':\n  more\n")


def test_archive_problems() -> None:
    ok = {"archive_mode": "on", "last_archived_time": "2026-01-01T10:00:00+00:00", "failed_count": 3,
          "last_failed_time": "2026-01-01T09:00:00+00:00", "last_failed_wal": "0001"}  # fmt: skip
    assert archive_problem(ok) == ""  # failed earlier, archiving since
    failing = dict(ok, last_failed_time="2026-01-01T10:00:05+00:00")
    assert archive_problem(failing).startswith("WAL archiving is failing (3 failures")
    assert "failing" in archive_problem(dict(failing, last_archived_time=None))
    assert "archive_mode" in archive_problem(dict(ok, archive_mode="off"))
    assert archive_problem(None)


def fake_box(monkeypatch: pytest.MonkeyPatch, stdout: str, exit_status: int = 0) -> list[str]:
    seen: list[str] = []

    def fake_run(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
        seen.append(command)
        return CommandResult(exit_status, stdout, "")

    monkeypatch.setattr(health, "run", fake_run)
    return seen


ARCHIVER_OK = {"archive_mode": "on", "archived_count": 5, "last_archived_wal": "000000010000000000000004",
               "last_archived_time": "2026-11-25T04:02:00+00:00", "failed_count": 0, "last_failed_wal": None,
               "last_failed_time": None, "seconds_since_archived": 12, "ready_segments": 0}  # fmt: skip


def test_status_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    out = (f"@@info\n{json.dumps([INFO])}\n@@info_rc=0\n@@archiver\n{json.dumps(ARCHIVER_OK)}\n"
           "@@units\nfull=inactive\ndiff=inactive\n")  # fmt: skip
    seen = fake_box(monkeypatch, out)
    report = backup_status(HostRecord("h", 22, "root", "k"))
    assert "error" not in report
    assert report["last_backup"]["label"] == "20261125-040122F" and report["archiver"]["ready_segments"] == 0
    assert "--output=json info 2>&1; rc=$?; echo; " in seen[0] and "pg_stat_archiver" in seen[0]


@pytest.mark.parametrize(
    ("info_text", "archiver", "units", "expected"),
    [
        ("ERROR: [055]: unable to load info file '/var/lib/pgbackrest/backup/main/backup.info' or ...:",
         ARCHIVER_OK, "inactive", "backup repository unreadable: unable to load info file"),
        (json.dumps([INFO]), {**ARCHIVER_OK, "failed_count": 1, "last_failed_time": "2026-11-25T04:03:00+00:00"},
         "inactive", "WAL archiving is failing"),
        (json.dumps([INFO]), ARCHIVER_OK, "failed", "scheduled backup pgbackrest-backup@full"),
    ],
)  # fmt: skip
def test_status_failures(monkeypatch: pytest.MonkeyPatch, info_text: str, archiver: dict[str, Any], units: str,
                         expected: str) -> None:  # fmt: skip
    out = (
        f"@@info\n{info_text}\n@@info_rc=0\n@@archiver\n{json.dumps(archiver)}\n@@units\nfull={units}\ndiff=inactive\n"
    )
    fake_box(monkeypatch, out)
    report = backup_status(HostRecord("h", 22, "root", "k"))
    assert report["error"].startswith(expected), report["error"]


def test_check_reports_backups_archiving_and_wal_range(monkeypatch: pytest.MonkeyPatch) -> None:
    out = (f"@@info\n{json.dumps([INFO])}\n@@info_rc=0\n@@archiver\n{json.dumps(ARCHIVER_OK)}\n"
           "@@units\nfull=inactive\ndiff=inactive\n")  # fmt: skip
    seen = fake_box(monkeypatch, out)
    result = backups.check(HostRecord("h", 22, "root", "k"))
    assert result["ok"] is True and result["backups"] == 1
    assert result["last_backup"]["label"] == "20261125-040122F"
    assert result["archiver"] == ARCHIVER_OK
    assert result["archive"] == {"min": "000000010000000000000001", "max": "000000010000000000000004"}
    assert seen[0].endswith("pgbackrest --stanza=main check ) 2>&1") and "pg_logical_emit_message" in seen[0]
    assert len(seen) == 2  # check, then one status read (pgBackRest info is read once)
    assert result["notes"] == []


def test_check_passes_after_wal_was_dropped_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Archiving works again; the WAL dropped during the outage (after the last backup) is a gap status reports.
    dropped = "2026-11-26 10:00:00.123 P00   WARN: dropped WAL file '...' because archive queue exceeded 256MB"
    out = (f"@@info\n{json.dumps([INFO])}\n@@info_rc=0\n@@archiver\n{json.dumps(ARCHIVER_OK)}\n"
           f"@@dropped\n{dropped}\n@@units\nfull=inactive\ndiff=inactive\n")  # fmt: skip
    fake_box(monkeypatch, out)
    result = backups.check(HostRecord("h", 22, "root", "k"))
    assert result["ok"] and result["notes"][0].startswith("WAL was dropped from the archive queue at 2026-11-26")
    assert backup_status(HostRecord("h", 22, "root", "k"))["error"] == result["notes"][0]  # status still fails


def test_check_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_box(monkeypatch, "P00  ERROR: [082]: WAL segment 000000010000000000000005 was not archived before the "
                          "60000ms timeout\n       HINT: check the archive_command\n", exit_status=82)  # fmt: skip
    with pytest.raises(PostgressorError) as err:
        backups.check(HostRecord("h", 22, "root", "k"))
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("backup check failed: WAL segment 000000010000000000000005 was not archived")


def test_target_times() -> None:
    assert pg_time(parse_target("2026-05-01T12:30:00Z")) == "2026-05-01 12:30:00.000000+00"
    assert pg_time(parse_target("2026-05-01 14:30:00+02:00")) == "2026-05-01 12:30:00.000000+00"
    assert pg_time(parse_target("2026-05-01 12:30:00")) == "2026-05-01 12:30:00.000000+00"  # no zone: UTC
    with pytest.raises(UsageError, match="is not a time; use ISO 8601"):
        parse_target("yesterday")


def test_backup_set_for_a_target() -> None:
    info = parse_info(json.dumps([with_diff()]))
    full, diff = info["backups"]
    assert choose_set(info["backups"], None) is diff
    assert choose_set(info["backups"], parse_target("2026-11-25T12:00:00Z")) is full
    assert choose_set(info["backups"], parse_target("2026-11-27T00:00:00Z")) is diff
    with pytest.raises(UsageError, match=r"no backup finished before 2026-11-25 04:00:00.000000\+00; the earliest"):
        choose_set(info["backups"], parse_target("2026-11-25T04:00:00Z"))


def test_restore_command() -> None:
    latest = restore_command(None, "20261125-040122F")
    assert "--delta --set=20261125-040122F" in latest and "--type" not in latest and latest.endswith("restore 2>&1")
    pitr = restore_command(parse_target("2026-11-25T12:00:00Z"), "20261125-040122F")
    assert "--type=time --target='2026-11-25 12:00:00.000000+00' --target-action=promote" in pitr


def test_restore_notes_name_lost_slots_and_electric() -> None:
    notes = restore_notes({"slots_before": ["electric_slot_default", "x"], "slots_after": ["x"]}, electric=True)
    assert "electric_slot_default no longer exist" in notes[0]
    assert any("409 must-refetch" in n for n in notes)


# ---- CLI refusals (before any connection) ----------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    (tmp_path / "postgressor.toml").write_text('provider = "local"\n')
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["restore"], "pass exactly one of --to-time TIME or --latest"),
        (["restore", "--latest", "--to-time", "2026-01-01"], "pass exactly one of"),
        (["restore", "--to-time", "soon", "--yes"], "is not a time"),
        (["restore", "--latest"], "error: confirmation needed: Restore stack 'default' to the latest archived state, "
         "losing everything written after it? (no terminal to ask on; pass --yes to confirm)"),
        (["backup", "passphrase"], "error: confirmation needed: Print the backup encryption passphrase on this "
         "terminal? (no terminal to ask on; pass --yes to confirm)"),
    ],
)
def test_restore_refusals_exit_2_with_one_line(project: Path, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_backup_commands_refuse_when_disabled(project: Path) -> None:
    (project / "postgressor.toml").write_text('provider = "local"\n\n[backup]\nenabled = false\n')
    result = CliRunner().invoke(app, ["backup", "list"])
    assert result.exit_code == 2 and "backups are disabled" in result.output


def test_backup_now_rejects_an_unknown_type(project: Path) -> None:
    result = CliRunner().invoke(app, ["backup", "now", "--type", "weekly"])
    assert result.exit_code == 2 and "weekly" in result.output


DROP = ("2026-11-25 05:10:57.547 P00   WARN: dropped WAL file '000000010000000000000009' because archive queue "
        "exceeded 1024MB")


def test_wal_dropped_after_the_last_backup_fails_status_saying_when(monkeypatch: pytest.MonkeyPatch) -> None:
    out = (f"@@info\n{json.dumps([INFO])}\n@@info_rc=0\n@@archiver\n{json.dumps(ARCHIVER_OK)}\n"
           f"@@dropped\n{DROP}\n@@units\nfull=inactive\ndiff=inactive\n")  # fmt: skip
    seen = fake_box(monkeypatch, out)
    report = backup_status(HostRecord("h", 22, "root", "k"))
    assert report["wal_dropped_at"] == "2026-11-25T05:10:57+00:00"
    assert report["error"].startswith("WAL was dropped from the archive queue at 2026-11-25T05:10:57+00:00")
    assert "backup now --type full" in report["error"]
    assert "/var/log/pgbackrest/main-archive-push-async.log" in seen[0]


def test_a_backup_after_the_drop_restarts_the_chain() -> None:
    assert dropped_problem("2026-11-25T05:10:57+00:00", {"stop": "2026-11-25T06:00:00+00:00"}) == ""
    assert dropped_problem("2026-11-25T05:10:57+00:00", {"stop": "2026-11-25T04:00:00+00:00"})
    assert dropped_problem(None, None) == "" and dropped_at("") is None


# ---- restore's sequence on a box running sync (fake SSH) -------------------------------------------------


def restore_box(monkeypatch: pytest.MonkeyPatch, healthy: bool, ended: str = "0/4000098") -> list[str]:
    """A box with PostgreSQL, Electric and the gateway active: ``run_backup_command`` answers by command, and
    every command is recorded in order. Recovery ends at ``ended`` on timeline 1 (INFO's newest archived segment
    is 000000010000000000000004)."""
    ran: list[str] = []

    def run(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
        ran.append(command)
        if "pg_ls_waldir()" in command:
            if not ended:
                return CommandResult(1, "", "psql: error: connection to server on socket failed")
            history = f"1\t{ended}\tno recovery target specified\n"
            return CommandResult(0, json.dumps({"history": history, "segment_size": 16 * 1024 * 1024,
                                                "last_commit": "2026-11-25T05:01:02.5+00:00",
                                                "read_at": "2026-11-25T05:20:00.25+00:00"}), "")  # fmt: skip
        if "echo \"now=" in command:
            units = "unit_electric=active\nunit_postgressor-gateway=active\n"
            return CommandResult(0, f"now=1900000000\npg=active\n{units}", "")
        if "--output=json info" in command:
            return CommandResult(0, json.dumps([INFO]), "")
        if "/v1/health" in command and not healthy:
            return CommandResult(1, "", "http://127.0.0.1:3000/v1/health did not answer 200 within 30 s (last: HTTP "
                                        "503; electric last logged: slot busy); see journalctl -u electric on the box")
        return CommandResult(0, '["electric_slot_default"]' if "pg_replication_slots" in command else "", "")

    monkeypatch.setattr(backups, "run_backup_command", run)
    monkeypatch.setattr(health, "run_backup_command", run)  # info() reads the repository through it
    return ran


def test_restore_waits_for_electric_after_starting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = restore_box(monkeypatch, healthy=True)
    report = backups.restore(HostRecord("h", 22, "root", "k"), 15, None, lambda m: None, health_timeout=30)
    assert report["started"] == ["postgresql@15-main", "electric", "postgressor-gateway"]
    starts = [i for i, c in enumerate(ran) if c.startswith("systemctl start ")]
    health = next(i for i, c in enumerate(ran) if "/v1/health" in c)
    assert health > max(starts) and "end=$(($(date +%s) + 30))" in ran[health]


def test_a_restore_that_stopped_before_the_newest_archived_segment_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    host = HostRecord("h", 22, "root", "k")
    state = open_state(tmp_path, "demo", "ssh")
    restore_box(monkeypatch, healthy=True, ended="0/4000098")  # inside segment 4, the newest archived: complete
    done = backups.restore(host, 15, None, lambda m: None, health_timeout=30, state=state)
    assert done["short_of_archive"] == "" and backups.UNCHECKED not in done["notes"] and state.short_restore == {}
    ran = restore_box(monkeypatch, healthy=True, ended="0/3000098")  # segment 4 archived, never replayed
    report = backups.restore(host, 15, None, lambda m: None, health_timeout=30, state=state)
    assert "segment 000000010000000000000004 could not be read" in report["short_of_archive"], report
    assert report["started"] == ["postgresql@15-main", "electric", "postgressor-gateway"]  # it still serves
    infos = [i for i, c in enumerate(ran) if "--output=json info" in c]
    check = next(i for i, c in enumerate(ran) if " check" in c and "pgbackrest" in c)
    assert len(infos) == 2 and infos[0] < check < infos[1], "the newest segment is read after check pushed one"
    recorded = load_state(tmp_path, "demo")
    assert recorded is not None and recorded.short_restore["line"] == report["short_of_archive"]
    assert recorded.short_restore["at"] == "2026-11-25T05:20:00.25+00:00"  # the box's clock, as backups are timed
    pitr_ran = restore_box(monkeypatch, healthy=True, ended="0/3000098")
    pitr = backups.restore(host, 15, parse_target("2026-11-25T05:00:00Z"), lambda m: None, health_timeout=30,
                           state=state)  # fmt: skip
    assert pitr["short_of_archive"] == ""  # PostgreSQL itself refuses to promote short of a time target
    assert not [c for c in pitr_ran if "pg_ls_waldir()" in c]
    assert state.short_restore["line"] == report["short_of_archive"]  # only a backup clears it, not a restore


def test_a_shortfall_is_not_lost_behind_electric_failing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = open_state(tmp_path, "demo", "ssh")
    restore_box(monkeypatch, healthy=False, ended="0/3000098")
    with pytest.raises(PostgressorError) as failed:
        backups.restore(HostRecord("h", 22, "root", "k"), 15, None, lambda m: None, health_timeout=30, state=state)
    assert str(failed.value).startswith("the database is restored but Electric is not healthy: ")
    assert "; also, the restore stopped short of the archive: recovery ended at 0/3000098" in str(failed.value)
    assert state.short_restore["line"].startswith("the restore stopped short of the archive")  # recorded first


def test_an_unreadable_end_is_a_note_not_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_box(monkeypatch, healthy=True, ended="")  # psql answered nothing understandable
    report = backups.restore(HostRecord("h", 22, "root", "k"), 15, None, lambda m: None, health_timeout=30)
    assert report["short_of_archive"] == "" and report["notes"][-1] == backups.UNCHECKED


def test_restore_short_of_the_archive_exits_1_after_its_report(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from postgressor.cli import backup_cmds

    restore_box(monkeypatch, healthy=True, ended="0/3000098")
    monkeypatch.setattr(backup_cmds, "_connection", lambda ctx: (HostRecord("h", 22, "root", "k"), None))
    monkeypatch.setattr(backup_cmds, "recorded_version", lambda state: 15)
    result = CliRunner().invoke(app, ["restore", "--latest", "--yes"])
    assert result.exit_code == 1, result.output
    assert "restored stack 'default' to latest from backup" in result.output
    assert "error: the restore stopped short of the archive: recovery ended at 0/3000098" in result.output
    quiet = CliRunner().invoke(app, ["--json", "restore", "--latest", "--yes"])
    assert quiet.exit_code == 1, quiet.output
    report = json.loads(quiet.stdout)  # one document: the report says ok: false, the error line goes to stderr
    assert report["ok"] is False and report["error"] == report["short_of_archive"] != ""


def test_restore_names_electric_when_it_does_not_become_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_box(monkeypatch, healthy=False)
    with pytest.raises(PostgressorError, match=r"^the database is restored but Electric is not healthy: .*HTTP 503; "
                                               r"electric last logged: slot busy"):  # fmt: skip
        backups.restore(HostRecord("h", 22, "root", "k"), 15, None, lambda m: None, health_timeout=30)


def test_backup_and_check_wait_past_the_archivers_retry_pause(tmp_path: Path) -> None:
    """Read by the real pgBackRest: `backup` and `check` wait ARCHIVE_WAIT for their WAL segment (PostgreSQL's
    archiver pauses up to 60 s after three failed pushes), archive-push keeps its own default."""
    import shutil
    import subprocess

    from postgressor.box.deploys.backup import ARCHIVE_WAIT

    if shutil.which("pgbackrest") is None:
        pytest.fail("pgbackrest is not installed (scripts/setup installs it)")
    assert ARCHIVE_WAIT > 60
    conf = tmp_path / "pgbackrest.conf"
    lines = conf_lines(backup_spec(load_settings(backup={"cipher_pass": "c" * 40}), 15), secret=lambda name: "x")
    conf.write_text("\n".join(line.replace("/var/lib/postgresql", str(tmp_path)) for line in lines) + "\n")

    def options(command: str) -> str:
        ran = subprocess.run(["pgbackrest", f"--config={conf}", "--stanza=main", "--log-level-console=info",
                              "--log-level-file=off", command], capture_output=True, text=True, timeout=60, check=False)
        return next(line for line in ran.stdout.splitlines() if f"{command} command begin" in line)

    assert f"--archive-timeout={ARCHIVE_WAIT}" in options("check")
    assert f"--archive-timeout={ARCHIVE_WAIT}" in options("backup")
    assert "--archive-timeout" not in options("archive-push")


def test_archive_push_gives_up_on_an_unreachable_repository_within_its_own_io_timeout() -> None:
    settings = load_settings(backup={**S3, "cipher_pass": "c" * 40})
    lines = conf_lines(backup_spec(settings, 15))
    section = lines.index("[global:archive-push]")  # pgBackRest's command section: archive-push only
    assert lines[section + 1] == "io-timeout=10" and "io-timeout=10" not in lines[:section]
    assert lines.index("[main]") > section + 1


# ---- backup now while a scheduled backup runs (a real shell and flock, systemctl and pgbackrest stood in) ------


def shell_box(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listed: str = "") -> Callable[[], list[str]]:
    """``run_backup_command`` runs each command in sh, with BACKUP_LOCK in ``tmp_path``, a ``systemctl`` that
    prints ``listed`` for list-units, and a ``pgbackrest`` that records it ran. Returns a reader of what ran, in
    order, as the stand-ins saw it."""
    import subprocess

    from postgressor.box.layout import BACKUP_LOCK

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.write_text("")
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {calls}\nprintf "%s" "{listed}"\n')
    (bin_dir / "pgbackrest").write_text(f'#!/bin/sh\necho "pgbackrest $*" >> {calls}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(host: HostRecord, command: str, timeout: float = 120) -> CommandResult:
        if "--output=json info" in command:
            return CommandResult(0, json.dumps([INFO]), "")
        command = command.replace("cd / && runuser -u postgres -- ", "").replace(BACKUP_LOCK, str(tmp_path / "lock"))
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env, timeout=timeout)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    monkeypatch.setattr(backups, "run_backup_command", run)
    monkeypatch.setattr(health, "run_backup_command", run)
    return lambda: calls.read_text().splitlines()


RUNNING_DIFF = "pgbackrest-backup@diff.service loaded activating start pgBackRest diff backup (postgressor)\n"


def test_backup_now_waits_for_the_lock_a_scheduled_backup_holds(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    import subprocess
    import time

    calls = shell_box(monkeypatch, tmp_path, RUNNING_DIFF)
    # The scheduled backup, as its unit runs it: flock on the same file around pgbackrest (here: 2 s of work).
    holder = subprocess.Popen(["flock", str(tmp_path / "lock"), "sleep", "2"])
    time.sleep(0.3)
    said: list[str] = []
    started = time.monotonic()
    result = backups.backup_now(HostRecord("h", 22, "root", "k"), "full", said.append)
    waited = time.monotonic() - started
    holder.wait()
    assert said == ["waiting for the scheduled backup (pgbackrest-backup@diff.service) to finish: pgBackRest runs "
                    "one at a time"]  # fmt: skip
    assert waited >= 1.5, waited  # it ran once the holder let go, not beside it
    ran = calls()
    assert ran == ["systemctl list-units --no-legend --plain --state=activating,active,deactivating "
                   "pgbackrest-backup@*", "pgbackrest --stanza=main --type=full backup"], ran
    assert result["backup"]["label"]


def test_backup_now_starts_at_once_when_nothing_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = shell_box(monkeypatch, tmp_path)
    said: list[str] = []
    backups.backup_now(HostRecord("h", 22, "root", "k"), "incr", said.append)
    assert said == [] and calls()[-1] == "pgbackrest --stanza=main --type=incr backup", calls()


def test_a_lock_that_stays_taken_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess
    import time

    shell_box(monkeypatch, tmp_path, RUNNING_DIFF)
    monkeypatch.setattr(backups, "BACKUP_TIMEOUT", 1)
    holder = subprocess.Popen(["flock", str(tmp_path / "lock"), "sleep", "5"])
    time.sleep(0.3)
    try:
        with pytest.raises(PostgressorError, match=r"^another backup still held the backup lock after 1 s; see "
                                                   r"'postgressor logs backup'$"):  # fmt: skip
            backups.backup_now(HostRecord("h", 22, "root", "k"), "diff")
    finally:
        holder.kill()
        holder.wait()


def test_the_scheduled_backup_takes_the_same_lock_as_postgres() -> None:
    """The unit as the backup deploy renders it (its template and arguments, read through the fake connector)."""
    import jinja2

    from postgressor.box.deploys.base import template
    from postgressor.box.layout import BACKUP_LOCK, pgbackrest_backup

    unit = jinja2.Template(Path(template("pgbackrest-backup.service.j2")).read_text(),
                           undefined=jinja2.StrictUndefined).render(stanza="main", lock=BACKUP_LOCK)  # fmt: skip
    assert f"ExecStart=/usr/bin/flock {BACKUP_LOCK} /usr/bin/pgbackrest --stanza=main --type=%i backup" in unit
    assert "User=postgres" in unit
    assert pgbackrest_backup("full", 60).startswith(f"cd / && runuser -u postgres -- flock -w 60 -E 75 {BACKUP_LOCK} ")
