"""Turn what a user types for --region into a provider's region code, before any API call.

Rules, in order (all case-insensitive):
1. The provider's own code (``fsn1``, ``ap-mumbai-1``, ``SGP1``) is returned in its canonical spelling.
2. A city that names one of the provider's regions (``nuremberg``, ``mumbai``) gives that region.
3. Any other known city gives the provider's nearest region *in the same country* (``frankfurt`` on
   Hetzner gives ``nbg1``, ``chennai`` on Oracle gives ``ap-hyderabad-1``): never silently across a border.
4. Otherwise a one-line UsageError names the provider's nearest regions by great-circle distance.
``local`` and ``ssh`` have no regions: an empty name gives ``""``, anything else is refused.
"""

from __future__ import annotations

import difflib

from postgressor.advisor.catalogue import Catalogue, Provider, Region, load
from postgressor.advisor.geo import distance_km, known_cities, normalise
from postgressor.errors import UsageError


def provider_info(provider: str, cat: Catalogue | None = None) -> Provider:
    """The catalogue's provider called ``provider`` or one of its aliases (``oci`` = ``oracle``)."""
    cat = cat or load()
    key = provider.strip().lower()
    for info in cat.providers.values():
        if key == info.name or key in info.aliases:
            return info
    raise UsageError(f"unknown provider '{provider}'; choose one of {', '.join(cat.providers)}")


def list_regions(provider: str, cat: Catalogue | None = None) -> list[Region]:
    """The provider's regions in catalogue order ([] for local and ssh)."""
    cat = cat or load()
    return cat.regions_of(provider_info(provider, cat).name)


def default_region(provider: str, cat: Catalogue | None = None) -> str:
    """The region used when none is configured ("" for local and ssh)."""
    return provider_info(provider, cat).default_region


def _nearest(regions: list[Region], lat: float, lon: float) -> list[tuple[float, Region]]:
    return sorted(((distance_km(lat, lon, r.lat, r.lon), r) for r in regions), key=lambda p: p[0])


def resolve_region(provider: str, name: str, cat: Catalogue | None = None) -> str:
    """The provider's code for ``name`` (a code or a city), or a one-line UsageError saying what to use."""
    cat = cat or load()
    info = provider_info(provider, cat)
    wanted = name.strip()
    if info.regionless:
        if wanted:
            raise UsageError(
                f"provider '{info.name}' has no regions ({info.note}); "
                f"remove region '{wanted}' from the flags or config"
            )
        return ""
    regions = cat.regions_of(info.name)
    if not wanted:
        return info.default_region
    for region in regions:
        if region.code.lower() == wanted.lower():
            return region.code
    key = normalise(wanted)
    for region in regions:
        if key in {normalise(region.city), *(normalise(a) for a in region.aliases)}:
            return region.code
    city = known_cities(cat).get(key)
    if city is None:
        names = [r.code for r in regions] + [normalise(a) for r in regions for a in (r.city, *r.aliases)]
        close = difflib.get_close_matches(wanted.lower(), [n.lower() for n in names], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(
            f"unknown {info.name} region '{wanted}'; {hint}known: "
            f"{', '.join(r.code for r in regions)} (or a city; see 'postgressor regions')"
        )
    ranked = _nearest(regions, city.lat, city.lon)
    same_country = [r for _, r in ranked if r.country == city.country]
    if same_country:
        return same_country[0].code
    options = ", ".join(f"{r.code} ({r.city}, {km:,.0f} km)" for km, r in ranked[:3])
    raise UsageError(
        f"{info.name} has no region in {city.name} or elsewhere in {city.country}; "
        f"nearest: {options}; or pick another provider ('postgressor regions --near "
        f"{normalise(city.name)}')"
    )
