"""``postgressor secrets push``: what the app side (Supabase Edge Functions) needs from a stack, stored in Vault.

Two values, under names derived from the stack so several stacks share one project's Vault:

- ``postgressor_<stack>_gateway_url``: the gateway's public base URL (``https://<[https] domain>``, else the box's
  address; a local VM's forwarded 443 port on 127.0.0.1);
- ``postgressor_<stack>_ca_certificate``: Caddy's internal root certificate (PEM), only when Caddy uses
  ``tls internal`` (no ``[https] domain``), read from the box over SSH with its pinned host key, so a client can
  trust (pin) exactly that CA.

Neither is a secret, but both are read from their sources and sent as query parameters, never through argv. A
value already stored is left alone when equal and updated otherwise, so pushing again is safe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from postgressor.checks.stack_tokens import gateway_url, read_caddy_root
from postgressor.config import Settings
from postgressor.errors import UsageError
from postgressor.state import require_state
from postgressor.vault import client


@dataclass(frozen=True)
class Pushed:
    name: str  # the Vault secret's name
    what: str  # what it holds, in words
    status: str  # created, updated, unchanged, or skipped (with the reason in ``detail``)
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gateway_url_name(stack: str) -> str:
    return f"postgressor_{stack}_gateway_url"


def ca_certificate_name(stack: str) -> str:
    return f"postgressor_{stack}_ca_certificate"


def stack_values(settings: Settings, stack: str) -> list[tuple[str, str, str | None, str]]:
    """(name, what, value or None when skipped, why skipped) for each value ``push`` stores; UsageError when the
    stack has no box or no gateway. Reads the CA over SSH, before anything is written."""
    state = require_state(settings.state_dir, stack)
    assert state.host is not None
    if not settings.sync_enabled():
        raise UsageError(f"stack '{stack}' deploys no gateway (sync is off: no [[sync.tables]], or electric.enabled "
                         "= false), so there is nothing for the app side to reach; list the tables clients sync "
                         "and run 'postgressor deploy' first")  # fmt: skip
    url_desc = f"stack '{stack}': the gateway's URL"
    ca_desc = f"stack '{stack}': the gateway's CA certificate (Caddy tls internal)"
    values: list[tuple[str, str, str | None, str]] = [(gateway_url_name(stack), url_desc,
                                                        gateway_url(settings, state), "")]  # fmt: skip
    if settings.https.domain:
        values.append((ca_certificate_name(stack), ca_desc, None,
                       f"[https] domain {settings.https.domain} has a public certificate; clients use their "
                       "system CAs"))  # fmt: skip
    else:
        values.append((ca_certificate_name(stack), ca_desc, read_caddy_root(state.host), ""))
    return values


def push(settings: Settings, stack: str, url: str) -> tuple[str, list[Pushed]]:
    """Store the stack's values in the Vault at ``url``: (the Vault's user@host/db, what happened to each)."""
    values = stack_values(settings, stack)
    done: list[Pushed] = []
    with client.connect(url) as vault:
        for name, what, value, skipped in values:
            if value is None:
                done.append(Pushed(name, what, "skipped", skipped))
                continue
            done.append(Pushed(name, what, client.store_secret(vault, name, value, f"postgressor: {what}")))
        return vault.label, done
