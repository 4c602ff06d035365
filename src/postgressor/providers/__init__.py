"""Provider registry."""

from __future__ import annotations

import importlib

from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.providers.base import Log, Provider
from postgressor.state import StackState


def get_provider(settings: Settings, state: StackState, log: Log) -> Provider:
    # Imported on demand: the cloud SDKs (oci above all) are slow to import and unused by the others.
    modules = {
        "local": "local.LocalProvider", "ssh": "ssh.SSHProvider", "hetzner": "hetzner.HetznerProvider",
        "oracle": "oracle.OracleProvider", "ovh": "ovh.OVHProvider",
    }  # fmt: skip
    target = modules.get(settings.provider)
    if target is None:
        raise UsageError(
            f"provider '{settings.provider}' is not available in this version; use one of: "
            f"{', '.join(sorted(modules))}"
        )
    module, cls_name = target.split(".")
    cls: type[Provider] = getattr(importlib.import_module(f"postgressor.providers.{module}"), cls_name)
    return cls(settings, state, log)
