"""`postgressor servers`: a provider's postgressor-labelled servers, found without the local state."""

from __future__ import annotations

import typer
from rich.table import Table

from postgressor.cli.common import confirm, console, emit_json, global_options, say, settings_for, stack_name
from postgressor.providers.labelled import destroy_labelled, list_servers

servers_app = typer.Typer(help="Servers labelled by postgressor at a cloud provider (works without the state).",
                          no_args_is_help=True)  # fmt: skip

_PROVIDER = typer.Option(None, "--provider", "-p", help="hetzner, oracle or ovh (default: the configured one).")
_REGION = typer.Option(None, "--region", "-r", help="Oracle and OVH: the region to look in.")


@servers_app.command("list")
def list_(ctx: typer.Context, provider: str | None = _PROVIDER, region: str | None = _REGION) -> None:
    """List this project's servers by their labels: id, stack, region, status, created."""
    servers = list_servers(settings_for(ctx, provider=provider, region=region), say)
    if global_options(ctx).json:
        emit_json({"servers": [s.as_dict() for s in servers]})
        return
    if not servers:
        console.print("no labelled servers of this project", markup=False)
        return
    table = Table("id", "stack", "region", "status", "created", "name", box=None)
    for s in servers:
        table.add_row(s.id, s.stack, s.region, s.status, s.created, s.name)
    console.print(table)


@servers_app.command("destroy")
def destroy(
    ctx: typer.Context,
    provider: str | None = _PROVIDER,
    region: str | None = _REGION,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required without a terminal)."),
) -> None:
    """Delete the stack's labelled server and its other labelled resources, when no state records them."""
    name = stack_name(ctx)
    settings = settings_for(ctx, provider=provider, region=region)
    confirm(f"Delete every {settings.provider} resource labelled for stack '{name}'?", yes)
    removed = destroy_labelled(settings, name, say)
    if global_options(ctx).json:
        emit_json({"ok": True, "stack": name, "removed": removed})
        return
    for line in removed:
        console.print(f"- {line}", markup=False)
    console.print(f"{len(removed)} labelled resource(s) of stack '{name}' deleted", markup=False)
