"""The backup drill through S3 on a real Debian VM: a box moved to an off-box repository, the disaster drill
(the box killed, a new stack restored from the repository) and a destroy whose final backup outlives the server.

The repository is moto's server with IAM authentication behind TLS (tests/s3_standin.py) on this machine's
loopback, which the VM reaches as 10.0.2.2 (QEMU user networking's alias for the host). Every request the box's
pgBackRest sends is signed with the keys the deploy composed into pgbackrest.conf from its secret files and
checked by moto, so a wrong key or a missing substitution fails the deploy here.

The module's box starts as the golden (an on-box repository and a passphrase generated on the box) and moves to
S3 the way the README says: `backup passphrase --yes` to take custody of the passphrase, the S3 settings, the
keys and the passphrase in the environment, `deploy`.

Then an archiving outage (#23): S3 is refused from the box while writes go on. `status` names the outage, WAL
waiting to be archived stays under the 32 MB cap, PostgreSQL keeps every row; once S3 answers, `backup check`
passes and `status` fails on the gap until a new full backup (the drill's first step) clears it.

The disaster drill (#20) kills that box while a writer commits rows (QEMU killed, its disk deleted), then makes
a new stack on a second copy of the golden: a project of its own with the `ssh` provider, the same bucket, keys
and passphrase, another `s3_path`, and `up --restore-from`. The second copy stands in for a new cloud server made
from an image with postgressor's packages (a fresh `up` under TCG takes about 25 minutes); its own cluster is
replaced by the restore. It prints the recovery point (rows and seconds lost) and time (kill -> new stack serving).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from golden_stack import ISSUER, SECRET

from postgressor.remote.ssh import known_hosts_path
from s3_standin import BUCKET, Moto, running_moto, s3
from vmstack import Golden, Stack, restored

HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking: the host's loopback as the guest sees it
PREFIX = "drill"
NEW_PREFIX = "drill-new"  # the restored stack's own s3_path: it never writes into the old stack's history
ARCHIVE_TIMEOUT = 60  # seconds: the drill's bound on the recovery point
WAL_SEGMENT = 16 * 1024 * 1024  # bytes: PostgreSQL's default WAL segment size (initdb --wal-segsize)
USER = str(uuid.uuid4())
QUEUE_MAX_MB = 32  # the old box's cap on WAL waiting to be archived: two segments
SQL = "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d app"


def sql(stack: Stack, statement: str) -> str:
    result = stack.sh(f"{SQL} -c {shlex.quote(statement)}")
    assert result.ok, result.stderr
    return result.stdout.strip()


def objects(server: Moto, prefix: str = PREFIX) -> list[str]:
    pages = s3(server).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with running_moto(tmp_path_factory.mktemp("tls")) as server:
        yield server


def s3_settings(server: Moto, prefix: str, more: str = "") -> str:
    """The [backup] keys that send a stack's backups to ``prefix`` in the moto bucket (keys and passphrase come
    from the environment), with ``more`` lines: appended to a project whose last table is [backup]."""
    return f"""
