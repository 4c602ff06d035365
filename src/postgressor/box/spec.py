"""What the deploys need to know, derived from settings and the box's OS: validated before any change."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from postgressor.box.gateway_settings import box_gateway_toml
from postgressor.box.layout import ELECTRIC_PORT, PGBACKREST_LOCAL_REPO, PGBACKREST_STANZA, postgres_conf_dir
from postgressor.box.operations import digest
from postgressor.config import Settings
from postgressor.errors import UsageError

PGDG_VERSION = 17  # PGDG's PostgreSQL when postgres.version is unset


@dataclass(frozen=True)
class Release:
    codename: str
    postgres: int  # the PostgreSQL major version its own archive ships
    lacks: frozenset[str] = frozenset()  # extensions with no package in its own archive (PGDG has them all)


RELEASES = {
    ("debian", 12): Release("bookworm", 15, frozenset({"vector"})),
    ("debian", 13): Release("trixie", 17),
    ("ubuntu", 22): Release("jammy", 14, frozenset({"vector"})),
    ("ubuntu", 24): Release("noble", 16),
}

# Extensions that need a package; the contrib ones come with the server.
EXTENSION_PACKAGES = {
    "vector": "postgresql-{v}-pgvector",
    "postgis": "postgresql-{v}-postgis-3",
    "pg_cron": "postgresql-{v}-cron",
    "hypopg": "postgresql-{v}-hypopg",
    "pg_repack": "postgresql-{v}-repack",
    "pg_partman": "postgresql-{v}-partman",
}
CONTRIB_EXTENSIONS = frozenset(
    {
        "pg_stat_statements", "pgcrypto", "uuid-ossp", "pg_trgm", "btree_gin", "btree_gist", "hstore",
        "citext", "ltree", "intarray", "tablefunc", "unaccent", "fuzzystrmatch", "postgres_fdw",
        "pg_buffercache", "pgstattuple", "amcheck", "cube", "earthdistance", "tsm_system_rows",
    }
)  # fmt: skip
# Extensions that must be preloaded before CREATE EXTENSION works.
PRELOAD = {"pg_cron": "pg_cron", "pg_stat_statements": "pg_stat_statements"}


@dataclass(frozen=True)
class Distro:
    name: str  # "debian" | "ubuntu"
    major: int
    codename: str

    @property
    def title(self) -> str:
        """"Debian 13", "Ubuntu 24.04" (the supported Ubuntu releases are all .04 LTS ones)."""
        return f"Debian {self.major}" if self.name == "debian" else f"Ubuntu {self.major}.04"

    @property
    def release(self) -> Release | None:
        return RELEASES.get((self.name, self.major))


@dataclass(frozen=True)
class SyncSpec:
    """Electric, the gateway and Caddy: present only when tables are synced."""

    image: str
    image_archive: str  # local path of a `docker save` tarball, or ""
    bridge_ip: str
    bridge_network: str
    health_timeout: int
    gateway_config: str  # the gateway's settings file (holds the HS256 secret when configured: 0600 on the box)
    gateway_port: int
    domain: str
    email: str
    electric_port: int = ELECTRIC_PORT


@dataclass(frozen=True)
class BackupSpec:
    pg_version: int
    retention_full: int
    retention_diff: int
    full_schedule: str
    diff_schedule: str
    archive_timeout: int
    archive_queue_max_mb: int | None = None  # None: ARCHIVE_QUEUE_SHARE of the box's disk, read at deploy time
    s3_endpoint: str = ""  # empty: repository on local disk
    s3_region: str = ""
    s3_bucket: str = ""
    s3_path: str = ""
    s3_uri_style: str = "host"
    s3_port: int = 443
    s3_verify_tls: bool = True
    s3_key: str = ""  # secret values: uploaded to the box only, never in commands or output
    s3_key_secret: str = ""
    cipher_pass: str = ""  # the user-held repository passphrase (secret); empty: the box generates and keeps one
    restore_from: str = ""  # another stack's s3_path to restore from first (`up --restore-from`), once
    restore_target: str = ""  # its recovery target (pg_time); '' for the end of its archived WAL

    @property
    def data_dir(self) -> str:
        return f"/var/lib/postgresql/{self.pg_version}/main"

    @property
    def repo_id(self) -> str:
        """Where the repository is (no secrets): a changed repository gets its own stanza and first backup."""
        where = f"s3://{self.s3_endpoint}/{self.s3_bucket}{self.s3_path}" if self.s3_endpoint else PGBACKREST_LOCAL_REPO
        return digest(where, PGBACKREST_STANZA, str(self.pg_version))

    def __repr__(self) -> str:  # keep the S3 keys and the passphrase out of any log or traceback
        return f"BackupSpec(pg_version={self.pg_version}, repo={'s3' if self.s3_endpoint else 'local'})"


def backup_spec(settings: Settings, pg_version: int) -> BackupSpec:
    cfg = settings.backup
    common = dict(
        pg_version=pg_version, retention_full=cfg.retention_full, retention_diff=cfg.retention_diff,
        full_schedule=cfg.full_schedule, diff_schedule=cfg.diff_schedule, archive_timeout=cfg.archive_timeout,
        archive_queue_max_mb=cfg.archive_queue_max_mb,
        cipher_pass=cfg.cipher_pass.get_secret_value() if cfg.cipher_pass is not None else "",
    )  # fmt: skip
    if not cfg.s3:
        return BackupSpec(**common)  # type: ignore[arg-type]
    assert cfg.s3_key is not None and cfg.s3_key_secret is not None  # checked by BackupConfig
    return BackupSpec(
        **common,  # type: ignore[arg-type]
        s3_endpoint=cfg.s3_endpoint, s3_region=cfg.s3_region, s3_bucket=cfg.s3_bucket, s3_path=cfg.s3_path,
        s3_uri_style=cfg.s3_uri_style, s3_port=cfg.s3_port, s3_verify_tls=cfg.s3_verify_tls,
        s3_key=cfg.s3_key.get_secret_value(), s3_key_secret=cfg.s3_key_secret.get_secret_value(),
    )  # fmt: skip


@dataclass
class BoxSpec:
    distro: Distro
    source: str
    pg_version: int
    postgres_note: str  # why PGDG, when the default source gave way (PostgresChoice.note)
    database: str
    owner: str
    extensions: list[str]
    packages: list[str]
    listen_addresses: str
    private_network: str
    firewall_ports: list[int]
    swap_below_mb: int
    swap_mb: int
    profile: str
    storage: str
    max_connections: int | None
    preload: list[str] = field(default_factory=list)
    sync: SyncSpec | None = None
    backup: BackupSpec | None = None  # None: backups disabled

    @property
    def conf_dir(self) -> str:
        return postgres_conf_dir(self.pg_version)


def distro_from_fact(fact: dict) -> Distro:
    name = str(fact.get("name") or "").lower()
    meta = fact.get("release_meta") or {}
    codename = str(meta.get("VERSION_CODENAME") or meta.get("CODENAME") or "")
    distro = Distro(name="debian" if "debian" in name else "ubuntu" if "ubuntu" in name else name,
                    major=int(fact.get("major") or 0), codename=codename)  # fmt: skip
    if distro.name not in ("debian", "ubuntu"):
        raise UsageError(
            f"the box runs {fact.get('name') or 'an unknown OS'}; postgressor supports Debian and Ubuntu"
        )
    return distro


def image_distro(image: str) -> Distro | None:
    """The OS an image's name says it holds ("debian-13", "Debian 13", "Canonical Ubuntu 24.04", "Debian bookworm
    (debootstrap)"), None when it does not say."""
    found = re.search(r"(debian|ubuntu)\D{0,2}(\d{1,2})(?!\d)", image, re.IGNORECASE)
    if found is not None:
        name, major = found[1].lower(), int(found[2])
        release = RELEASES.get((name, major))
        return Distro(name, major, release.codename if release else "")
    words = set(re.findall(r"[a-z]+", image.lower()))
    return next((Distro(name, major, r.codename) for (name, major), r in RELEASES.items() if r.codename in words),
                None)  # fmt: skip


