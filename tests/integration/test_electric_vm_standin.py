"""The VM tests' Electric stand-in image, run without Docker: its `docker save` archive is built, its layer
extracted, and its entrypoint run in a chroot of that layer (so the image is proven self-contained) against a
throwaway PostgreSQL set up like the box: a table owner, role `electric` with LOGIN REPLICATION and membership in
the owner role, wal_level=logical, `items` rows for two users.

In the chroot there is no /etc/hosts, so DATABASE_URL names 127.0.0.1 instead of host.docker.internal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pgcluster import Cluster, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from electric_standin_image import IMAGE, build_archive

OWNER, ELECTRIC, ELECTRIC_PW, SECRET = "standin_owner", "electric", "electric-pw-1", "s3cret-value"
USER_A, USER_B = str(uuid.uuid4()), str(uuid.uuid4())
INITIAL_CACHE = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("electric-image")
    archive = build_archive(work / "electric-standin.tar")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == [IMAGE]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        (layer_name,) = manifest[0]["Layers"]
        layer = tar.extractfile(layer_name).read()  # type: ignore[union-attr]
    import hashlib

    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    root = work / "root"
    root.mkdir()
    (work / "layer.tar").write_bytes(layer)
    with tarfile.open(work / "layer.tar") as tar:
        tar.extractall(root, filter="tar")
    (root / "entrypoint.json").write_text(json.dumps(config["config"]))
    return root


class Server:
    def __init__(self, root: Path, database_url: str) -> None:
        config = json.loads((root / "entrypoint.json").read_text())
        self.port = free_port()
        env = dict(item.split("=", 1) for item in config["Env"])
        env.update(DATABASE_URL=database_url, ELECTRIC_SECRET=SECRET, ELECTRIC_PORT=str(self.port))
        if os.geteuid() == 0:
            argv = ["/usr/sbin/chroot", str(root), *config["Entrypoint"]]
        else:  # no chroot: the image's own loader and libraries, its interpreter pointed at its stdlib
            entry = config["Entrypoint"]
            argv = [str(root / "lib64/ld-linux-x86-64.so.2"), "--library-path",
                    str(root / "lib/x86_64-linux-gnu"), str(root / entry[0].lstrip("/")),
                    str(root / entry[1].lstrip("/"))]  # fmt: skip
            env.update(PYTHONHOME=str(root / "usr"), PYTHONPATH=str(root / "standin"))
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.base + path, params=params, timeout=30)

    def shape(self, **params: Any) -> httpx.Response:
        return self.get("/v1/shape", **{"table": "items", "secret": SECRET, **params})

    def wait_health(self, status: int, deadline: float = 60) -> httpx.Response:
        end = time.monotonic() + deadline
        while True:
            try:
                response = self.get("/v1/health")
                if response.status_code == status:
                    return response
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"no {status} from /v1/health; output: {self.stop()}")
            time.sleep(0.3)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture(scope="module")
def box_db(pg_cluster: Cluster) -> Iterator[str]:
    """A database set up like the box: owner, `electric` (LOGIN REPLICATION, member of the owner), rows."""
    pg_cluster.ensure_role(OWNER, "owner-pw", "NOSUPERUSER")
    pg_cluster.ensure_role(ELECTRIC, ELECTRIC_PW, "NOSUPERUSER", "REPLICATION", "INHERIT")
    name = pg_cluster.create_database(owner=OWNER)
    with pg_cluster.connect() as conn:
        conn.execute(f'GRANT "{OWNER}" TO {ELECTRIC}')
        conn.execute(f'GRANT CREATE, CONNECT ON DATABASE "{name}" TO {ELECTRIC}')
    with pg_cluster.connect(name) as conn:
        conn.execute(f'SET ROLE "{OWNER}"')
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, user_id uuid NOT NULL, note text)")
        conn.execute("INSERT INTO items (user_id, note) VALUES (%s, 'a1'), (%s, 'b1'), (%s, 'shared'), "
                     "(%s, 'shared')", [USER_A, USER_B, USER_A, USER_B])  # fmt: skip
    yield name
    with pg_cluster.connect() as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                     [name])  # fmt: skip
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def server(image_root: Path, pg_cluster: Cluster, box_db: str) -> Iterator[Server]:
    running = Server(image_root, pg_cluster.url(box_db, ELECTRIC, ELECTRIC_PW) + "?sslmode=disable")
    try:
        running.wait_health(200)
        yield running
    finally:
        running.stop()


def rows(response: httpx.Response) -> list[dict[str, Any]]:
    return [m for m in response.json() if "key" in m]


def test_start_creates_electrics_publication_and_pgoutput_slot(server: Server, pg_cluster: Cluster,
                                                                box_db: str) -> None:
    assert server.wait_health(200).json() == {"status": "active"}
    with pg_cluster.connect(box_db) as conn:
        pub = conn.execute("SELECT pg_get_userbyid(pubowner) FROM pg_publication "
                           "WHERE pubname = 'electric_publication_default'").fetchall()  # fmt: skip
        slot = conn.execute("SELECT plugin, slot_type, database FROM pg_replication_slots "
                            "WHERE slot_name = 'electric_slot_default'").fetchall()  # fmt: skip
    assert pub == [(ELECTRIC,)]
    assert slot == [("pgoutput", "logical", box_db)]


def test_wrong_or_missing_secret_is_401(server: Server) -> None:
    wrong = server.shape(offset="-1", secret="nope")
    missing = server.get("/v1/shape", table="items", offset="-1")
    assert wrong.status_code == missing.status_code == 401
    assert wrong.json() == {"message": "Unauthorized - Invalid API secret"}


def test_shape_returns_only_the_pinned_users_rows_with_electrics_headers(server: Server, pg_cluster: Cluster,
                                                                         box_db: str) -> None:
    response = server.shape(offset="-1", where='"user_id" = $1', **{"params[1]": USER_A})
    assert response.status_code == 200, response.text
    got = rows(response)
    assert sorted(r["value"]["note"] for r in got) == ["a1", "shared"]
    assert {r["value"]["user_id"] for r in got} == {USER_A}
    first = got[0]
    assert first["key"] == f'"public"."items"/"{first["value"]["id"]}"'
    assert first["headers"] == {"operation": "insert", "relation": ["public", "items"]}
    assert response.headers["electric-offset"] == "0_inf"
    assert "electric-up-to-date" not in response.headers  # Electric never sets it on offset=-1
    assert response.headers["cache-control"] == INITIAL_CACHE
    schema = json.loads(response.headers["electric-schema"])
    assert schema["id"] == {"type": "int8", "pk_index": 0, "not_null": True}
    assert schema["user_id"] == {"type": "uuid", "not_null": True}
    seen = response.headers["electric-standin-query"]
    assert "secret=REDACTED" in seen and SECRET not in seen
    with pg_cluster.connect(box_db) as conn:  # configure_table_for_replication ran as `electric`
        published = conn.execute("SELECT tablename FROM pg_publication_tables "
                                 "WHERE pubname = 'electric_publication_default'").fetchall()  # fmt: skip
        identity = conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'items'").fetchone()
    assert published == [("items",)]
    assert identity == ("f",)


def test_a_row_inserted_later_comes_from_the_slot_on_the_next_request(server: Server, pg_cluster: Cluster,
                                                                      box_db: str) -> None:
    pinned = {"where": '"user_id" = $1', "params[1]": USER_A}
    first = server.shape(offset="-1", **pinned)
    handle = first.headers["electric-handle"]
    with pg_cluster.connect(box_db) as conn:
        conn.execute("INSERT INTO items (user_id, note) VALUES (%s, 'a-later'), (%s, 'b-later')", [USER_A, USER_B])
    follow = server.shape(offset=first.headers["electric-offset"], handle=handle, **pinned)
    assert follow.status_code == 200, follow.text
    messages = follow.json()
    assert [(m["headers"]["operation"], m["value"]["note"]) for m in messages[:-1]] == [("insert", "a-later")]
    assert messages[-1]["headers"]["control"] == "up-to-date"
    assert follow.headers["electric-up-to-date"] == ""
    assert follow.headers["electric-offset"] != "0_inf"
    again = server.shape(offset=follow.headers["electric-offset"], handle=handle, **pinned)
    assert [m for m in again.json() if "key" in m] == []  # nothing new after that offset
    fresh = server.shape(offset="-1", **pinned)
    assert sorted(r["value"]["note"] for r in rows(fresh)) == ["a-later", "a1", "shared"]
    other = server.shape(offset="0_inf", handle=handle, where='"user_id" = $1', **{"params[1]": USER_B})
    assert other.status_code == 409  # a handle from another shape: must-refetch


def test_columns_are_honoured_and_must_include_the_primary_key(server: Server) -> None:
    response = server.shape(offset="-1", where='"user_id" = $1', columns="id,note", **{"params[1]": USER_A})
    assert response.status_code == 200, response.text
    assert {tuple(sorted(r["value"])) for r in rows(response)} == {("id", "note")}
    assert set(json.loads(response.headers["electric-schema"])) == {"id", "note"}
    assert server.shape(offset="-1", columns="note").status_code == 400


def test_subset_where_is_anded_with_the_shape_where(server: Server) -> None:
    response = server.shape(offset="-1", where='"user_id" = $1', subset__where="note = $1",
                            subset__order_by="id", subset__limit="10",
                            **{"params[1]": USER_A, "subset__params[1]": "shared"})  # fmt: skip
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [(r["value"]["user_id"], r["value"]["note"]) for r in data] == [(USER_A, "shared")]
    assert response.headers["electric-snapshot"] == "true"
    widened = server.shape(offset="-1", where='"user_id" = $1', subset__where="true OR true",
                           **{"params[1]": USER_A})  # fmt: skip
    assert {r["value"]["user_id"] for r in widened.json()["data"]} == {USER_A}


def test_where_outside_electrics_grammar_is_400_not_sql(server: Server) -> None:
    for where in ("pg_sleep(0) IS NULL", "id IN (SELECT id FROM items)", "true; DROP TABLE items",
                  "true) OR (true"):
        response = server.shape(offset="-1", where=where)
        assert response.status_code == 400, (where, response.text)
    assert server.shape(offset="-1", where='"user_id" = $1').status_code == 400  # $1 without a value


def test_without_replication_the_start_fails_loudly(image_root: Path, pg_cluster: Cluster, box_db: str) -> None:
    pg_cluster.ensure_role("electric_norepl", "norepl-pw", "NOSUPERUSER", "NOREPLICATION")
    with pg_cluster.connect() as conn:
        conn.execute(f'GRANT "{OWNER}" TO electric_norepl')
    running = Server(image_root, pg_cluster.url(box_db, "electric_norepl", "norepl-pw") + "?sslmode=disable")
    try:
        assert running.proc.wait(60) == 1
    finally:
        output = running.stop()
    assert "does not have the REPLICATION attribute" in output, output


def test_health_waits_while_postgres_does_not_answer(image_root: Path) -> None:
    running = Server(image_root, f"postgresql://electric:x@127.0.0.1:{free_port()}/app?sslmode=disable")
    try:
        response = running.wait_health(202, deadline=30)
        assert response.json() == {"status": "waiting"}
        assert running.proc.poll() is None  # unreachable PostgreSQL is retried, like Electric
    finally:
        running.stop()


def test_image_is_small_and_self_contained(image_root: Path) -> None:
    size = sum(p.stat().st_size for p in image_root.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < 48_000_000, size
    assert shutil.which("python3.11", path=str(image_root / "usr/bin"))
