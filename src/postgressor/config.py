"""The configuration model: postgressor.toml, POSTGRESSOR_* environment variables and .env."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from postgressor.box.layout import ELECTRIC_PORT
from postgressor.errors import ConfigError
from postgressor.vault.references import bind_references, is_reference, unread

DEFAULT_CONFIG_FILE = Path("postgressor.toml")
DOTENV_FILE = Path(".env")
ENV_PREFIX = "POSTGRESSOR_"
# POSTGRESSOR_* variables that are not settings: read by the CLI or a command, so never "unknown".
OTHER_VARIABLES = frozenset({
    "POSTGRESSOR_STACK", "POSTGRESSOR_DEBUG", "POSTGRESSOR_DATABASE_URL", "POSTGRESSOR_TOKEN",
    "POSTGRESSOR_CACHE_DIR", "POSTGRESSOR_EXPORT_FROM", "POSTGRESSOR_MOVE_FROM", "POSTGRESSOR_VAULT_URL",
})  # fmt: skip
PROVIDERS = ("local", "ssh", "hetzner", "oracle", "ovh")
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

Port = Annotated[int, Field(ge=1, le=65535)]  # a TCP port that lands in a firewall rule or a forward

_toml_path: ContextVar[Path | None] = ContextVar("postgressor_toml_path", default=None)


def _checked(problem_of: Callable[[str], str], value: str) -> str:
    """``value`` when ``problem_of`` finds nothing wrong with it (an empty value is not checked), else ValueError."""
    problem = problem_of(value) if value else ""
    if problem:
        raise ValueError(problem)
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SSHConfig(Section):
    host: str = ""
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_path: Path = Path("~/.ssh/id_ed25519")


class LocalConfig(Section):
    memory_mb: int = Field(2048, ge=512)
    cpus: int = Field(2, ge=1, le=64)
    disk_gb: int = Field(16, ge=4)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    boot_timeout: int = Field(600, ge=30, description="seconds to wait for SSH after boot")
    forward_ports: list[Port] = Field([], description="more guest TCP ports to forward to 127.0.0.1")
    image: Path | None = Field(
        None, description="a Debian/Ubuntu cloud image (qcow2 or raw) booted with a NoCloud seed instead of "
        "the debootstrap image; needs no root",
    )  # fmt: skip


class PostgresConfig(Section):
    source: Literal["pgdg", "distro"] | None = None  # None: the distro's, PGDG for a version it lacks (box/spec.py)
    version: int | None = Field(None, ge=13, le=18)
    database: str = "app"
    owner: str = "app"
    extensions: list[str] = []
    private_address: str = ""
    max_connections: int | None = Field(None, ge=20, le=5000)
    profile: Literal["web", "oltp"] = "web"
    storage: Literal["ssd", "nvme", "hdd"] = "ssd"

    @field_validator("database", "owner")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError("use lower-case letters, digits and underscores, starting with a letter")
        if value in ("postgres", "electric", "template0", "template1"):
            raise ValueError(f"'{value}' is reserved by postgressor; pick another name")
        return value


class HardeningConfig(Section):
    swap_below_mb: int = Field(4096, ge=0, description="add a swap file when RAM is below this")
    swap_mb: int = Field(2048, ge=256)
    extra_ports: list[Port] = Field([], description="more TCP ports the firewall opens (1-65535)")


class SupabaseConfig(Section):
    jwt_secret: SecretStr | None = None
    jwks_url: str = ""
    issuer: str = ""
    audience: str = "authenticated"


class SyncTable(Section):
    name: str
    owner_column: str = "user_id"
    columns: list[str] = []
    where: str = ""  # one SQL expression; the gateway sends "<owner> = $1 AND (<where>)"

    @field_validator("where")
    @classmethod
    def _one_expression(cls, value: str) -> str:
        from postgressor.gateway.params import where_problem

        if value.strip():
            problem = where_problem(value)
            if problem:
                raise ValueError(f"{value!r} must be one SQL expression: {problem}")
        return value

    @model_validator(mode="after")
    def _pinnable(self) -> SyncTable:
        """The gateway's own rule for the entry (names, owner column among the columns), checked at load."""
        from postgressor.gateway.params import TableRule

        TableRule(self.name, self.owner_column, tuple(self.columns), self.where)  # ValueError: one line
        return self


