"""What every CLI verb shares: the global options, settings loading, output, and error rendering."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions

from postgressor.config import Settings, load_settings
from postgressor.errors import UsageError
from postgressor.state import check_stack_name

PIPE_WIDTH = 4096  # columns assumed for pipes and CI logs: long enough that no value wraps or is cut


class OutputConsole(Console):
    """A rich console that, writing to a pipe or file, neither wraps lines nor cuts table cells.

    A terminal keeps its own width; so does an explicit COLUMNS. Elsewhere rich would assume 80 columns.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = OutputConsole(highlight=False)
err_console = OutputConsole(stderr=True, highlight=False)


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
        raise UsageError(f"confirmation needed: {question} (no terminal to ask on; pass --yes to confirm)")
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