@dataclass(frozen=True)
class PostgresChoice:
    source: str  # "distro" | "pgdg"
    version: int
    note: str = ""  # one line when the default source gave way to PGDG


def postgres_choice(settings: Settings, distro: Distro, installed: int | None = None) -> PostgresChoice:
    """Where PostgreSQL comes from: the distro's archive unless the version asked (else the one the box already
    runs, ``installed``) or an extension's package is not in it, then PGDG with a note. ``source = "distro"``
    it cannot serve: UsageError."""
    pg = settings.postgres
    wanted = pg.version or installed
    if pg.source == "pgdg":
        return PostgresChoice("pgdg", wanted or PGDG_VERSION)
    release = distro.release
    missing = sorted(release.lacks & set(pg.extensions)) if release else []
    if release is not None and wanted in (None, release.postgres):
        if not missing or pg.source == "distro":  # the explicit source's missing extension: box_spec says so
            return PostgresChoice("distro", release.postgres)
        names = ", ".join(EXTENSION_PACKAGES[e].format(v=release.postgres) for e in missing)
        return PostgresChoice("pgdg", release.postgres,
                              f"{names} is not in {distro.title}'s archive: PostgreSQL {release.postgres} from PGDG")
    if pg.source == "distro":
        if release is None:
            raise UsageError(f"{distro.title} is not a supported release for postgres.source = 'distro'; use Debian "
                             "12/13 or Ubuntu 22.04/24.04, or set postgres.source = 'pgdg'")  # fmt: skip
        asked = f"postgres.version = {release.postgres} or " if pg.version else ""  # else the box runs `wanted`
        raise UsageError(f"PostgreSQL {wanted} is not in {distro.title}'s archive (it has {release.postgres}); "
                         f"set {asked}postgres.source = 'pgdg'")  # fmt: skip
    version = wanted or PGDG_VERSION
    why = f"is not in {distro.title}'s archive" if release else f"on {distro.title} (a release not known here)"
    return PostgresChoice("pgdg", version, f"PostgreSQL {version} {why}: from PGDG")


