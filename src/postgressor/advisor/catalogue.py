"""Load catalogue.toml into typed, immutable records."""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

CATALOGUE_FILE = "catalogue.toml"


@dataclass(frozen=True)
class Provider:
    name: str
    title: str
    currency: str = "EUR"
    default_region: str = ""
    regionless: bool = False
    aliases: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Region:
    provider: str
    code: str
    city: str
    country: str
    lat: float
    lon: float
    aliases: tuple[str, ...]
    included_tb: float  # math.inf when egress is not billed
    overage_per_tb: float  # in the provider's currency
    free_tier: str
    notes: str
    checked_on: dt.date
    source: str
    live: bool = False  # traffic terms refreshed from the provider's API
    unverified: str = ""  # why the traffic terms are not confirmed (and how to check them); "" = confirmed

    @property
    def unmetered(self) -> bool:
        return math.isinf(self.included_tb)


@dataclass(frozen=True)
class Size:
    provider: str
    name: str
    vcpus: int
    ram_gb: float
    disk_gb: int
    arch: str
    monthly: float  # default monthly price, provider's currency
    regions: tuple[str, ...]  # ("*",) = every region of the provider
    checked_on: dt.date
    source: str
    notes: str = ""
    free_tier: bool = False
    monthly_by_region: dict[str, float] = field(default_factory=dict)
    included_tb_by_region: dict[str, float] = field(default_factory=dict)  # from --live only
    overage_by_region: dict[str, float] = field(default_factory=dict)  # from --live only
    live: bool = False
    unverified: str = ""  # why the price is not confirmed (and how to check it); "" = confirmed

    def offered_in(self, code: str) -> bool:
        return "*" in self.regions or code in self.regions

    def price_in(self, code: str) -> float:
        return self.monthly_by_region.get(code, self.monthly)


@dataclass(frozen=True)
class AuthTier:
    key: str  # free | pro
    name: str
    currency: str
    monthly: float
    included_mau: int
    per_mau_over: float
    notes: str
    checked_on: dt.date
    source: str


@dataclass(frozen=True)
class City:
    name: str
    country: str
    lat: float
    lon: float
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SizingStep:
    max_users: int
    min_ram_gb: float


@dataclass(frozen=True)
class Assumptions:
    usd_per_eur: float
    usd_per_eur_checked_on: dt.date
    usd_per_eur_source: str
    fibre_km_per_ms: float
    route_factor: float
    sizing: tuple[SizingStep, ...]


@dataclass(frozen=True)
class Catalogue:
    assumptions: Assumptions
    providers: dict[str, Provider]
    regions: tuple[Region, ...]
    sizes: tuple[Size, ...]
    auth_tiers: tuple[AuthTier, ...]
    cities: tuple[City, ...]

    def regions_of(self, provider: str) -> list[Region]:
        return [r for r in self.regions if r.provider == provider]

    def sizes_of(self, provider: str) -> list[Size]:
        return [s for s in self.sizes if s.provider == provider]

    def auth_tier(self, key: str) -> AuthTier:
        return next(t for t in self.auth_tiers if t.key == key)

    def to_eur(self, amount: float, currency: str) -> float:
        if currency == "EUR":
            return amount
        if currency == "USD":
            return amount / self.assumptions.usd_per_eur
        raise ValueError(f"catalogue currency {currency!r} has no conversion")

    def with_changes(self, regions: tuple[Region, ...], sizes: tuple[Size, ...]) -> Catalogue:
        return replace(self, regions=regions, sizes=sizes)


def _region(raw: dict[str, Any]) -> Region:
    data = dict(raw)
    data["aliases"] = tuple(data.get("aliases", ()))
    return Region(**data)


def _size(raw: dict[str, Any]) -> Size:
    data = dict(raw)
    data["regions"] = tuple(data["regions"])
    data["monthly_by_region"] = dict(data.get("monthly_by_region", {}))
    return Size(**data)


def parse(data: dict[str, Any]) -> Catalogue:
    """Build a Catalogue from parsed TOML; a missing or unknown key raises TypeError/KeyError."""
    raw_assumptions = dict(data["assumptions"])
    sizing = tuple(SizingStep(**s) for s in raw_assumptions.pop("sizing"))
    assumptions = Assumptions(**raw_assumptions, sizing=tuple(sorted(sizing, key=lambda s: s.max_users)))
    providers = {
        name: Provider(name=name, **{**raw, "aliases": tuple(raw.get("aliases", ()))})
        for name, raw in data["providers"].items()
    }
    return Catalogue(
        assumptions=assumptions,
        providers=providers,
        regions=tuple(_region(r) for r in data["regions"]),
        sizes=tuple(_size(s) for s in data["sizes"]),
        auth_tiers=tuple(AuthTier(**t) for t in data["auth_tiers"]),
        cities=tuple(City(**{**c, "aliases": tuple(c.get("aliases", ()))}) for c in data["cities"]),
    )


@cache
def load() -> Catalogue:
    """The packaged catalogue (parsed once per process)."""
    text = resources.files("postgressor.advisor").joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    return parse(tomllib.loads(text))
