"""Whether a cloud provider's credentials are present, without importing its SDK or calling its API.

Each check looks where the provider itself looks (hetzner.py, oracle.py, ovh.py) and answers with a
``Credential``: where they were found ("" when absent) and what the provider needs. Presence is not
validity: a wrong token still fails at the first API call, with the provider's own one-line error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from postgressor.config import Settings

OVH_KEYS = ("application_key", "application_secret", "consumer_key")


@dataclass(frozen=True)
class Credential:
    provider: str
    found: str  # where the credentials were found; "" when absent
    needs: str  # what to provide, in one phrase

    @property
    def present(self) -> bool:
        return bool(self.found)


def hetzner(settings: Settings) -> Credential:
    needs = "an API token in HCLOUD_TOKEN (or [hetzner] token / POSTGRESSOR_HETZNER__TOKEN)"
    if settings.hetzner.token is not None and settings.hetzner.token.get_secret_value():
        return Credential("hetzner", "[hetzner] token", needs)
    if os.environ.get("HCLOUD_TOKEN"):
        return Credential("hetzner", "HCLOUD_TOKEN", needs)
    return Credential("hetzner", "", needs)


def oracle_config_path(settings: Settings) -> Path:
    """The OCI config file the oracle provider reads: [oracle] config_file, OCI_CONFIG_FILE, ~/.oci/config."""
    path = settings.oracle.config_file or Path(os.environ.get("OCI_CONFIG_FILE") or "~/.oci/config")
    return path.expanduser()


def oracle(settings: Settings) -> Credential:
    needs = "an OCI config file (~/.oci/config, OCI_CONFIG_FILE or [oracle] config_file; 'oci setup config')"
    path = oracle_config_path(settings)
    return Credential("oracle", f"OCI config {path}" if path.is_file() else "", needs)


def ovh(settings: Settings) -> Credential:
    """The python-ovh lookup order: [ovh] settings, then OVH_* variables, then ovh.conf files."""
    from ovh.config import ConfigurationManager  # light: no network, reads ovh.conf files

    needs = ("OVH API keys (OVH_ENDPOINT, OVH_APPLICATION_KEY, OVH_APPLICATION_SECRET, OVH_CONSUMER_KEY "
             "or ovh.conf; https://eu.api.ovh.com/createToken/)")  # fmt: skip
    files = ConfigurationManager()
    cfg = settings.ovh
    endpoint = cfg.endpoint or files.get("default", "endpoint")
    if not endpoint:
        return Credential("ovh", "", needs)
    for name in OVH_KEYS:
        value = getattr(cfg, name)
        if not ((value is not None and value.get_secret_value()) or files.get(endpoint, name)):
            return Credential("ovh", "", needs)
    return Credential("ovh", "OVH API keys", needs)


CHECKS = {"hetzner": hetzner, "oracle": oracle, "ovh": ovh}


def credential(provider: str, settings: Settings) -> Credential:
    """The credential check of a cloud ``provider``; KeyError for local and ssh (they need none)."""
    return CHECKS[provider](settings)
