"""recommend: ranking by latency band then cost, with reasons computed from the catalogue."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from postgressor.advisor.catalogue import load
from postgressor.advisor.cost import Usage
from postgressor.advisor.geo import find_city
from postgressor.advisor.listing import latency_to
from postgressor.advisor.recommend import BANDS, band_of, recommend
from postgressor.errors import UsageError

CAT = load()
CHENNAI = find_city(CAT, "chennai")


def sort_key(rec):  # type: ignore[no-untyped-def]
    return (band_of(rec.latency.estimate_ms)[0], round(rec.option.total_eur, 2), rec.latency.estimate_ms)


@pytest.mark.parametrize("free", [True, False])
@pytest.mark.parametrize("city", ["chennai", "frankfurt", "new york", "sydney"])
def test_ranking_is_by_band_then_cost_then_latency(city: str, free: bool) -> None:
    recs = recommend(CAT, find_city(CAT, city), Usage(2000, 2.0, free_tier=free))
    keys = [sort_key(r) for r in recs]
    assert keys == sorted(keys)
    assert all(r.band == band_of(r.latency.estimate_ms)[1] for r in recs)


def test_each_provider_offers_its_two_nearest_regions() -> None:
    recs = recommend(CAT, CHENNAI, Usage(1000, 2.0))
    assert Counter(r.option.provider for r in recs) == {"hetzner": 2, "oracle": 2, "ovh": 2}
    for provider in ("hetzner", "oracle", "ovh"):
        shown = {r.option.region.code for r in recs if r.option.provider == provider}
        farthest_shown = max(r.latency.distance_km for r in recs if r.option.provider == provider)
        for rec_region in CAT.regions_of(provider):
            if rec_region.code not in shown:
                assert latency_to(CAT, CHENNAI, rec_region).distance_km >= farthest_shown


def test_chennai_reproduces_the_seed_reasoning_from_the_catalogue() -> None:
    recs = recommend(CAT, CHENNAI, Usage(1000, 2.0))
    top = recs[0]
    # Oracle Always Free in India comes first when free tier is allowed ...
    assert top.option.provider == "oracle" and top.option.region.country == "IN" and top.option.size.free_tier
    assert top.fallback is not None and not top.fallback.size.free_tier
    # ... every Indian option is in a better band than any Singapore one ...
    india = [i for i, r in enumerate(recs) if r.option.region.country == "IN"]
    singapore = [i for i, r in enumerate(recs) if r.option.region.country == "SG"]
    assert india and singapore and max(india) < min(singapore)
    # ... and Hetzner's best is Singapore (it has nothing in India)
    assert next(r for r in recs if r.option.provider == "hetzner").option.region.code == "sin"


def test_without_free_tier_oracle_is_priced_as_paid() -> None:
    recs = recommend(CAT, CHENNAI, Usage(1000, 2.0, free_tier=False))
    assert not any(r.option.size.free_tier for r in recs)
    assert all(r.fallback is None for r in recs)


def test_provider_filter() -> None:
    recs = recommend(CAT, CHENNAI, Usage(1000, 2.0), provider="ovh")
    assert {r.option.provider for r in recs} == {"ovh"}


def test_reasons_follow_the_catalogue_not_fixed_text() -> None:
    usage = Usage(1000, 5.0)  # 5 TB
    base = {(r.option.provider, r.option.region.code): r for r in recommend(CAT, CHENNAI, usage)}
    mumbai = base[("ovh", "AP-SOUTH-MUM-1")]
    assert "4.00 TB over the 1 TB included" in " ".join(mumbai.reasons)
    # make OVH Mumbai unmetered: the egress reason and the cost must change with it
    changed = CAT.with_changes(
        tuple(dataclasses.replace(r, included_tb=math.inf) if r.code == "AP-SOUTH-MUM-1" else r
              for r in CAT.regions),
        CAT.sizes,
    )
    after = {(r.option.provider, r.option.region.code): r for r in recommend(changed, CHENNAI, usage)}
    now = after[("ovh", "AP-SOUTH-MUM-1")]
    assert "not billed" in " ".join(now.reasons)
    assert now.option.total_eur < mumbai.option.total_eur
    assert f"{now.option.total_eur:,.2f}" in now.reasons[1]


def test_reasons_state_the_computed_latency_and_room_before_overage() -> None:
    recs = recommend(CAT, CHENNAI, Usage(100, 2.0))
    hyd = next(r for r in recs if r.option.region.code == "ap-hyderabad-1")
    assert f"{hyd.latency.distance_km:,.0f} km from Chennai" in hyd.reasons[0]
    assert f"RTT floor {hyd.latency.floor_ms:.0f} ms" in hyd.reasons[0]
    users_at_limit = int(hyd.option.included_tb * 1000 / 2.0)
    assert f"overage starts above ~{users_at_limit:,} users" in " ".join(hyd.reasons)


def test_route_factor_scales_the_estimate_only() -> None:
    a = recommend(CAT, CHENNAI, Usage(100, 1.0), route_factor=1.5)
    b = recommend(CAT, CHENNAI, Usage(100, 1.0), route_factor=3.0)
    la = {r.option.region.code: r.latency for r in a}
    for r in b:
        assert r.latency.floor_ms == pytest.approx(la[r.option.region.code].floor_ms)
        assert r.latency.estimate_ms == pytest.approx(2 * la[r.option.region.code].estimate_ms)


def test_bands_cover_everything_in_order() -> None:
    limits = [limit for limit, _ in BANDS]
    assert limits == sorted(limits) and math.isinf(limits[-1])
    assert band_of(0)[0] == 0
    assert band_of(limits[0])[0] == 0 and band_of(limits[0] + 0.1)[0] == 1
    assert band_of(1e9)[1] == BANDS[-1][1]


def test_unknown_city() -> None:
    with pytest.raises(UsageError, match="unknown city"):
        find_city(CAT, "gotham")
