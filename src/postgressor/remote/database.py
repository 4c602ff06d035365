"""Database connections for postgressor's own SQL work: a URL, or a stack's box through an SSH tunnel."""

from __future__ import annotations

import contextlib
import secrets
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from postgressor.box.layout import psql, secret_path
from postgressor.box.quoting import sql_literal
from postgressor.config import Settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.masking import mask_url
from postgressor.remote import ssh
from postgressor.remote.tunnel import Tunnel
from postgressor.state import require_state


def parse_url(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.Error as err:
        reason = mask_url(str(err).strip())
        password = _url_password(url)
        if password:  # libpq quotes the offending part of the URL, the password included
            reason = reason.replace(password, "***")
        raise UsageError(f"database URL {mask_url(url)} is invalid ({reason}); "
                         "use postgresql://user:password@host:5432/dbname") from None


def _url_password(url: str) -> str:
    """The password of a URL's userinfo as written (no decoding), or ''."""
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@") if sep else ("", "", "")
    return userinfo.partition(":")[2] if at else ""


def split_password(url: str) -> tuple[str, str | None]:
    """The conninfo without its password, and the password (kept out of argv and logs)."""
    params = parse_url(url)
    password = params.pop("password", None)
    return make_conninfo("", **params), password


def describe(url: str) -> str:
    """user@host:port/db for messages; never the password."""
    p = parse_url(url)
    host = p.get("host") or "localhost"
    port = f":{p['port']}" if p.get("port") else ""
    user = f"{p['user']}@" if p.get("user") else ""
    return f"{user}{host}{port}/{p.get('dbname', '')}"


def connect(conninfo: str, label: str, **kwargs: Any) -> psycopg.Connection:
    """An autocommit connection; failures become one line naming ``label``, never the password."""
    kwargs.setdefault("connect_timeout", 15)
    kwargs.setdefault("application_name", "postgressor")
    try:
        return psycopg.connect(conninfo, autocommit=True, **kwargs)
    except psycopg.Error as err:
        detail = " ".join(mask_url(str(err)).split())
        raise PostgressorError(f"cannot connect to {label}: {detail}; check the URL, the password and "
                               "that the server accepts connections from here") from None


@dataclass
class Target:
    conn: psycopg.Connection
    label: str


@contextlib.contextmanager
def url_target(url: str) -> Iterator[Target]:
    parse_url(url)
    conn = connect(url, describe(url))
    try:
        yield Target(conn, describe(url))
    finally:
        conn.close()


def read_box_password(host: ssh.HostRecord, owner: str) -> str:
    """The owner role's password from the root-only secrets file on the box; kept in memory only."""
    path = secret_path(f"{owner}.password")
    result = ssh.run(host, f"cat {shlex.quote(path)}")
    if not result.ok:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.exit_status}"
        raise PostgressorError(f"cannot read {path} on {host.address} ({reason}); run 'postgressor deploy' "
                               "for this stack first")
    password = result.stdout.strip()
    if not password:
        raise PostgressorError(f"{path} on {host.address} is empty; run 'postgressor deploy' again")
    return password


@contextlib.contextmanager
def stack_target(settings: Settings, stack: str, superuser: bool = False) -> Iterator[Target]:
    """The stack's database through an SSH tunnel to the box's localhost:5432, as the owner role.

    ``superuser``: as the box's ``postgres`` role instead (what ``CREATE SUBSCRIPTION`` needs on PostgreSQL 15).
    That role has no password: one is set for this connection only (its SCRAM verifier, computed here, goes to
    the box on psql's stdin) and removed again as soon as the session is open, so it never exists on disk and
    outlives nothing. Raises PostgressorError with one line when the box or PostgreSQL cannot be reached.
    """
    state = require_state(settings.state_dir, stack)
    host = state.host
    assert host is not None
    owner, database = settings.postgres.owner, settings.postgres.database
    password = read_box_password(host, owner)
    client = ssh.connect(host)
    try:
        transport = client.get_transport()
        if transport is None:
            raise PostgressorError(f"the SSH connection to {host.address} closed; try again")
        with Tunnel(transport) as tunnel:
            label = f"{owner}@{database} on stack '{stack}' ({host.address}, via SSH)"

            def open_as(user: str, secret: str) -> psycopg.Connection:
                try:
                    return connect("", label, host="127.0.0.1", port=tunnel.port, dbname=database, user=user,
                                   password=secret)  # fmt: skip
                except PostgressorError as err:
                    if tunnel.last_error:
                        raise PostgressorError(f"cannot connect to {label}: {tunnel.last_error}; check that "
                                               "PostgreSQL runs on the box ('postgressor status')") from None
                    raise err

            conn = open_as(owner, password)
            if superuser:
                with contextlib.closing(conn):
                    label = f"{SUPERUSER}@{database} on stack '{stack}' ({host.address}, via SSH)"
                    conn = _superuser_session(host, conn, open_as)
            try:
                yield Target(conn, label)
            finally:
                conn.close()
    finally:
        client.close()


SUPERUSER = "postgres"
ONE_TIME_MINUTES = 5  # the one-time password expires on its own after this, whatever happens to this process


def _superuser_session(host: ssh.HostRecord, owner_conn: psycopg.Connection,
                       open_as: Any) -> psycopg.Connection:  # fmt: skip
    """A session as ``postgres`` through a one-time password: set (as its SCRAM verifier, ``VALID UNTIL`` a few
    minutes on the box's clock), used once, then removed over that very session. A failure or an interrupt
    before that removes it over SSH; if even that cannot run, the password expires by itself."""
    once = secrets.token_urlsafe(32)
    verifier = owner_conn.pgconn.encrypt_password(once.encode(), SUPERUSER.encode(), b"scram-sha-256").decode()
    statement = (f"SELECT format('ALTER ROLE {SUPERUSER} PASSWORD %L VALID UNTIL %L', {sql_literal(verifier)}, "
                 f"(now() + interval '{ONE_TIME_MINUTES} minutes')::text) \\gexec\n")  # fmt: skip
    clear = f"ALTER ROLE {SUPERUSER} PASSWORD NULL VALID UNTIL 'infinity'"
    try:
        result = ssh.run(host, psql(), stdin=statement)
        if not result.ok:
            reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.exit_status}"
            raise PostgressorError(f"cannot open a superuser session on {host.address} ({reason}); "
                                   "run 'postgressor deploy' for this stack, then try again")  # fmt: skip
        conn: psycopg.Connection = open_as(SUPERUSER, once)
    except BaseException:
        with contextlib.suppress(Exception):
            ssh.run(host, psql(), stdin=clear + ";\n")
        raise
    conn.execute(clear)  # the session stays open; the password is gone
    return conn


@contextlib.contextmanager
def database_target(settings: Settings, stack: str, database_url: str | None,
                    superuser: bool = False) -> Iterator[Target]:  # fmt: skip
    """``database_url`` when given (``--database-url``/POSTGRESSOR_DATABASE_URL), else the stack's box through
    its SSH tunnel (``stack_target``)."""
    if database_url:
        with url_target(database_url) as target:
            yield target
    else:
        with stack_target(settings, stack, superuser=superuser) as target:
            yield target
