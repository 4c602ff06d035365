"""Throwaway PostgreSQL clusters (`schema export --verify`, tests): initdb + pg_ctl from `pg_config --bindir`.

A cluster listens on 127.0.0.1 only (a free port, no Unix socket), with scram-sha-256 and a random
superuser password, and is deleted when the context ends.

initdb refuses to run as root, so under root the cluster belongs to an unprivileged system account
(``postgres`` when the server package created it, else ``nobody``) and its commands run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when no PostgreSQL server is installed."""
    found = shutil.which("pg_config")
    candidates = []
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        candidates.append(Path(out))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def bindir() -> Path:
    found = find_bindir()
    if found is None:
        raise RuntimeError("initdb/pg_ctl not found: install the PostgreSQL server (Debian: postgresql-15)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _account() -> pwd.struct_passwd | None:
    """The account to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists to own the test cluster")


@dataclass
class Cluster:
    port: int
    password: str
    datadir: Path
    host: str = "127.0.0.1"

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        pw = self.password if password is None and user == SUPERUSER else password
        auth = f"{user}:{pw}" if pw else user
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        pw = self.password if password is None and user == SUPERUSER else password
        return make_conninfo("", host=self.host, port=self.port, dbname=dbname, user=user, password=pw)

    def connect(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None,
                autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname, user, password), autocommit=autocommit)

    def create_database(self, owner: str = SUPERUSER) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def ensure_role(self, name: str, password: str, *options: str) -> None:
        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(f"""{verb} ROLE "{name}" LOGIN PASSWORD '{password}' {" ".join(options)}""")


@contextlib.contextmanager
def running_cluster(bins: Path | None = None, wal_level: str = "logical") -> Iterator[Cluster]:
    """Start a fresh cluster (wal_level=logical unless told, 127.0.0.1 only, free port); stop and delete it after.

    Raises RuntimeError (with initdb's or pg_ctl's output) when the cluster cannot start.
    """
    bins = bins or bindir()
    account = _account()
    workdir = Path(tempfile.mkdtemp(prefix="postgressor-pg-"))
    datadir, pwfile = workdir / "data", workdir / "pwfile"
    password = uuid.uuid4().hex
    pwfile.write_text(password + "\n")
    run_as: dict[str, object] = {}
    if account is not None:
        for path in (workdir, pwfile):
            os.chown(path, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def run(*args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True, cwd=workdir, check=False, **run_as)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    port = free_port()
    started = False
    try:
        run(str(bins / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8")
        (datadir / "postgresql.auto.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
            f"wal_level = {wal_level}\nmax_connections = 50\nfsync = off\nlog_min_messages = warning\n"
        )
        run(str(bins / "pg_ctl"), "-D", str(datadir), "-l", str(workdir / "server.log"), "-w", "-t", "60",
            "start")
        started = True
        yield Cluster(port=port, password=password, datadir=datadir)
    finally:
        if started:
            run(str(bins / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)
