"""The box layout is defined once: every user of a path, port or the psql command takes it from box.layout."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from postgressor.box import layout
from postgressor.box.facts import PostgresScalar
from postgressor.box.gateway_settings import box_gateway_toml
from postgressor.box.spec import Distro, box_spec
from postgressor.checks.stack_tokens import ELECTRIC_HEALTH_CMD
from postgressor.config import GatewayConfig, load_settings

SRC = Path(layout.__file__).resolve().parents[1]
SYNC = {"sync": {"tables": [{"name": "todos", "owner_column": "user_id"}]},
        "supabase": {"jwt_secret": "x" * 32, "issuer": "https://ref.supabase.co/auth/v1"}}  # fmt: skip


def test_psql_quotes_its_arguments_and_reads_stdin_without_sql() -> None:
    command = layout.psql("SELECT 'a b'; DROP", database="my db")
    argv = shlex.split(command.split("&&", 1)[1])
    assert argv[:4] == ["runuser", "-u", "postgres", "--"]
    assert argv[argv.index("-d") + 1] == "my db"
    assert argv[argv.index("-c") + 1] == "SELECT 'a b'; DROP"
    assert "ON_ERROR_STOP=1" in argv
    assert "-c" not in shlex.split(layout.psql().split("&&", 1)[1])


def test_postgres_fact_uses_the_one_psql_builder() -> None:
    assert layout.psql("SELECT 1", "app") in PostgresScalar().command("SELECT 1", "app")


def test_electric_port_reaches_every_user_from_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(provider="local", **SYNC)
    spec = box_spec(settings, Distro("debian", 12, "bookworm"))
    assert spec.sync is not None and spec.sync.electric_port == layout.ELECTRIC_PORT
    assert f"127.0.0.1:{layout.ELECTRIC_PORT}" in box_gateway_toml(settings)
    assert GatewayConfig().upstream.endswith(f":{layout.ELECTRIC_PORT}")
    assert layout.electric_health_url() in ELECTRIC_HEALTH_CMD


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        (r"/etc/postgressor/secrets", "the secrets directory"),
        (r"ls /etc/postgresql", "the PostgreSQL version lookup"),
        (r"runuser -u postgres -- psql", "the psql command"),
        (r"127\.0\.0\.1:3000|\b3000\b", "Electric's port"),
        (r"pgbackrest-(backup@|full\.timer|diff\.timer)", "the backup units"),
    ],
)
def test_no_second_definition_in_the_package(pattern: str, what: str) -> None:
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.name != "layout.py" and "gateway" not in path.relative_to(SRC).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not found, f"{what} is spelled out outside box/layout.py: {found}"
