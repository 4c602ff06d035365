"""The pre-flight check: what each enabled feature needs, checked before anything touches a box.

``config check``, ``plan``, ``up`` and ``deploy`` all run :func:`check` first. Each rule in :data:`RULES`
names the setting it is about and yields one line per problem (what is wrong, how to fix it); every rule
has its own test in tests/unit/test_preflight.py.
"""

from __future__ import annotations

import ipaddress
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from postgressor.config import IDENTIFIER, MAKE_CIPHER_PASS, MIN_JWT_SECRET, Settings
from postgressor.errors import ConfigError

# Supabase's own minimum for the legacy HS256 JWT secret: "JWT_SECRET=your-super-secret-jwt-token-with-at-least-
# 32-characters-long" (supabase/supabase docker/.env.example, commit 001faf98b6c9).
JWKS_SUFFIX = "/.well-known/jwks.json"
ISSUER_EXAMPLE = "https://<ref>.supabase.co/auth/v1"


def env_name(key: str) -> str:
    """The environment variable that sets a dotted ``key``: supabase.jwt_secret → POSTGRESSOR_SUPABASE__JWT_SECRET."""
    return "POSTGRESSOR_" + key.upper().replace(".", "__")


@dataclass(frozen=True)
class Rule:
    """One requirement: ``key`` is the setting it is about; ``check`` yields one line per problem."""

    key: str
    applies: Callable[[Settings], bool]
    check: Callable[[Settings], Iterator[str]]


def _sync(settings: Settings) -> bool:
    return settings.sync_enabled()


def _always(settings: Settings) -> bool:
    return True


def _tables_listed(settings: Settings) -> Iterator[str]:
    if not settings.sync.tables:
        yield ("sync.tables: electric.enabled is true but no [[sync.tables]] is listed; add one (name, "
               "owner_column) or set electric.enabled = false")  # fmt: skip


def _key_source(settings: Settings) -> Iterator[str]:
    sb = settings.supabase
    if sb.jwt_secret is None and not sb.jwks_url:
        yield (f"supabase.jwt_secret / supabase.jwks_url: sync needs a key source to verify tokens; set "
               f"{env_name('supabase.jwt_secret')} (HS256 projects) and/or [supabase] jwks_url = "
               f"\"{ISSUER_EXAMPLE}{JWKS_SUFFIX}\"")  # fmt: skip


def _secret_length(settings: Settings) -> Iterator[str]:
    secret = settings.supabase.jwt_secret
    if secret is not None and len(secret.get_secret_value()) < MIN_JWT_SECRET:
        yield (f"supabase.jwt_secret: {len(secret.get_secret_value())} characters, Supabase's minimum is "
               f"{MIN_JWT_SECRET}; copy the project's whole JWT secret (Dashboard → Project Settings → JWT Keys) "
               f"into {env_name('supabase.jwt_secret')}")  # fmt: skip


def _jwks_url(settings: Settings) -> Iterator[str]:
    url = settings.supabase.jwks_url
    if not url:
        return
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.hostname or (parts.scheme != "https" and not (parts.scheme == "http" and loopback)):
        yield f'supabase.jwks_url: {url!r} is not an https:// URL; use "{ISSUER_EXAMPLE}{JWKS_SUFFIX}"'


def _issuer(settings: Settings) -> Iterator[str]:
    sb = settings.supabase
    if sb.issuer:
        if urlsplit(sb.issuer).scheme not in ("https", "http"):
            yield f'supabase.issuer: {sb.issuer!r} is not a URL; use "{ISSUER_EXAMPLE}"'
        return
    if sb.jwks_url.endswith(JWKS_SUFFIX):
        return  # the gateway derives the issuer from a Supabase JWKS URL
    yield (f"supabase.issuer: sync needs the token issuer; set [supabase] issuer = \"{ISSUER_EXAMPLE}\" (or a "
           f"jwks_url ending in {JWKS_SUFFIX}, from which it is derived)")  # fmt: skip


def _audience(settings: Settings) -> Iterator[str]:
    if not settings.supabase.audience:
        yield 'supabase.audience: empty; Supabase user tokens use audience = "authenticated"'


def _owner_columns(settings: Settings) -> Iterator[str]:
    for i, table in enumerate(settings.sync.tables):  # names listed twice: refused at load (SyncConfig)
        where = f"sync.tables[{i}] ({table.name!r})"
        if "owner_column" not in table.model_fields_set:
            yield (f"{where}.owner_column: not set; name the column holding the owner's user id, e.g. "
                   "owner_column = \"user_id\" (uuid or text)")  # fmt: skip
        elif not IDENTIFIER.match(table.owner_column):
            yield (f"{where}.owner_column: {table.owner_column!r} is not a column name; use lower-case letters, "
                   "digits and underscores")  # fmt: skip


def _docker_bridge(settings: Settings) -> Iterator[str]:
    try:
        ipaddress.ip_interface(settings.electric.docker_bridge)
    except ValueError:
        yield f"electric.docker_bridge: {settings.electric.docker_bridge!r} is not an address like 172.17.0.1/16"


def _image_archive(settings: Settings) -> Iterator[str]:
    archive = settings.electric.image_archive
    if archive is None:
        return
    path = archive.expanduser()
    if not path.is_file():
        yield f"electric.image_archive: {path} not found; point it at a 'docker save' tarball"
        return
    try:
        tags = archive_tags(path)
    except (OSError, tarfile.TarError, ValueError) as err:
        yield f"electric.image_archive: {path} is not a 'docker save' tarball ({err}); make one with docker save"
        return
    wanted = settings.electric.image_ref()
    if normalize_ref(wanted) in {normalize_ref(t) for t in tags}:
        return
    if not tags:
        yield (f"electric.image_archive: {path} holds no tagged image; save it by name: "
               f"docker save -o {path.name} {wanted}")  # fmt: skip
        return
    held = ", ".join(tags)
    yield (f"electric.image: the archive {path} holds {held}, not {wanted}; set electric.image = \"{tags[0]}\" "
           f"(or save {wanted} into the archive)")  # fmt: skip