class SyncConfig(Section):
    tables: list[SyncTable] = []

    @model_validator(mode="after")
    def _each_table_once(self) -> SyncConfig:
        names = [table.name for table in self.tables]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"[[sync.tables]] lists {', '.join(map(repr, twice))} more than once; keep one entry each")
        return self


class MigrationsConfig(Section):
    directory: Path = Path("migrations")


class GatewayConfig(Section):
    """The auth gateway in front of Electric (postgressor gateway serve)."""

    upstream: str = f"http://127.0.0.1:{ELECTRIC_PORT}"
    listen: str = "127.0.0.1"
    port: int = Field(3001, ge=1, le=65535)
    electric_secret: SecretStr | None = None
    cors_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to call the gateway, e.g. https://app.example.com"
    )
    shared_cache: bool = Field(
        False, description="keep Electric's public cache-control (only behind a cache that keys on Authorization)"
    )
    max_requests_per_user: int = Field(64, ge=1, description="concurrent requests one user (token sub) may hold")
    upstream_connect_timeout: float = Field(5.0, gt=0, le=60, description="seconds to connect to Electric")
    upstream_read_timeout: float = Field(
        45.0, ge=25, le=300, description="seconds without a byte from Electric (above its 20 s long-poll)"
    )

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        from postgressor.gateway.params import origin_problem

        for origin in value:
            problem = origin_problem(origin)
            if problem:
                raise ValueError(problem)
        return value


