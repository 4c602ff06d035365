"""What every CLI verb shares: the global options, settings loading, output, and error rendering."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions

from postgressor.advisor.bill import BillPlan, bill_plan
from postgressor.advisor.choose import choose
from postgressor.config import Settings, load_settings
from postgressor.errors import UsageError
from postgressor.providers.credentials import credential
from postgressor.state import check_stack_name, load_state, open_state
from postgressor.vault.references import resolve_vault_references

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


def settings_for(ctx: typer.Context, secrets: bool = False, **overrides: Any) -> Settings:
    """The settings for a verb. ``secrets``: the verb checks or deploys secret values, so ``vault:NAME`` values are
    read now, before anything changes; otherwise each is read only if something asks for it (vault/references.py)."""
    opts = global_options(ctx)
    settings = load_settings(opts.config, **overrides)
    return resolve_vault_references(settings) if secrets else settings


def with_provider(settings: Settings, stack: str, say: Callable[[str], None]) -> Settings:
    """Settings whose provider is settled: configured, else the stack's recorded one, else chosen by region.

    With no provider configured and a region given, the region picks the provider (advisor.choose) and
    ``say`` gets one line saying which and why. Without a region the default (``local``) stays.
    """
    if settings.provider_configured() or not settings.region:
        return settings
    state = load_state(settings.state_dir, stack)
    if state is not None:
        return settings.model_copy(update={"provider": state.provider})
    choice = choose(settings.region, lambda name: credential(name, settings))
    say(choice.reason)
    return settings.model_copy(update={"provider": choice.provider, "region": choice.region})


def billing_plan(
    settings: Settings, stack: str, log: Callable[[str], None] = lambda message: None
) -> BillPlan | None:
    """What ``up`` would start paying for: None for local/ssh and when the stack's recorded server still exists.

    A recorded server costs one API read: "missing" only on the provider's not-found (errors are retried, then
    raised), and then the plan says the new server starts empty and where the data could come from."""
    if settings.provider in ("local", "ssh"):
        return None
    from postgressor.day2 import destroy
    from postgressor.providers import get_provider
    from postgressor.providers.cloud import CloudProvider

    state = open_state(settings.state_dir, stack, settings.provider)
    provider = get_provider(settings, state, log)  # retries of the server lookup are said, not silent
    assert isinstance(provider, CloudProvider)
    provider.validate()  # missing credentials or a bad region are reported before the question
    gone = ""
    if state.find("server") is not None:
        if provider.power_state() != "missing":
            return None
        gone = destroy.gone(state, destroy.backups_of(settings), provider.title)
    size = provider.size
    if settings.provider == "oracle" and size == "VM.Standard.A1.Flex":
        # the A1 Always Free limit (providers/oracle.py), and only in the tenancy's home region
        cfg = settings.oracle
        free = cfg.ocpus <= 2 and cfg.memory_gb <= 12 and provider.region == provider.region_hint()
        size = f"A1.Flex {cfg.ocpus:g} OCPU / {cfg.memory_gb:g} GB" + (" (Always Free)" if free else "")
    return replace(bill_plan(settings.provider, provider.region, size, provider.image()), gone=gone)


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
    if not typer.confirm(question, default=False, err=True):  # stdout stays for results (--json)
        raise typer.Exit(1)


def say(line: str) -> None:
    """One line of plain text on stderr (stdout stays for results), never wrapped or read as markup."""
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


class _Output:
    json_emitted = False  # a run prints at most one JSON document on stdout (see cli.PostgressorGroup)


def emit_json(data: Any) -> None:
    _Output.json_emitted = True
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit_json_line(data: Any) -> None:
    """One compact JSON object on its own line, flushed (a stream of results; a later failure stays on stderr)."""
    _Output.json_emitted = True
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def json_emitted() -> bool:
    return _Output.json_emitted


def reset_output() -> None:
    _Output.json_emitted = False
