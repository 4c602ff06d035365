"""--live: refresh Hetzner's prices and traffic terms from GET /server_types (hcloud SDK)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import requests
from hcloud import APIException, Client

from postgressor.advisor.catalogue import Catalogue, Size
from postgressor.errors import PostgressorError, UsageError

if TYPE_CHECKING:
    from hcloud._client import BackoffFunction

DEFAULT_ENDPOINT = "https://api.hetzner.cloud/v1"
TIB = 2**40  # the API counts included traffic in bytes; "20 TB" is 20 TiB


@dataclass(frozen=True)
class LivePrice:
    server_type: str
    location: str
    cores: int
    memory_gb: float
    disk_gb: int
    arch: str
    monthly_net: float  # EUR excluding VAT
    included_tb: float
    overage_per_tb: float  # EUR excluding VAT


def hetzner_credentials(settings: Any = None) -> tuple[str, str]:
    """Token and endpoint: HCLOUD_TOKEN/HCLOUD_ENDPOINT, else a [hetzner] section in the config if any."""
    section = getattr(settings, "hetzner", None)
    token: Any = os.environ.get("HCLOUD_TOKEN") or getattr(section, "token", None) or ""
    if hasattr(token, "get_secret_value"):
        token = token.get_secret_value()
    endpoint = os.environ.get("HCLOUD_ENDPOINT") or getattr(section, "api_endpoint", "") or DEFAULT_ENDPOINT
    if not token:
        raise UsageError("--live needs a Hetzner Cloud API token: set HCLOUD_TOKEN (a read-only token is "
                         "enough), or drop --live to use the dated catalogue")
    return str(token), str(endpoint)


def _net(price: Any, what: str) -> float:
    try:
        return float(Decimal(str(price["net"])))
    except (KeyError, TypeError, InvalidOperation) as err:
        raise PostgressorError(f"Hetzner API answered /server_types with an unexpected {what} ({price!r}); "
                               "report this with the hcloud version") from err


def _unusable_at(server_type: Any) -> set[str]:
    """Locations where the type is deprecated or not available (per-location data since 2025-09)."""
    return {
        loc.location.name
        for loc in server_type.locations or []
        if loc.deprecation is not None or loc.available is False
    }


def fetch_hetzner_prices(
    token: str,
    api_endpoint: str = DEFAULT_ENDPOINT,
    *,
    timeout: float = 20.0,
    retries: int = 2,
    backoff: BackoffFunction | None = None,
) -> list[LivePrice]:
    """Every current server type's price and traffic terms per location. Raises a one-line error.

    The SDK retries rate limits and 502/504 itself (5 times, backoff up to 60 s); a read-only lookup
    should fail faster, so ``retries`` and ``backoff`` (seconds before retry n) override its policy.
    """
    client = Client(token=token, api_endpoint=api_endpoint.rstrip("/"), timeout=timeout,
                    application_name="postgressor")
    client._client._retry_max_retries = retries
    if backoff is not None:
        client._client._retry_interval_func = backoff
    try:
        server_types = client.server_types.get_all()
    except APIException as err:
        hint = {
            "unauthorized": "the token is wrong or revoked: create a new one in the Cloud Console",
            "forbidden": "the token may not read server types: use a project token",
            "rate_limit_exceeded": "rate limited: wait a minute and retry",
        }.get(str(err.code), "retry later, or drop --live to use the dated catalogue")
        raise PostgressorError(f"Hetzner API refused GET /server_types ({err.code}: {err.message}); "
                               f"{hint}") from None
    except requests.RequestException as err:
        raise PostgressorError(f"cannot reach the Hetzner API at {api_endpoint} ({type(err).__name__}); "
                               "check the network or drop --live") from None
    prices: list[LivePrice] = []
    for st in server_types:
        unusable = _unusable_at(st)
        for p in st.prices or []:
            location = p.get("location")
            if not location or location in unusable:
                continue
            prices.append(LivePrice(
                server_type=str(st.name), location=str(location), cores=int(st.cores or 0),
                memory_gb=float(st.memory or 0), disk_gb=int(st.disk or 0), arch=str(st.architecture or ""),
                monthly_net=_net(p.get("price_monthly"), "monthly price"),
                included_tb=int(p.get("included_traffic") or 0) / TIB,
                overage_per_tb=_net(p.get("price_per_tb_traffic"), "traffic price"),
            ))
    if not prices:
        raise PostgressorError("Hetzner API listed no available server types; drop --live to use the catalogue")
    return prices


def apply_hetzner_prices(
    cat: Catalogue, prices: list[LivePrice], source: str, today: dt.date | None = None
) -> Catalogue:
    """The catalogue with Hetzner's sizes and traffic terms replaced by ``prices`` (dated today)."""
    today = today or dt.date.today()
    by_type: dict[str, list[LivePrice]] = {}
    for p in prices:
        by_type.setdefault(p.server_type, []).append(p)
    sizes = [s for s in cat.sizes if s.provider != "hetzner"]
    for name, rows in sorted(by_type.items()):
        first = rows[0]
        sizes.append(Size(
            provider="hetzner", name=name, vcpus=first.cores, ram_gb=first.memory_gb, disk_gb=first.disk_gb,
            arch=first.arch, monthly=min(r.monthly_net for r in rows),
            regions=tuple(r.location for r in rows), checked_on=today, source=source,
            notes="live from the Hetzner API", live=True,
            monthly_by_region={r.location: r.monthly_net for r in rows},
            included_tb_by_region={r.location: r.included_tb for r in rows},
            overage_by_region={r.location: r.overage_per_tb for r in rows},
        ))
    regions = []
    for region in cat.regions:
        here = [p for p in prices if region.provider == "hetzner" and p.location == region.code]
        if here:  # region-level terms: those of the cheapest type offered there
            cheapest = min(here, key=lambda p: (p.monthly_net, p.server_type))
            region = replace(region, included_tb=cheapest.included_tb, overage_per_tb=cheapest.overage_per_tb,
                             checked_on=today, source=source, live=True, unverified="")
        regions.append(region)
    return cat.with_changes(tuple(regions), tuple(sizes))
