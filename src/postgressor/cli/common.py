"""What every CLI verb shares: the global options, settings loading, output, and error rendering."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from postgressor.config import Settings, load_settings
from postgressor.errors import UsageError
from postgressor.state import check_stack_name

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@dataclass
class GlobalOptions:
    config: Path | None
    stack: str
    json: bool


def global_options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    assert isinstance(obj, GlobalOptions)
    return obj


def settings_for(ctx: typer.Context, **overrides: Any) -> Settings:
    opts = global_options(ctx)
    return load_settings(opts.config, **overrides)


def stack_name(ctx: typer.Context, override: str | None = None) -> str:
    return check_stack_name(override or global_options(ctx).stack)


def interactive() -> bool:
    """Never wait on stdin in CI or when stdin is not a terminal."""
    return sys.stdin.isatty() and os.environ.get("CI", "").lower() not in ("true", "1", "yes")


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not interactive():
        raise UsageError(f"{question.rstrip('?')} needs confirmation; pass --yes (no terminal to ask on)")
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