class ElectricConfig(Section):
    """ElectricSQL 1.x as a systemd-managed container, reachable only through the gateway."""

    enabled: bool | None = None  # default: on when [[sync.tables]] lists a table
    version: str = "1.7.12"
    image: str = ""  # default electricsql/electric:<version>; a mirror when Docker Hub is unreachable
    image_archive: Path | None = None  # a `docker save` tarball loaded instead of pulling (air-gapped boxes)
    docker_bridge: str = "172.17.0.1/16"  # Docker's bridge; PostgreSQL also listens on its address for Electric
    health_timeout: int = Field(300, ge=10, description="seconds to wait for /v1/health = 200")
    slot_warn_share: float = Field(
        0.8, gt=0, le=1, description="status warns when a slot retains this share of max_slot_wal_keep_size"
    )

    @field_validator("version")
    @classmethod
    def _safe_version(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError("use a release number like 1.7.12")
        if tuple(int(p) for p in parts) < (1, 7, 12):
            raise ValueError("Electric before 1.7.12 lets requests skip the secret check; use 1.7.12 or later")
        return value

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        from postgressor.box import grammar

        return _checked(grammar.image_problem, value)

    def image_ref(self) -> str:
        return self.image or f"electricsql/electric:{self.version}"


class HttpsConfig(Section):
    """Caddy in front of the gateway: a domain gets a public certificate, no domain gets `tls internal`."""

    domain: str = ""
    email: str = ""  # ACME account email (optional)

    @field_validator("domain")
    @classmethod
    def _hostname(cls, value: str) -> str:
        from postgressor.box import grammar

        return _checked(grammar.hostname_problem, value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        from postgressor.box import grammar

        return _checked(grammar.email_problem, value)


MIN_CIPHER_PASS = 20  # characters; `openssl rand -base64 48` gives 64, a box-generated passphrase has 40
MIN_JWT_SECRET = 32  # characters: Supabase refuses a shorter JWT secret
MAKE_CIPHER_PASS = "openssl rand -base64 48"  # noqa: S105 (a command the refusals suggest, not a secret)


ONE_CONF_LINE = ("may hold only printable ASCII without spaces (it is one line of pgbackrest.conf); check it was "
                 "pasted whole")  # fmt: skip


def cipher_pass_problem(value: str) -> str:
    """Why ``value`` cannot be a repository passphrase ('' when it can); never quotes the value."""
    if not value:
        return f"empty; make one with '{MAKE_CIPHER_PASS}'"
    if not re.fullmatch(r"[!-~]+", value):
        return ONE_CONF_LINE
    if len(value) < MIN_CIPHER_PASS:
        return (f"{len(value)} characters, fewer than {MIN_CIPHER_PASS}; make a strong one with "
                f"'{MAKE_CIPHER_PASS}'")  # fmt: skip
    return ""


def secret_problem(key: str, value: str) -> str:
    """Why ``value`` cannot be the secret setting ``key`` (dotted, e.g. backup.cipher_pass), '' when it can.

    The format checks a secret gets at load, for a value that arrives later (read from Vault); never quotes it."""
    if key in ("backup.s3_key", "backup.s3_key_secret") and not re.fullmatch(r"[!-~]+", value):
        return ONE_CONF_LINE
    if key == "backup.cipher_pass":
        return cipher_pass_problem(value)
    if key == "supabase.jwt_secret" and len(value) < MIN_JWT_SECRET:
        return (f"{len(value)} characters, Supabase's minimum is {MIN_JWT_SECRET}; store the project's whole JWT "
                "secret (Dashboard → Project Settings → JWT Keys) there")  # fmt: skip
    return ""


def _read_secret_file(path: Path, name: str) -> str:
    """The first line of the secret file ``path`` (``~`` expanded); ValueError (one line) when unreadable."""
    full = path.expanduser()
    try:
        text = full.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{name}: {full} not found; point it at the file holding the passphrase") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise ValueError(f"{name}: cannot read {full} ({reason}); fix its permissions or point it elsewhere") from None
    if full.stat().st_mode & 0o077:  # as ssh refuses a private key others can read
        raise ValueError(f"{name}: {full} can be read by other users; run 'chmod 600 {full}'")
    lines = text.splitlines()
    if len(lines) > 1 and any(line.strip() for line in lines[1:]):
        raise ValueError(f"{name}: {full} holds more than one line; keep only the passphrase in it")
    return lines[0].strip() if lines else ""


SCHEDULE = re.compile(r"^[A-Za-z0-9*.,:/~ -]{1,80}$")  # a systemd OnCalendar expression, one line


# backup.s3_path and `up --restore-from`: one spelling per path (no '//', '.', '..' or trailing '/'), so two
# paths are the same exactly when their text is.
REPO_PATH = re.compile(r"/\Z|/(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+)*\Z")
REPO_PATH_RULE = ("use an absolute path of letters, digits, '.', '_' and '-' between single '/', with no '.' or "
                  "'..' part and no trailing '/', like /pgbackrest (or / for the bucket's root)")


class BackupConfig(Section):
    """pgBackRest: WAL archiving and scheduled backups, to local disk or S3-compatible object storage."""

    enabled: bool = True
    retention_full: int = Field(2, ge=1, le=100, description="full backups kept (older ones and their WAL expire)")
    retention_diff: int = Field(7, ge=1, le=365, description="differential backups kept")
    full_schedule: str = "Sun *-*-* 01:30:00"  # systemd OnCalendar
    diff_schedule: str = "Mon..Sat *-*-* 01:30:00"
    archive_timeout: int = Field(300, ge=0, le=86400, description="force a WAL switch after this many seconds")
    archive_queue_max_mb: int | None = Field(
        None, ge=16, description="WAL waiting to be archived beyond this is dropped (default: 15% of the disk)"
    )
    s3_endpoint: str = ""  # e.g. fsn1.your-objectstorage.com; empty: repository on the box's disk
    s3_region: str = ""
    s3_bucket: str = ""
    s3_path: str = "/pgbackrest"  # the repository's prefix inside the bucket
    s3_key: SecretStr | None = None  # prefer POSTGRESSOR_BACKUP__S3_KEY
    s3_key_secret: SecretStr | None = None  # prefer POSTGRESSOR_BACKUP__S3_KEY_SECRET
    s3_uri_style: Literal["host", "path"] = "host"
    s3_port: int = Field(443, ge=1, le=65535)
    s3_verify_tls: bool = True
    # The repository's encryption passphrase, held by the user (required with S3: a repository must be readable
    # without the box). Prefer POSTGRESSOR_BACKUP__CIPHER_PASS; cipher_pass_file names a file holding it instead.
    # Neither given (local repository only): the box generates one and keeps it.
    cipher_pass: SecretStr | None = None
    cipher_pass_file: Path | None = None

    @field_validator("full_schedule", "diff_schedule")
    @classmethod
    def _calendar(cls, value: str) -> str:
        if not SCHEDULE.match(value):
            raise ValueError("use a systemd OnCalendar expression like 'Sun *-*-* 01:30:00'")
        return value

    @field_validator("s3_path")
    @classmethod
    def _repo_path(cls, value: str) -> str:
        if not REPO_PATH.match(value):
            raise ValueError(REPO_PATH_RULE)
        return value

    @model_validator(mode="after")
    def _s3_complete(self) -> BackupConfig:
        given = {k: v for k, v in self._s3_fields().items() if v}
        if given and len(given) < len(self._s3_fields()):
            missing = ", ".join(f"s3_{k}" for k in self._s3_fields() if k not in given)
            raise ValueError(f"S3 repository needs {missing} too (or remove the s3_* settings for a local one)")
        for name in ("s3_endpoint", "s3_region", "s3_bucket"):
            if not re.match(r"^[A-Za-z0-9._:-]*$", getattr(self, name)):
                raise ValueError(f"{name} may hold only letters, digits, '.', '_', ':' and '-'")
        for name in ("s3_key", "s3_key_secret"):  # each lands as one line of pgbackrest.conf
            secret = getattr(self, name)
            if secret is not None and not is_reference(secret):  # a vault: value is checked once read
                problem = secret_problem(f"backup.{name}", secret.get_secret_value())
                if problem:
                    raise ValueError(f"{name} {problem}")
        return self

    @model_validator(mode="after")
    def _cipher_pass_usable(self) -> BackupConfig:
        """Read ``cipher_pass_file`` into ``cipher_pass``; the passphrase is one line of pgbackrest.conf."""
        if self.cipher_pass_file is not None:
            if self.cipher_pass is not None:
                raise ValueError("cipher_pass and cipher_pass_file are both set; keep one of them")
            self.cipher_pass = SecretStr(_read_secret_file(self.cipher_pass_file, "cipher_pass_file"))
        if self.cipher_pass is not None and not is_reference(self.cipher_pass):  # a vault: value: once read
            problem = cipher_pass_problem(self.cipher_pass.get_secret_value())
            if problem:
                raise ValueError(f"cipher_pass: {problem}")
        return self

    def _s3_fields(self) -> dict[str, object]:
        return {"endpoint": self.s3_endpoint, "region": self.s3_region, "bucket": self.s3_bucket,
                "key": self.s3_key, "key_secret": self.s3_key_secret}  # fmt: skip

    @property
    def s3(self) -> bool:
        return bool(self.s3_endpoint)


class HetznerConfig(Section):
    """Hetzner Cloud. The token comes from here, POSTGRESSOR_HETZNER__TOKEN or HCLOUD_TOKEN."""

    token: SecretStr | None = None
    api_endpoint: str = "https://api.hetzner.cloud/v1"
    image: str = "debian-13"
    ssh_timeout: int = Field(600, ge=1, description="seconds to wait for SSH on a new server")


class OracleConfig(Section):
    """Oracle Cloud (OCI). Credentials come from the OCI config file (~/.oci/config or OCI_CONFIG_FILE)."""

    config_file: Path | None = None
    profile: str = ""  # empty: OCI_CLI_PROFILE, else DEFAULT
    pass_phrase: SecretStr | None = None  # of the API signing key, when it has one
    compartment_id: str = ""  # empty: the tenancy (root compartment)
    ocpus: float = Field(2, gt=0, le=80)  # flexible shapes; 2 OCPU / 12 GB is the A1 Always Free limit
    memory_gb: float = Field(12, gt=0, le=1024)
    boot_volume_gb: int = Field(50, ge=50, le=32768)
    image_id: str = ""  # empty: the newest Canonical Ubuntu 24.04 image for the shape
    endpoint: str = ""  # one URL for all OCI services (tests); empty: derived from the region
    capacity_rounds: int = Field(3, ge=1, le=50, description="passes over all ADs on 'Out of host capacity'")
    ssh_timeout: int = Field(600, ge=1)


class OVHConfig(Section):
    """OVHcloud Public Cloud. Keys come from here, OVH_* environment variables or ovh.conf."""

    endpoint: str = ""  # ovh-eu, ovh-ca, ovh-us, or an API URL; empty: OVH_ENDPOINT / ovh.conf
    application_key: SecretStr | None = None
    application_secret: SecretStr | None = None
    consumer_key: SecretStr | None = None
    project_id: str = ""  # the Public Cloud project (serviceName); empty: OVH_CLOUD_PROJECT_SERVICE
    image: str = "Debian 13"  # OVHcloud's name for its Debian 13 image (ovh/public-cloud-roadmap#1199)
    ssh_timeout: int = Field(600, ge=1)


class Settings(BaseSettings):
    """Everything postgressor reads. CLI flags override the file and environment."""

    model_config = SettingsConfigDict(
        env_prefix="POSTGRESSOR_",
        env_nested_delimiter="__",
        env_file=DOTENV_FILE,
        extra="forbid",
    )

    provider: Literal["local", "ssh", "hetzner", "oracle", "ovh"] = "local"
    region: str = ""
    project: str = Field("", max_length=63, description="names this project's servers at the cloud provider "
                         "(labels/tags), so they can be found without the state; default: the name of the "
                         "directory holding postgressor.toml (else the current one)")
    size: str = ""
    state_dir: Path = Path(".postgressor")
    ssh: SSHConfig = SSHConfig()
    local: LocalConfig = LocalConfig()
    postgres: PostgresConfig = PostgresConfig()
    hardening: HardeningConfig = HardeningConfig()
    supabase: SupabaseConfig = SupabaseConfig()
    sync: SyncConfig = SyncConfig()
    gateway: GatewayConfig = GatewayConfig()
    electric: ElectricConfig = ElectricConfig()
    https: HttpsConfig = HttpsConfig()
    backup: BackupConfig = BackupConfig()
    migrations: MigrationsConfig = MigrationsConfig()
    hetzner: HetznerConfig = HetznerConfig()
    oracle: OracleConfig = OracleConfig()
    ovh: OVHConfig = OVHConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _toml_path.get()
        dotenv = PrefixedDotEnvSource(settings_cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv]
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="after")
    def _provider_needs(self) -> Settings:
        if self.provider == "ssh" and not self.ssh.host:
            raise ValueError("provider 'ssh' needs a host: pass --host or set [ssh] host")
        if self.region and self.provider_configured() and self.provider in ("local", "ssh"):
            raise ValueError(f"provider '{self.provider}' has no regions; drop region '{self.region}' (--region "
                             "picks a cloud provider only when none is configured)")  # fmt: skip
        return self

    def provider_configured(self) -> bool:
        """True when a flag, the environment, .env or postgressor.toml set ``provider`` (not the default)."""
        return "provider" in self.model_fields_set

    def sync_enabled(self) -> bool:
        """Electric, the gateway and Caddy are deployed when tables are synced (or when asked)."""
        if self.electric.enabled is not None:
            return self.electric.enabled
        return bool(self.sync.tables)


class PrefixedDotEnvSource(DotEnvSettingsSource):
    """.env holds the application's variables too (DATABASE_URL, ...): only POSTGRESSOR_* keys are ours."""

    def _read_env_files(self) -> dict[str, str | None]:
        return {k: v for k, v in super()._read_env_files().items()
                if k.upper().startswith(ENV_PREFIX) and k.upper() not in OTHER_VARIABLES}  # fmt: skip


def _dotenv_values() -> dict[str, str]:
    """The POSTGRESSOR_* entries of ./.env (python-dotenv, as pydantic-settings reads it)."""
    from dotenv import dotenv_values

    if not DOTENV_FILE.is_file():
        return {}
    return {k.upper(): v for k, v in dotenv_values(DOTENV_FILE).items()
            if v is not None and k.upper().startswith(ENV_PREFIX)}  # fmt: skip


def _our_variables() -> list[tuple[str, str, str]]:
    """(where, NAME, value) of every POSTGRESSOR_* variable: the environment, then .env."""
    env = [("environment", k.upper(), v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)]
    return env + [(".env", k, v) for k, v in _dotenv_values().items()]


def check_variables() -> None:
    """Refuse a POSTGRESSOR_* variable that names no setting (a typo would otherwise be ignored)."""
    for where, name, _ in _our_variables():
        if name in OTHER_VARIABLES:
            continue
        top = name.removeprefix(ENV_PREFIX).split("__", 1)[0].lower()
        if top in Settings.model_fields:
            continue
        names = [f"{ENV_PREFIX}{f.upper()}" for f in Settings.model_fields] + sorted(OTHER_VARIABLES)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}?" if close else "remove it or see 'postgressor config check'"
        raise ConfigError(f"{where}: unknown variable {name}; {hint}")


