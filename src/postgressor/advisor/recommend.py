"""Rank hosting options for users near a city by latency band, then cost; every reason is computed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from postgressor.advisor.catalogue import Catalogue, City
from postgressor.advisor.cost import CostOption, Usage, option_for
from postgressor.advisor.geo import Latency
from postgressor.advisor.listing import latency_to
from postgressor.advisor.regions import provider_info

# Estimated round trip (ms) bounds of each band, best first. Within a band the cheaper option wins.
BANDS: tuple[tuple[float, str], ...] = (
    (30.0, "near"),
    (80.0, "regional"),
    (160.0, "continental"),
    (math.inf, "far"),
)
REGIONS_PER_PROVIDER = 2


@dataclass(frozen=True)
class Recommendation:
    option: CostOption
    latency: Latency
    band: str
    reasons: tuple[str, ...]
    caveats: tuple[str, ...]
    fallback: CostOption | None  # the paid option if a free-tier box cannot be had


def band_of(estimate_ms: float) -> tuple[int, str]:
    for index, (limit, label) in enumerate(BANDS):
        if estimate_ms <= limit:
            return index, label
    raise AssertionError("the last band is unbounded")


def _money(cat: Catalogue, amount: float, currency: str) -> str:
    if amount == 0:
        return "€0"
    symbol = {"EUR": "€", "USD": "$"}.get(currency, currency + " ")
    text = f"{symbol}{amount:,.2f}"
    return text if currency == "EUR" else f"{text} (€{cat.to_eur(amount, currency):,.2f})"


def _egress_reason(cat: Catalogue, o: CostOption, usage: Usage) -> str:
    if math.isinf(o.included_tb):
        return f"egress is not billed here: {o.egress_tb:,.2f} TB/month costs nothing and the bill cannot grow"
    if o.over_tb > 0:
        return (f"{o.egress_tb:,.2f} TB/month is {o.over_tb:,.2f} TB over the {o.included_tb:g} TB included; at "
                f"{_money(cat, o.overage_per_tb, o.currency)}/TB that adds {_money(cat, o.egress, o.currency)}")
    room = (f"; overage starts above ~{int(o.included_tb * 1000 / usage.egress_gb_per_user):,} users at "
            f"{usage.egress_gb_per_user:g} GB each" if usage.egress_gb_per_user > 0 else "")
    return (f"{o.egress_tb:,.2f} TB/month fits the {o.included_tb:g} TB included "
            f"(then {_money(cat, o.overage_per_tb, o.currency)}/TB){room}")


def _explain(cat: Catalogue, city: City, o: CostOption, lat: Latency, band: str, usage: Usage,
             fallback: CostOption | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    r, size = o.region, o.size
    reasons = [
        f"{band}: {lat.distance_km:,.0f} km from {city.name}, RTT floor {lat.floor_ms:.0f} ms, "
        f"estimate ~{lat.estimate_ms:.0f} ms",
        f"about €{o.total_eur:,.2f}/month: {size.name} ({size.vcpus} vCPU, {size.ram_gb:g} GB, "
        f"{_money(cat, o.box, o.currency)}) + egress {_money(cat, o.egress, o.currency)} + "
        f"{o.auth.tier.name} {_money(cat, o.auth.monthly, o.auth.tier.currency)}",
        _egress_reason(cat, o, usage),
    ]
    if size.free_tier:
        reasons.append(f"the box is free: {r.free_tier}")
        if fallback is not None:
            reasons.append(f"if the free box cannot be had, {fallback.size.name} here costs about "
                           f"€{fallback.total_eur:,.2f}/month in all")
    caveats = [text for text in (r.notes, size.notes) if text]
    caveats += [f"unverified: {text}" for text in (size.unverified, r.unverified) if text]
    stale = min(r.checked_on, size.checked_on)
    if not (r.live and size.live):
        caveats.append(f"catalogue figures checked {stale}: confirm the price before buying")
    return tuple(reasons), tuple(caveats)


def recommend(
    cat: Catalogue,
    city: City,
    usage: Usage,
    *,
    provider: str | None = None,
    route_factor: float | None = None,
    per_provider: int = REGIONS_PER_PROVIDER,
) -> list[Recommendation]:
    """Each provider's ``per_provider`` nearest regions, ranked by (latency band, monthly cost, latency)."""
    providers = [provider_info(provider, cat).name] if provider else list(cat.providers)
    ranked: list[tuple[tuple[int, float, float], Recommendation]] = []
    for name in providers:
        regions = cat.regions_of(name)
        nearest = sorted(regions, key=lambda r: latency_to(cat, city, r).distance_km)[:per_provider]
        for region in nearest:
            option = option_for(cat, region, usage)
            if option is None:
                continue
            lat = latency_to(cat, city, region, route_factor)
            index, band = band_of(lat.estimate_ms)
            fallback = option_for(cat, region, usage, free_tier=False) if option.size.free_tier else None
            reasons, caveats = _explain(cat, city, option, lat, band, usage, fallback)
            rec = Recommendation(option, lat, band, reasons, caveats, fallback)
            ranked.append(((index, round(option.total_eur, 2), lat.estimate_ms), rec))
    ranked.sort(key=lambda pair: pair[0])
    return [rec for _, rec in ranked]


def ranking_rule(route_factor: float) -> str:
    bands = ", ".join(f"{label} <= {limit:g} ms" for limit, label in BANDS if math.isfinite(limit))
    return (f"each provider's {REGIONS_PER_PROVIDER} nearest regions, ranked by latency band of the "
            f"estimated RTT (floor x {route_factor:g}; {bands}, then far), then by monthly cost, then by RTT")
