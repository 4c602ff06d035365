"""Rows for `postgressor regions`: each region with its traffic terms and, near a city, its latency."""

from __future__ import annotations

from dataclasses import dataclass

from postgressor.advisor.catalogue import Catalogue, City, Region
from postgressor.advisor.geo import Latency
from postgressor.advisor.regions import provider_info


@dataclass(frozen=True)
class RegionRow:
    region: Region
    currency: str
    latency: Latency | None  # None without --near


def latency_to(cat: Catalogue, city: City, region: Region, route_factor: float | None = None) -> Latency:
    factor = cat.assumptions.route_factor if route_factor is None else route_factor
    return Latency.between(city, region.lat, region.lon, cat.assumptions.fibre_km_per_ms, factor)


def region_rows(
    cat: Catalogue, *, near: City | None = None, provider: str | None = None, route_factor: float | None = None
) -> list[RegionRow]:
    """Cloud regions (one provider's, or all), nearest first when ``near`` is given."""
    if provider is not None:
        regions = cat.regions_of(provider_info(provider, cat).name)
    else:
        regions = [r for r in cat.regions if not cat.providers[r.provider].regionless]
    rows = [
        RegionRow(r, cat.providers[r.provider].currency, latency_to(cat, near, r, route_factor) if near else None)
        for r in regions
    ]
    if near is not None:
        rows.sort(key=lambda row: (row.latency.distance_km if row.latency else 0.0, row.region.provider))
    return rows


def latency_basis(cat: Catalogue, route_factor: float | None = None) -> str:
    a = cat.assumptions
    factor = a.route_factor if route_factor is None else route_factor
    return (f"RTT floor = great-circle distance there and back at {a.fibre_km_per_ms:g} km/ms (light in "
            f"fibre); estimate = floor x {factor:g} (real routes are typically 1.5-3x the floor). "
            "Measure before you commit.")