def box_spec(settings: Settings, distro: Distro, installed: int | None = None) -> BoxSpec:
    """``installed``: the PostgreSQL major the box runs (the state's record), kept when postgres.version is unset."""
    pg = settings.postgres
    choice = postgres_choice(settings, distro, installed)
    source, version = choice.source, choice.version
    packages = [f"postgresql-{version}", f"postgresql-client-{version}"]
    lacking = distro.release.lacks if source == "distro" and distro.release else frozenset()
    for ext in pg.extensions:
        if ext in CONTRIB_EXTENSIONS:
            continue
        if ext not in EXTENSION_PACKAGES:
            known = ", ".join(sorted([*EXTENSION_PACKAGES, *CONTRIB_EXTENSIONS]))
            raise UsageError(f"unknown extension '{ext}' in postgres.extensions; known: {known}")
        if ext in lacking:
            raise UsageError(
                f"extension '{ext}' has no package in {distro.name} {distro.major}'s own archive; set "
                "postgres.source = 'pgdg' (the PostgreSQL project's repository) or drop it"
            )
        packages.append(EXTENSION_PACKAGES[ext].format(v=version))
    sync = sync_spec(settings) if settings.sync_enabled() else None
    if sync:
        # apparmor: Docker refuses to start containers without apparmor_parser when the kernel enables AppArmor
        packages += ["docker.io", "apparmor", "caddy", "python3-venv", "curl"]
    if settings.backup.enabled:
        packages.append("pgbackrest")  # in the one base transaction: each apt run costs minutes on a slow box
    listen = ["localhost", *([sync.bridge_ip] if sync else [])]
    private_network = ""
    ports = [22, 80, 443, *settings.hardening.extra_ports]
    if pg.private_address:
        try:
            iface = ipaddress.ip_interface(pg.private_address)
        except ValueError:
            raise UsageError(
                f"postgres.private_address '{pg.private_address}' is not an address like 10.0.0.2/24"
            ) from None
        listen.append(str(iface.ip))
        private_network = str(iface.network)
    return BoxSpec(
        distro=distro, source=source, pg_version=version, postgres_note=choice.note, database=pg.database,
        owner=pg.owner, extensions=list(pg.extensions), packages=packages, listen_addresses=",".join(listen),
        private_network=private_network, firewall_ports=sorted(set(ports)),
        swap_below_mb=settings.hardening.swap_below_mb, swap_mb=settings.hardening.swap_mb,
        profile=pg.profile, storage=pg.storage, max_connections=pg.max_connections,
        preload=sorted({PRELOAD[e] for e in pg.extensions if e in PRELOAD}),
        sync=sync, backup=backup_spec(settings, version) if settings.backup.enabled else None,
    )  # fmt: skip


def sync_spec(settings: Settings) -> SyncSpec:
    electric = settings.electric
    try:
        bridge = ipaddress.ip_interface(electric.docker_bridge)
    except ValueError:
        raise UsageError(f"electric.docker_bridge '{electric.docker_bridge}' is not like 172.17.0.1/16") from None
    archive = ""
    if electric.image_archive:
        path = electric.image_archive.expanduser()
        if not path.is_file():
            raise UsageError(f"electric.image_archive {path} not found; point it at a 'docker save' tarball")
        archive = str(path)
    if not settings.sync.tables:
        raise UsageError("electric is enabled but [[sync.tables]] lists no table; add one or set electric.enabled")
    return SyncSpec(
        image=electric.image_ref(), image_archive=archive, bridge_ip=str(bridge.ip),
        bridge_network=str(bridge.network), health_timeout=electric.health_timeout,
        gateway_config=box_gateway_toml(settings), gateway_port=settings.gateway.port,
        domain=settings.https.domain, email=settings.https.email,
    )  # fmt: skip
