"""``postgressor gateway serve``: run the auth gateway in front of Electric on this machine."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from postgressor.box.gateway_settings import resolve
from postgressor.cli.common import console, global_options
from postgressor.config import load_settings
from postgressor.gateway.app import serve as serve_gateway
from postgressor.masking import mask_url

gateway_app = typer.Typer(
    help="The auth gateway that verifies Supabase tokens in front of Electric.", no_args_is_help=True
)


@gateway_app.command("serve")
def serve(
    ctx: typer.Context,
    upstream: Annotated[str | None, typer.Option(help="Electric's base URL.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config file.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default 3001).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
) -> None:
    """Serve /v1/shape/<table> for the tables in [[sync.tables]].

    The Electric secret comes from the ELECTRIC_SECRET environment variable (or [gateway]
    electric_secret), never from the command line.
    """
    settings = load_settings(config or global_options(ctx).config)
    resolved = resolve(settings, upstream=upstream, host=host, port=port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    console.print(
        f"gateway on http://{resolved.host}:{resolved.port} -> {mask_url(resolved.upstream)} "
        f"({len(resolved.tables)} table(s)); Ctrl-C stops it",
        markup=False,
    )
    try:
        asyncio.run(serve_gateway(resolved))
    except KeyboardInterrupt:
        console.print("gateway stopped", markup=False)
