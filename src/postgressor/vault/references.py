"""Secret settings that name a Supabase Vault secret (``vault:NAME``) instead of holding the value.

Any secret setting (a ``SecretStr``: supabase.jwt_secret, gateway.electric_secret, backup.s3_key/s3_key_secret/
cipher_pass, hetzner.token, oracle.pass_phrase, the ovh keys), in postgressor.toml, a POSTGRESSOR_* variable or
.env, may be ``vault:NAME``. ``load_settings`` binds each one to a :class:`VaultSecret`, and the value is read only
when something needs it: the first ``get_secret_value()`` of any of them reads every reference of that
configuration in one query (client.read_secrets) over the connection in POSTGRESSOR_VAULT_URL. A command that reads
no secret never connects. ``resolve_vault_references`` reads them at once and returns settings holding plain
``SecretStr`` values: the CLI calls it for the verbs that check or deploy secrets, so a missing name stops them
before any change.

A value read from Vault is checked as the same value written in the file would be (config.secret_problem here;
the pre-flight checks read it like any other), and it lives in memory only: never printed, logged (only the
names are), or written to the state.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, SecretStr

from postgressor.errors import ConfigError, PostgressorError

if TYPE_CHECKING:
    from postgressor.config import Settings

PREFIX = "vault:"
NAME = re.compile(r"[^\s]{1,255}")  # Vault names are free text; postgressor takes one word
log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)


def reference(value: str) -> str | None:
    """The Vault secret name ``value`` refers to (``vault:NAME`` -> ``NAME``), None for a plain value."""
    return value[len(PREFIX):] if value.startswith(PREFIX) else None


def is_reference(secret: SecretStr | None) -> bool:
    """True for ``vault:NAME`` (bound or not): its format is checked once its value is read, not at load."""
    if isinstance(secret, VaultSecret):
        return True
    return secret is not None and reference(secret.get_secret_value()) is not None


class _Reads:
    """The references of one loaded configuration (setting key -> Vault name), read together once: a failure too
    is kept, so a command that asks again is not held up by a second connection attempt."""

    def __init__(self, refs: dict[str, str]) -> None:
        self.refs = refs
        self._values: dict[str, str] | None = None
        self._failure: PostgressorError | None = None
        self._lock = threading.Lock()

    def value(self, key: str) -> str:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._values is None:
                try:
                    self._values = read_references(self.refs)
                except PostgressorError as err:
                    self._failure = err
                    raise
            return self._values[key]


class VaultSecret(SecretStr):
    """A setting written as ``vault:NAME``: its value is read from Vault (with the configuration's other references)
    the first time it is asked for. Shown like any secret (``**********``); equal by reference, never by value."""

    def __init__(self, key: str, name: str, reads: _Reads) -> None:
        super().__init__(PREFIX + name)  # what the configuration says, for len()/bool(); not the value
        self.key, self.name, self._reads = key, name, reads

    def get_secret_value(self) -> str:
        return self._reads.value(self.key)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, VaultSecret) and (self.key, self.name) == (other.key, other.name)

    def __hash__(self) -> int:
        return hash((PREFIX, self.key, self.name))

    def __copy__(self) -> VaultSecret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> VaultSecret:
        return self  # one read shared by every copy of the settings


def _secrets(settings: BaseModel) -> Iterator[tuple[str, SecretStr]]:
    """(dotted key, value) of every secret setting that is set, e.g. ("supabase.jwt_secret", SecretStr(...))."""
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if isinstance(value, SecretStr):
            yield field, value
        elif isinstance(value, BaseModel):
            yield from ((f"{field}.{key}", secret) for key, secret in _secrets(value))


def _replaced(model: Model, values: dict[str, SecretStr]) -> Model:
    """``model`` with the secrets at the dotted keys in ``values`` replaced (copies; nothing revalidated)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, SecretStr]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = _replaced(getattr(model, head), inner)
    return model.model_copy(update=top)


def bind_references(settings: Settings) -> Settings:
    """``settings`` with every ``vault:NAME`` secret bound to a :class:`VaultSecret` (nothing is read yet)."""
    refs: dict[str, str] = {}
    for key, secret in _secrets(settings):
        if isinstance(secret, VaultSecret):
            continue
        name = reference(secret.get_secret_value())
        if name is None:
            continue
        if not NAME.fullmatch(name):
            raise ConfigError(f"{key}: '{PREFIX}{name}' names no Vault secret; write {PREFIX}NAME with the secret's "
                              "name in Supabase's Vault (one word, no spaces)")  # fmt: skip
        refs[key] = name
    if not refs:
        return settings
    reads = _Reads(refs)
    return _replaced(settings, {key: VaultSecret(key, name, reads) for key, name in refs.items()})


def vault_references(settings: Settings) -> dict[str, str]:
    """Setting key -> Vault name, for the references not read yet (names only: they are not secret)."""
    return {key: secret.name for key, secret in _secrets(settings) if isinstance(secret, VaultSecret)}


def unread(settings: Settings) -> Settings:
    """``settings`` with each reference not read yet as the plain text ``vault:NAME`` (to show or dump it without
    reading Vault: pydantic's JSON dump of a secret asks for its value)."""
    bound = {key: secret for key, secret in _secrets(settings) if isinstance(secret, VaultSecret)}
    if not bound:
        return settings
    return _replaced(settings, {key: SecretStr(PREFIX + secret.name) for key, secret in bound.items()})


def resolve_vault_references(settings: Settings) -> Settings:
    """``settings`` with every Vault reference read (one query for all) and held as a plain ``SecretStr``.

    Without references: ``settings`` itself, and no connection. ConfigError (exit 2) for an unset
    POSTGRESSOR_VAULT_URL, a missing name or a value that fails its setting's check; PostgressorError (exit 1) when
    the database cannot be reached."""
    bound = [(key, secret) for key, secret in _secrets(settings) if isinstance(secret, VaultSecret)]
    if not bound:
        return settings
    return _replaced(settings, {key: SecretStr(secret.get_secret_value()) for key, secret in bound})


def read_references(refs: dict[str, str]) -> dict[str, str]:
    """Setting key -> value for ``refs`` (setting key -> Vault name), in one query; each value checked."""
    from postgressor.config import secret_problem
    from postgressor.vault import client

    keys = ", ".join(refs)
    url = client.vault_url(", ".join(f"{key} = {PREFIX}{name}" for key, name in refs.items()))
    names = sorted(set(refs.values()))
    with client.connect(url) as vault:
        found = client.read_secrets(vault, names)
        where = vault.label
    log.debug("read %d Vault secret(s) from %s for %s", len(found), where, keys)
    missing = [name for name in names if name not in found]
    if missing:
        users = ", ".join(key for key, name in refs.items() if name in missing)
        raise ConfigError(f"{users}: no Vault secret named {', '.join(map(repr, missing))} in {where}; add it "
                          "(Dashboard → Integrations → Vault, or select vault.create_secret(...)) or fix the name "
                          f"after '{PREFIX}'")  # fmt: skip
    values: dict[str, str] = {}
    for key, name in refs.items():
        value = found[name]
        if value is None:
            raise ConfigError(f"{key}: Vault secret {name!r} in {where} cannot be decrypted; store it again "
                              "(vault.update_secret)")  # fmt: skip
        if not value:
            raise ConfigError(f"{key}: Vault secret {name!r} in {where} is empty; store the value in it")
        problem = secret_problem(key, value)
        if problem:
            raise ConfigError(f"{key} (Vault secret {name!r}): {problem}")
        values[key] = value
    return values