s3_endpoint = "{HOST_FROM_GUEST}"
s3_port = {server.port}
s3_region = "us-east-1"
s3_bucket = "{BUCKET}"
s3_path = "/{prefix}"
s3_uri_style = "path"
s3_verify_tls = false   # moto's self-signed certificate
archive_timeout = {ARCHIVE_TIMEOUT}
{more}"""


@pytest.fixture(scope="module")
def s3_stack(stack: Stack, moto: Moto) -> Iterator[Stack]:
    passphrase = stack.cli("backup", "passphrase", "--yes").stdout.strip()
    config = stack.project / "postgressor.toml"
    config.write_text(config.read_text() + s3_settings(moto, PREFIX, f"archive_queue_max_mb = {QUEUE_MAX_MB}\n"))
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


# ---- an archiving outage (#23 item 3): S3 refused from the box while writes go on -------------------------


def test_an_unreachable_repository_cannot_fill_the_disk_and_status_names_it(s3_stack: Stack, moto: Moto) -> None:
    stack = s3_stack
    block = f"OUTPUT -d {HOST_FROM_GUEST} -p tcp --dport {moto.port} -j REJECT --reject-with tcp-reset"
    assert stack.sh(f"iptables -I {block}").ok
    try:
        sql(stack, "CREATE TABLE outage (id int)")
        deadline, rows = time.monotonic() + 900, 0
        while True:
            # Four full segments at once for the archiver, which cannot reach S3: pgBackRest's asynchronous
            # archive-push looks at the queue when it starts, so it finds the cap exceeded at once.
            sql(stack, "DO $$BEGIN FOR i IN 1..4 LOOP INSERT INTO outage SELECT generate_series(1, 1000); "
                       "PERFORM pg_switch_wal(); END LOOP; END$$")  # fmt: skip
            rows += 4000
            asked = time.monotonic()
            status = stack.cli("--json", "status", check=False, timeout=300)
            report = json.loads(status.stdout)
            # status answers within its bound and names the outage (pgBackRest's own connect error)
            assert status.returncode == 1 and time.monotonic() - asked < 150, (status.returncode, report)
            assert "unable to connect" in report["error"], report["error"]
            if report["backup"].get("wal_dropped_at"):
                break
            assert time.monotonic() < deadline, f"nothing was dropped from the archive queue: {report['backup']}"
            time.sleep(10)
        # The queue stayed under its cap (pgBackRest let PostgreSQL recycle what it dropped), and PostgreSQL
        # kept taking writes.
        settled = time.monotonic() + 180  # the archiver hands pgBackRest the queue one segment at a time
        while (ready := int(sql(stack, "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"))
               ) * 16 > QUEUE_MAX_MB + 16:  # fmt: skip
            assert time.monotonic() < settled, f"{ready} segments still wait to be archived"
            time.sleep(5)
        assert sql(stack, "SELECT count(*) FROM outage") == str(rows)
    finally:
        stack.sh(f"iptables -D {block}")
    assert stack.cli_json("backup", "check", timeout=600)["ok"]  # archiving resumes once S3 answers
    failing = stack.cli("--json", "status", check=False)
    # The gap stays an error until a new full backup: the drill below takes it and checks that status clears.
    assert failing.returncode == 1 and "WAL was dropped" in json.loads(failing.stdout)["error"]


# ---- the disaster drill (#20): the box killed, a new stack restored from the repository --------------------


class Writer:
    """Commits one row at a time into ``items`` on the box over one SSH session and records every commit it saw
    acknowledged: (id, commit time on the box's clock in epoch seconds, WAL insert position right after it)."""

    LINE = re.compile(r"^(\d+)\|([\d.]+) ([0-9A-F]+)/([0-9A-F]+)$")

    def __init__(self, stack: Stack) -> None:
        host, state = stack.host, stack.state
        key = Path(host.key_path) if Path(host.key_path).is_absolute() else state.stack_dir.parent / host.key_path
        insert = (f"INSERT INTO items (user_id, note) VALUES ('{USER}', 'w' || $i) "
                  "RETURNING id, extract(epoch FROM clock_timestamp())")  # fmt: skip
        # Each -c is its own transaction: the second reads the WAL position after the first one's commit record.
        loop = (f'for i in $(seq 1 1000000); do out=$({SQL} -c "{insert}" -c "SELECT pg_current_wal_insert_lsn()")'
                " || exit 1; echo $out; sleep 0.2; done")  # fmt: skip
        self.acked: list[tuple[int, float, int]] = []
        self.proc = subprocess.Popen(
            ["ssh", "-i", str(key), "-p", str(host.port), "-o", f"UserKnownHostsFile={known_hosts_path(state)}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", f"{host.user}@{host.address}", loop],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = self.LINE.match(line.strip())
            if found:
                lsn = (int(found[3], 16) << 32) + int(found[4], 16)
                self.acked.append((int(found[1]), float(found[2]), lsn))

    def end(self) -> None:
        """Wait for the session to end (the box is gone), or end it."""
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(timeout=30)


def kill_box(stack: Stack) -> None:
    """What a host failure does: the VM's process is killed (no shutdown, nothing flushed) and its disk deleted."""
    stack_dir = stack.state.stack_dir
    pid = int((stack_dir / "qemu.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"QEMU {pid} outlived SIGKILL"
        time.sleep(0.2)
    (stack_dir / "disk.qcow2").unlink()


def archived_segments(server: Moto, timeline: str) -> list[int]:
    """The WAL segment numbers of ``timeline`` (8 hex digits) pushed to the old stack's repository."""
    names = (re.search(r"/([0-9A-F]{24})-[0-9a-f]{40}", key) for key in objects(server, f"{PREFIX}/archive"))
    # A 16 MB segment's name: timeline, then the segment number as "log" (high) and "seg" (low, 0x00-0xFF).
    return sorted(int(n[1][8:16], 16) * 0x100 + int(n[1][16:24], 16)
                  for n in names if n and n[1].startswith(timeline))  # fmt: skip


def bearer() -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "authenticated", "sub": USER, "role": "authenticated", "iat": now - 5,
              "exp": now + 600, "session_id": str(uuid.uuid4())}  # fmt: skip
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


DRILL: dict[str, Stack] = {}  # what the drill made, for the destroy test after it


@pytest.fixture(scope="module")
def new_box(golden: Golden, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second copy of the golden: the machine the new stack is made on (asked for after the kill)."""
    with restored(golden, tmp_path_factory.mktemp("new-box")) as box:
        yield box


def restored_project(old: Stack, box: Stack, root: Path) -> Stack:
    """A new project for the new stack: the old one's config (same bucket, keys and passphrase from the
    environment) with another s3_path, on ``box`` through the ssh provider."""
    text = (old.project / "postgressor.toml").read_text()
    boxed = text[text.index("\n[supabase]"):].replace(f's3_path = "/{PREFIX}"', f's3_path = "/{NEW_PREFIX}"')
    key = box.state.stack_dir / "id_ed25519"
    (root / "postgressor.toml").write_text(f'provider = "ssh"\n\n[ssh]\nhost = "127.0.0.1"\nport = {box.host.port}'
                                           f'\nuser = "root"\nkey_path = "{key}"\n{boxed}')  # fmt: skip
    (root / "migrations").mkdir()
    for migration in (old.project / "migrations").iterdir():
        (root / "migrations" / migration.name).write_text(migration.read_text())
    return Stack(root, {})


def test_the_box_is_lost_and_a_new_stack_restores_it_from_s3(
    s3_stack: Stack, moto: Moto, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = s3_stack
    old.cli("migrate", "--yes")  # `items`, with its row-level security, as the app has it
    # A new full backup after the outage's gap in the archive (what status asks for), and status clears.
    old.cli_json("backup", "now", "--type", "full", timeout=1200)
    assert (status := old.cli("--json", "status", check=False)).returncode == 0, status.stdout[-500:]
    timeline = sql(old, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
    writer = Writer(old)
    time.sleep(2 * ARCHIVE_TIMEOUT)  # forced WAL switches while it writes
    assert len(writer.acked) > 50 and writer.proc.poll() is None, f"the writer stopped after {len(writer.acked)} rows"
    killed = time.time()
    kill_box(old)
    writer.end()
    last_archived = archived_segments(moto, timeline)[-1]

    box = request.getfixturevalue("new_box")
    booted = time.time()
    new = restored_project(old, box, tmp_path_factory.mktemp("new-project"))
    DRILL["new"] = new
    up = new.cli_json("up", "--yes", "--restore-from", f"/{PREFIX}", timeout=3600)
    assert up["ok"] and up["deploy"]["failed"] == 0, up
    deployed = time.time()
    assert new.state.restored_from["path"] == f"/{PREFIX}" and new.state.restored_from.get("label")

    present = {int(i) for i in sql(new, "SELECT id FROM items WHERE note LIKE 'w%'").split()}
    acked = {row[0]: row for row in writer.acked}
    # Every commit whose record lies in an archived segment is there; nothing is there that was never written.
    archived = {i for i, (_, _, lsn) in acked.items() if (lsn - 1) // WAL_SEGMENT <= last_archived}
    assert archived and archived <= present, sorted(archived - present)[:10]
    # Commits whose acknowledgement was still in the SSH pipe at the kill may be there too: a few ids past the last
    # one seen (about two rows a second), never more.
    assert present <= set(range(1, max(acked) + 20)), "rows the writer never committed"
    newest = max(present & acked.keys())
    lost_rows = len(acked.keys() - present)
    lost_seconds = acked[max(acked)][1] - acked[newest][1]

    # Serving: the user's newest restored row through Caddy, the gateway and Electric (which made its slot again).
    deadline = time.monotonic() + 600
    with httpx.Client(base_url=f"https://127.0.0.1:{box.forwarded(443)}", verify=False, timeout=30) as client:
        while True:
            shape = client.get("/v1/shape/items", params={"offset": "-1"}, headers=bearer())
            notes = {m["value"]["note"] for m in shape.json() if "key" in m} if shape.status_code == 200 else set()
            if f"w{newest}" in notes or time.monotonic() > deadline:
                break
            time.sleep(5)
    serving = time.time()
    assert f"w{newest}" in notes, (shape.status_code, shape.text[-300:])
    assert sql(new, "SELECT pg_is_in_recovery()") == "f"
    assert sql(new, "SHOW restore_command") == "", "the old stack's path stays out of the new stack's config"
    assert new.cli_json("backup", "check")["ok"]  # archiving to its own path now
    stored = objects(moto, NEW_PREFIX)
    assert any(k.startswith(f"{NEW_PREFIX}/archive/main/") for k in stored), stored[:5]
    with capsys.disabled():
        print(f"\ndisaster drill: recovery point {lost_rows} of {len(acked)} acknowledged rows, "
              f"{lost_seconds:.1f} s of writes lost (archive_timeout {ARCHIVE_TIMEOUT} s); recovery time "
              f"{serving - killed:.0f} s from kill to serving (new machine {booted - killed:.0f} s, "
              f"up --restore-from {deployed - booted:.0f} s, first good shape {serving - deployed:.0f} s)")
    # The loss is what archiving had not shipped: at most one archive_timeout, plus the push in flight.
    assert lost_seconds <= ARCHIVE_TIMEOUT + 30, lost_seconds


def test_destroy_takes_a_verified_final_backup_that_outlives_the_server(new_box: Stack, moto: Moto) -> None:
    if "new" not in DRILL:
        pytest.fail("needs the drill's restored stack (the test above)")
    box = new_box  # the machine the new stack runs on, as a local-provider stack that destroy deletes
    config = box.project / "postgressor.toml"
    config.write_text(config.read_text() + s3_settings(moto, NEW_PREFIX))
    asked = box.cli("destroy", check=False)
    assert asked.returncode == 2 and f"s3://{BUCKET}/{NEW_PREFIX}" in asked.stderr, asked.stderr
    pid = int((box.state.stack_dir / "qemu.pid").read_text().split()[0])
    out = box.cli_json("destroy", "--yes", timeout=2400)
    kept = [line for line in out["removed"] if line.startswith("kept: ")]
    assert len(kept) == 1 and f"s3://{BUCKET}/{NEW_PREFIX}" in kept[0], out
    label = re.search(r"\b\d{8}-\d{6}F\b", kept[0])
    assert label, kept
    assert f"verified: backup {label[0]} and the " in kept[0] and "also reported" not in kept[0], kept[0]
    assert f"{NEW_PREFIX}/backup/main/{label[0]}/backup.manifest" in objects(moto, NEW_PREFIX)
    assert not (box.project / ".postgressor" / "default.json").exists()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}/cmdline").exists() and b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, f"the server's QEMU ({pid}) still runs after destroy"
        time.sleep(1)
