"""Provider registry."""

from __future__ import annotations

from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.providers.base import Log, Provider
from postgressor.state import StackState


def get_provider(settings: Settings, state: StackState, log: Log) -> Provider:
    from postgressor.providers.local import LocalProvider
    from postgressor.providers.ssh import SSHProvider

    classes: dict[str, type[Provider]] = {"local": LocalProvider, "ssh": SSHProvider}
    cls = classes.get(settings.provider)
    if cls is None:
        raise UsageError(
            f"provider '{settings.provider}' is not available in this version; use one of: "
            f"{', '.join(sorted(classes))}"
        )
    return cls(settings, state, log)