def _bad_variable(err: SettingsError) -> str:
    """The variable(s) behind pydantic-settings' 'error parsing value for field "x"' (values not shown)."""
    match = re.search(r'field "([^"]+)"', str(err))
    field = match.group(1).upper() if match else ""
    suspects = [(where, name, value) for where, name, value in _our_variables()
                if name == f"{ENV_PREFIX}{field}" or name.startswith(f"{ENV_PREFIX}{field}__")]
    broken = [(where, name) for where, name, value in suspects if not _is_json(value)]
    named = ", ".join(f"{name} ({where})" for where, name in (broken or [(w, n) for w, n, _ in suspects]))
    return (f"{named or f'{ENV_PREFIX}{field}'}: not valid JSON for setting '{field.lower()}'; "
            "write it as JSON: a list in [...], an object in {...}, strings in double quotes")


def _is_json(value: str) -> bool:
    if not value.lstrip().startswith(("[", "{")):
        return True  # a scalar: pydantic-settings takes it as is
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def describe_validation_error(err: ValidationError, source: str) -> str:
    """One line for the first problem in ``err``: where, what, and how to fix it."""
    first = err.errors()[0]
    loc = tuple(first.get("loc", ()))
    where = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        names = _field_names(Settings, loc)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(names)}"
        return f"{source}: unknown setting '{where}'; {hint}{more}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "literal_error" and loc == ("provider",):
        message = f"unknown provider; choose one of {', '.join(PROVIDERS)}"
    return f"{source}: {message}{more}" if not loc else f"{source}: {where}: {message}{more}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config_file`` (or ./postgressor.toml when present), env, .env and overrides."""
    explicit = config_file is not None
    path = config_file if explicit else DEFAULT_CONFIG_FILE
    assert path is not None
    if explicit and not path.is_file():
        raise ConfigError(f"config file {path} not found; create one with 'postgressor init' or fix --config")
    toml = path if path.is_file() else None
    clean = {k: v for k, v in overrides.items() if v is not None}
    check_variables()
    token = _toml_path.set(toml)
    try:
        settings = Settings(**clean)
    except SettingsError as err:
        raise ConfigError(_bad_variable(err)) from None
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, str(toml or "configuration"))) from None
    except ValueError as err:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"{path}: cannot parse: {err}; check the TOML syntax") from None
    finally:
        _toml_path.reset(token)
    if not settings.project:  # the project's identity on cloud labels: the config file's directory
        settings = settings.model_copy(update={"project": (toml or Path("postgressor.toml")).resolve().parent.name})
    return bind_references(settings)  # vault:NAME values: read from Supabase Vault when first needed


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret replaced by a mask (credentials in URLs too)."""
    from postgressor.masking import mask_urls_in

    masked = mask_urls_in(unread(settings).model_dump(mode="json"))  # a vault: value not read yet stays unread
    assert isinstance(masked, dict)
    return masked
