"""Supabase Vault over SQL (the ``supabase_vault`` extension): read secrets by name, create or update one.

Names, columns and arguments follow supabase/vault ``sql/supabase_vault--0.3.0.sql`` (commit 16f1570, 2025-07-09;
its Makefile says EXTVERSION 0.3.1, and ``sql/supabase_vault--0.3.0--0.3.1.sql`` changes no SQL):

- view ``vault.decrypted_secrets``: id, name, description, secret (the ciphertext, base64), decrypted_secret,
  key_id, nonce, created_at, updated_at; ``name`` is unique where not NULL;
- ``vault.create_secret(new_secret text, new_name text = NULL, new_description text = '', new_key_id uuid = NULL)
  RETURNS uuid``;
- ``vault.update_secret(secret_id uuid, new_secret text = NULL, new_name text = NULL, new_description text = NULL,
  new_key_id uuid = NULL) RETURNS void`` (a NULL argument keeps the old value).

Both functions are SECURITY DEFINER and revoked from PUBLIC, so the connection's role needs EXECUTE on them and
SELECT on the view: on Supabase, the ``postgres`` role of the project's connection string has both.

The connection URL comes from POSTGRESSOR_VAULT_URL only: argv is public and postgressor.toml is committed.
Values travel as query parameters, never inside the SQL text, and nothing here logs or returns them in messages.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import errors as pgerrors

from postgressor.errors import ConfigError, PostgressorError
from postgressor.masking import mask_url
from postgressor.remote import database as dbconnect

VAULT_URL = "POSTGRESSOR_VAULT_URL"
URL_HOST = "postgresql://postgres@db.PROJECT.supabase.co:5432/postgres"  # plus the password
Stored = Literal["created", "updated", "unchanged"]


def vault_url(needed_by: str) -> str:
    """The Vault connection URL from the environment; ConfigError (exit 2) naming ``needed_by`` when unset."""
    url = os.environ.get(VAULT_URL, "").strip()
    if not url:
        raise ConfigError(f"Supabase Vault is needed ({needed_by}): set {VAULT_URL} in the environment (never a "
                          "flag or the config file) to the project's connection string with the database password, "
                          f"as the Dashboard's Connect panel shows it ({URL_HOST}, or the session pooler)")  # fmt: skip
    dbconnect.parse_url(url)  # UsageError, password masked, for a malformed URL
    return url


@dataclass
class Vault:
    conn: psycopg.Connection
    label: str  # user@host:port/db, for messages


@contextlib.contextmanager
def connect(url: str) -> Iterator[Vault]:
    """A connection to the database holding the Vault; PostgressorError (exit 1) when it cannot be reached.

    No prepared statements: a transaction pooler (Supavisor on 6543) would hand them to another session."""
    label = dbconnect.describe(url)
    conn = dbconnect.connect(url, f"the Supabase Vault database {label} ({VAULT_URL})", prepare_threshold=None)
    try:
        yield Vault(conn, label)
    finally:
        conn.close()


@contextlib.contextmanager
def _speaking(vault: Vault, doing: str) -> Iterator[None]:
    """psycopg errors as one line: no Vault or no grant is a configuration problem (exit 2), the rest runtime."""
    try:
        yield
    except (pgerrors.UndefinedTable, pgerrors.InvalidSchemaName, pgerrors.UndefinedFunction):
        raise ConfigError(f"{vault.label} has no Supabase Vault (no vault.decrypted_secrets / vault.create_secret); "
                          f"enable Vault for the project (Dashboard → Integrations → Vault, or CREATE EXTENSION "
                          f"supabase_vault) or point {VAULT_URL} at the project's database") from None
    except pgerrors.InsufficientPrivilege as err:
        detail = (err.diag.message_primary or "permission denied").strip()
        raise ConfigError(f"{vault.label} refused {doing} ({detail}); connect as the project's postgres role "
                          f"(the connection string under Project Settings → Database) in {VAULT_URL}") from None
    except psycopg.Error as err:
        detail = " ".join(mask_url(str(err)).split()) or type(err).__name__
        raise PostgressorError(f"{doing} in the Supabase Vault at {vault.label} failed: {detail}") from None


def read_secrets(vault: Vault, names: list[str]) -> dict[str, str | None]:
    """Name -> decrypted value for every name present (None when Vault could not decrypt it), in one query."""
    with _speaking(vault, "reading vault.decrypted_secrets"):
        rows = vault.conn.execute(
            "SELECT name, decrypted_secret FROM vault.decrypted_secrets WHERE name = ANY(%s)", [names]
        ).fetchall()
    return {name: value for name, value in rows}


def store_secret(vault: Vault, name: str, value: str, description: str) -> Stored:
    """Create secret ``name`` (vault.create_secret), or update its value when it differs (vault.update_secret)."""
    with _speaking(vault, f"storing Vault secret {name!r}"):
        row = vault.conn.execute(
            "SELECT id, decrypted_secret FROM vault.decrypted_secrets WHERE name = %s", [name]
        ).fetchone()
        if row is None:
            vault.conn.execute("SELECT vault.create_secret(new_secret => %s, new_name => %s, new_description => %s)",
                               [value, name, description])  # fmt: skip
            return "created"
        if row[1] == value:
            return "unchanged"
        vault.conn.execute("SELECT vault.update_secret(secret_id => %s, new_secret => %s, new_description => %s)",
                           [row[0], value, description])  # fmt: skip
        return "updated"
