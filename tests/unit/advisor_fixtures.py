"""A small hand-made catalogue whose numbers the cost tests can check by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

from postgressor.advisor.catalogue import Catalogue, parse

DAY = dt.date(2026, 11, 1)
SRC = "https://example.test/prices"


def mini_catalogue(**assumption_overrides: Any) -> Catalogue:
    region = {"city": "", "country": "", "aliases": [], "free_tier": "", "notes": "", "checked_on": DAY,
              "source": SRC}
    size = {"disk_gb": 40, "arch": "x86", "checked_on": DAY, "source": SRC}
    return parse({
        "assumptions": {
            "usd_per_eur": 1.25, "usd_per_eur_checked_on": DAY, "usd_per_eur_source": SRC,
            "fibre_km_per_ms": 200.0, "route_factor": 2.0,
            "sizing": [{"max_users": 100, "min_ram_gb": 2}, {"max_users": 10**9, "min_ram_gb": 8}],
            **assumption_overrides,
        },
        "providers": {
            "metered": {"title": "Metered", "currency": "EUR", "default_region": "m1"},
            "dollar": {"title": "Dollar", "currency": "USD", "default_region": "d1"},
            "open": {"title": "Unmetered", "currency": "EUR", "default_region": "u1"},
            "ssh": {"title": "SSH", "regionless": True, "note": "wherever"},
        },
        "regions": [
            {**region, "provider": "metered", "code": "m1", "city": "Alpha", "country": "AA", "lat": 0.0,
             "lon": 0.0, "included_tb": 1.0, "overage_per_tb": 10.0},
            {**region, "provider": "dollar", "code": "d1", "city": "Beta", "country": "BB", "lat": 0.0,
             "lon": 10.0, "included_tb": 10.0, "overage_per_tb": 25.0, "free_tier": "free box"},
            {**region, "provider": "open", "code": "u1", "city": "Gamma", "country": "CC", "lat": 0.0,
             "lon": 20.0, "included_tb": float("inf"), "overage_per_tb": 0.0},
        ],
        "sizes": [
            {**size, "provider": "metered", "name": "small", "vcpus": 1, "ram_gb": 2, "monthly": 5.0,
             "regions": ["m1"]},
            {**size, "provider": "metered", "name": "big", "vcpus": 4, "ram_gb": 8, "monthly": 20.0,
             "regions": ["m1"]},
            {**size, "provider": "dollar", "name": "free", "vcpus": 2, "ram_gb": 12, "monthly": 0.0,
             "free_tier": True, "regions": ["*"]},
            {**size, "provider": "dollar", "name": "paid", "vcpus": 2, "ram_gb": 12, "monthly": 30.0,
             "regions": ["*"]},
            {**size, "provider": "open", "name": "flat", "vcpus": 2, "ram_gb": 8, "monthly": 40.0,
             "regions": ["*"]},
        ],
        "auth_tiers": [
            {"key": "free", "name": "Auth Free", "currency": "USD", "monthly": 0.0, "included_mau": 1000,
             "per_mau_over": 0.0, "notes": "", "checked_on": DAY, "source": SRC},
            {"key": "pro", "name": "Auth Pro", "currency": "USD", "monthly": 25.0, "included_mau": 2000,
             "per_mau_over": 0.01, "notes": "", "checked_on": DAY, "source": SRC},
        ],
        "cities": [{"name": "Here", "country": "AA", "lat": 0.0, "lon": 1.0}],
    })
