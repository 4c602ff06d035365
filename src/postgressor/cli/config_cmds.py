"""`postgressor init` and `postgressor config check`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from postgressor.cli.common import console, emit_json, global_options, settings_for
from postgressor.config import DEFAULT_CONFIG_FILE, masked_dump
from postgressor.errors import UsageError
from postgressor.preflight import check as preflight
from postgressor.vault.references import resolve_vault_references, vault_references

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


def starter_config() -> str:
    return resources.files("postgressor.cli").joinpath("postgressor.toml").read_text()


def init(
    ctx: typer.Context,
    path: Path = typer.Option(DEFAULT_CONFIG_FILE, "--path", "-o", help="Where to write the starter file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented starter postgressor.toml."""
    target = global_options(ctx).config or path
    if target.exists() and not force:
        raise UsageError(f"{target} exists already; pass --force to overwrite it")
    target.write_text(starter_config())
    console.print(f"wrote {target}; edit it, then run 'postgressor config check'")


@config_app.command("check")
def check(ctx: typer.Context) -> None:
    """Validate the configuration (and what each enabled feature needs), then print it, secrets masked.

    Secrets written as vault:NAME are read from Supabase Vault (POSTGRESSOR_VAULT_URL) and checked too."""
    loaded = settings_for(ctx)
    from_vault = vault_references(loaded)  # names only, before they are read
    settings = resolve_vault_references(loaded)
    preflight(settings)
    data = masked_dump(settings)
    if global_options(ctx).json:
        emit_json({"ok": True, "config": data, "vault": from_vault})
        return
    console.print("[green]configuration is valid[/]")
    _print_tree(data, "")
    for key, name in from_vault.items():
        console.print(f"{key}: read from Supabase Vault secret {name!r}", markup=False)


def _print_tree(data: dict, prefix: str) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _print_tree(value, f"{prefix}{key}.")
        else:
            console.print(f"{prefix}{key} = {value!r}", markup=False)
