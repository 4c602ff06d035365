"""Servers found by their labels, without the local state: what `servers list` and `servers destroy` do.

CI runners lose their state (an evicted cache, a deleted branch); the labels every cloud resource carries
(providers/cloud.py: stack, project, tag) are then the only record of what is billed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.providers import get_provider
from postgressor.providers.base import Log
from postgressor.providers.cloud import CloudProvider, LabelledServer
from postgressor.state import StackState, check_stack_name, load_state


def _cloud(settings: Settings, state: StackState, log: Log) -> CloudProvider:
    if settings.provider in ("local", "ssh"):
        raise UsageError(f"provider '{settings.provider}' labels no servers; pass --provider hetzner, oracle or ovh")
    provider = get_provider(settings, state, log)
    assert isinstance(provider, CloudProvider)
    provider.validate()
    return provider


def list_servers(settings: Settings, log: Log) -> list[LabelledServer]:
    """This project's labelled servers at ``settings.provider`` (Oracle: in its region; others: all)."""
    with tempfile.TemporaryDirectory() as scratch:
        state = StackState(stack="list", provider=settings.provider, path=Path(scratch) / "list.json")
        provider = _cloud(settings, state, log)
        with provider.translated("listing labelled servers"):
            return provider.api("list labelled servers", provider.list_labelled)


def destroy_labelled(settings: Settings, stack: str, log: Log) -> list[str]:
    """Delete every resource labelled for ``stack`` of this project in the provider's region.

    Refuses when a local state records the stack ('postgressor destroy' is then the way: it also forgets
    the state and the SSH key).
    """
    check_stack_name(stack)
    if load_state(settings.state_dir, stack) is not None:
        raise UsageError(f"stack '{stack}' has a state in {settings.state_dir}; use 'postgressor --stack {stack} "
                         "destroy', which also removes the state")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        state = StackState(stack=stack, provider=settings.provider, path=Path(scratch) / f"{stack}.json")
        return _cloud(settings, state, log).sweep()
