"""Great-circle distance, the round-trip-time floor it implies, and city lookup."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from postgressor.advisor.catalogue import Catalogue, City
from postgressor.errors import UsageError

EARTH_RADIUS_KM = 6371.0


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (km) on a spherical Earth, by Vincenty's formula for the sphere: unlike haversine's
    asin, its atan2 keeps full precision from coincident to antipodal points (so the triangle inequality holds)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.hypot(math.cos(p2) * math.sin(dl),
                   math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl))  # fmt: skip
    x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_KM * math.atan2(y, x)


@dataclass(frozen=True)
class Latency:
    distance_km: float
    floor_ms: float  # physics: there and back along the great circle at fibre speed
    estimate_ms: float  # floor x route factor

    @classmethod
    def between(cls, a: City, lat: float, lon: float, fibre_km_per_ms: float, route_factor: float) -> Latency:
        km = distance_km(a.lat, a.lon, lat, lon)
        floor = 2 * km / fibre_km_per_ms
        return cls(distance_km=km, floor_ms=floor, estimate_ms=floor * route_factor)


def normalise(name: str) -> str:
    return " ".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def known_cities(cat: Catalogue) -> dict[str, City]:
    """Every city --near accepts, by normalised name or alias: the city table plus region cities."""
    table: dict[str, City] = {}
    for region in cat.regions:
        city = City(region.city, region.country, region.lat, region.lon, region.aliases)
        for key in (region.city, *region.aliases):
            table.setdefault(normalise(key), city)
    for city in cat.cities:  # the explicit table wins over a region's coordinates
        for key in (city.name, *city.aliases):
            table[normalise(key)] = city
    return table


def find_city(cat: Catalogue, name: str) -> City:
    """The city called ``name`` (case-insensitive), or a one-line UsageError with close matches."""
    table = known_cities(cat)
    key = normalise(name)
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "try a nearby large city"
    raise UsageError(f"unknown city '{name}'; {hint} (see 'postgressor regions' for region cities)")