def archive_tags(path: Path) -> list[str]:
    """The image names a ``docker save`` tarball loads as: manifest.json RepoTags, else the legacy
    ``repositories`` file ({repo: {tag: id}}). Raises OSError, tarfile.TarError or ValueError."""
    with tarfile.open(path, "r:*") as tar:
        names = {member.name.removeprefix("./"): member for member in tar.getmembers()}
        if "manifest.json" in names:
            stream = tar.extractfile(names["manifest.json"])
            manifest = json.loads(stream.read() if stream else b"[]")
            if not isinstance(manifest, list):
                raise ValueError("manifest.json is not a list")
            return [str(tag) for entry in manifest for tag in (entry.get("RepoTags") or [])]
        if "repositories" in names:
            stream = tar.extractfile(names["repositories"])
            repos = json.loads(stream.read() if stream else b"{}")
            return [f"{repo}:{tag}" for repo, tags in repos.items() for tag in tags]
    raise ValueError("no manifest.json or repositories file")


def normalize_ref(ref: str) -> str:
    """Docker's short form of an image reference: docker.io/library/x → x, a missing tag → :latest."""
    name = ref
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        name = name.removeprefix(prefix)
    name = name.removeprefix("library/")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def _backups(settings: Settings) -> bool:
    return settings.backup.enabled


def _cipher_custody(settings: Settings) -> Iterator[str]:
    backup = settings.backup
    if backup.s3 and backup.cipher_pass is None:
        yield (f"backup.cipher_pass: an S3 repository must stay readable when the box is lost, so you hold its "
               f"passphrase: make one with '{MAKE_CIPHER_PASS}', keep it in your password manager or CI secrets "
               f"and set {env_name('backup.cipher_pass')} (or backup.cipher_pass_file); for a box already backing "
               "up, 'postgressor backup passphrase' shows the one it uses")  # fmt: skip


RULES: tuple[Rule, ...] = (
    Rule("sync.tables", _sync, _tables_listed),
    Rule("supabase.jwt_secret", _sync, _key_source),
    Rule("supabase.jwt_secret", _always, _secret_length),
    Rule("supabase.jwks_url", _always, _jwks_url),
    Rule("supabase.issuer", _sync, _issuer),
    Rule("supabase.audience", _sync, _audience),
    Rule("sync.tables.owner_column", _sync, _owner_columns),
    Rule("electric.docker_bridge", _sync, _docker_bridge),
    Rule("electric.image_archive", _sync, _image_archive),
    Rule("backup.cipher_pass", _backups, _cipher_custody),
)


def problems(settings: Settings) -> list[str]:
    """Every problem the enabled features have, one line each (empty when all is well)."""
    return [line for rule in RULES if rule.applies(settings) for line in rule.check(settings)]


class PreflightError(ConfigError):
    """Every pre-flight problem; the CLI prints each on its own ``error:`` line and exits 2."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\nerror: ".join(lines))


def check(settings: Settings) -> None:
    """Raise PreflightError (exit 2) listing every problem, one line each, before any side effect."""
    found = problems(settings)
    if found:
        raise PreflightError(found)


# --- values the box already has ------------------------------------------------------------------

# Settings that reach the box and that the box cannot keep on its own: a deploy without them would
# rewrite the box's files without them. Only their names are recorded in the state, never values.
CARRIED: tuple[tuple[str, Callable[[Settings], bool], Callable[[Settings], bool]], ...] = (
    # (key, its feature is deployed now, the value is given now)
    ("supabase.jwt_secret", Settings.sync_enabled, lambda s: s.supabase.jwt_secret is not None),
    ("supabase.jwks_url", Settings.sync_enabled, lambda s: bool(s.supabase.jwks_url)),
    ("backup.s3_key", lambda s: s.backup.enabled, lambda s: s.backup.s3_key is not None),
    ("backup.s3_key_secret", lambda s: s.backup.enabled, lambda s: s.backup.s3_key_secret is not None),
)


def carried_keys(settings: Settings) -> list[str]:
    """The names of the carried settings this configuration deploys (recorded after a deploy)."""
    return [key for key, enabled, given in CARRIED if enabled(settings) and given(settings)]


def check_drops(settings: Settings, deployed: list[str], stack: str, allowed: frozenset[str] = frozenset()) -> None:
    """Refuse (exit 2) a deploy that would replace a value the box has with nothing, unless ``allowed``.

    A key counts only while its feature is deployed: turning sync or backups off leaves their files alone."""
    now = set(carried_keys(settings))
    known = {key for key, enabled, _ in CARRIED if enabled(settings)}
    every = {key for key, _, _ in CARRIED}
    unknown = sorted(allowed - every)
    if unknown:
        raise ConfigError(f"--drop {unknown[0]}: not a setting postgressor carries to the box; use one of "
                          f"{', '.join(sorted(every))}")  # fmt: skip
    missing = [key for key in deployed if key in known and key not in now and key not in allowed]
    if missing:
        raise PreflightError([
            f"{key} is deployed on stack '{stack}' but missing here, so this deploy would remove it from the box: "
            f"set {env_name(key)} in this shell (or {key} in the config); to remove it on purpose run "
            f"'postgressor deploy --drop {key}'"
            for key in missing
        ])  # fmt: skip
