"""Cost estimates: box + auth tier + egress beyond the allowance."""

from __future__ import annotations

import math

import pytest
from advisor_fixtures import mini_catalogue
from hypothesis import given, settings
from hypothesis import strategies as st

from postgressor.advisor.catalogue import load
from postgressor.advisor.cost import Usage, auth_cost, estimate, option_for, ram_needed_gb
from postgressor.errors import UsageError

MINI = mini_catalogue()
REAL = load()


def region(cat, code):  # type: ignore[no-untyped-def]
    return next(r for r in cat.regions if r.code == code)


def test_egress_beyond_allowance_is_charged_by_the_tb() -> None:
    # 50 users x 60 GB = 3 TB; 1 TB included; 2 TB x 10 = 20; small box 5 -> 25
    o = option_for(MINI, region(MINI, "m1"), Usage(50, 60.0))
    assert o is not None
    assert (o.size.name, o.egress_tb, o.over_tb, o.egress, o.box) == ("small", 3.0, 2.0, 20.0, 5.0)
    assert o.total_eur == pytest.approx(25.0)


def test_traffic_within_allowance_costs_nothing() -> None:
    o = option_for(MINI, region(MINI, "m1"), Usage(50, 10.0))  # 0.5 TB
    assert o is not None and o.over_tb == 0 and o.egress == 0


def test_unmetered_region_never_charges_egress() -> None:
    o = option_for(MINI, region(MINI, "u1"), Usage(100, 1e6))
    assert o is not None and o.egress == 0 and math.isinf(o.included_tb)


def test_usd_prices_are_converted_with_the_stated_rate() -> None:
    o = option_for(MINI, region(MINI, "d1"), Usage(50, 1.0, free_tier=False))
    assert o is not None and o.size.name == "paid"
    assert o.box == 30.0 and o.box_eur == pytest.approx(30.0 / 1.25)


def test_free_tier_box_is_used_unless_excluded() -> None:
    free = option_for(MINI, region(MINI, "d1"), Usage(50, 1.0))
    assert free is not None and free.size.free_tier and free.box == 0
    paid = option_for(MINI, region(MINI, "d1"), Usage(50, 1.0), free_tier=False)
    assert paid is not None and not paid.size.free_tier


def test_sizing_rule_picks_the_cheapest_box_with_enough_ram() -> None:
    assert ram_needed_gb(MINI, Usage(100, 1)) == 2
    assert ram_needed_gb(MINI, Usage(101, 1)) == 8
    small = option_for(MINI, region(MINI, "m1"), Usage(100, 0))
    big = option_for(MINI, region(MINI, "m1"), Usage(101, 0))
    assert small is not None and small.size.name == "small"
    assert big is not None and big.size.name == "big"
    forced = option_for(MINI, region(MINI, "m1"), Usage(5, 0, min_ram_gb=4))
    assert forced is not None and forced.size.name == "big"


def test_no_box_big_enough_gives_none_and_estimate_explains() -> None:
    assert option_for(MINI, region(MINI, "m1"), Usage(5, 0, min_ram_gb=64)) is None
    with pytest.raises(UsageError, match="no catalogue box has 64 GB"):
        estimate(MINI, Usage(5, 0, min_ram_gb=64), "metered")


@pytest.mark.parametrize(
    ("users", "tier", "usd"),
    [(1000, "Auth Free", 0.0), (1001, "Auth Pro", 25.0), (2000, "Auth Pro", 25.0), (2500, "Auth Pro", 30.0)],
)
def test_auth_tier_follows_monthly_active_users(users: int, tier: str, usd: float) -> None:
    cost = auth_cost(MINI, Usage(users, 0))
    assert cost.tier.name == tier
    assert cost.monthly == pytest.approx(usd)
    assert cost.monthly_eur == pytest.approx(usd / 1.25)


def test_auth_tier_can_be_forced_but_free_must_fit() -> None:
    assert auth_cost(MINI, Usage(10, 0, auth_tier="pro")).tier.key == "pro"
    with pytest.raises(UsageError, match="covers 1,000 monthly active users"):
        auth_cost(MINI, Usage(5000, 0, auth_tier="free"))


def test_real_supabase_tiers_switch_at_fifty_thousand_users() -> None:
    free, pro = REAL.auth_tier("free"), REAL.auth_tier("pro")
    assert auth_cost(REAL, Usage(free.included_mau, 0)).monthly == 0
    over = pro.included_mau + 10_000
    assert auth_cost(REAL, Usage(over, 0)).monthly == pytest.approx(pro.monthly + 10_000 * pro.per_mau_over)


def test_estimate_is_cheapest_first_and_one_option_per_region() -> None:
    options = estimate(REAL, Usage(5000, 3.0))
    totals = [o.total_eur for o in options]
    assert totals == sorted(totals)
    keys = [(o.provider, o.region.code) for o in options]
    assert len(keys) == len(set(keys))
    assert {o.provider for o in options} == {"hetzner", "oracle", "ovh"}


def test_each_option_is_the_cheapest_fitting_size_in_its_region() -> None:
    usage = Usage(5000, 3.0)
    need = ram_needed_gb(REAL, usage)
    for o in estimate(REAL, usage):
        assert o.size.ram_gb >= need and o.size.offered_in(o.region.code)
        for size in REAL.sizes_of(o.provider):
            if size.offered_in(o.region.code) and size.ram_gb >= need:
                currency = REAL.providers[o.provider].currency
                # catalogue sizes carry no traffic terms of their own, so the egress is the region's
                assert o.box_eur <= REAL.to_eur(size.price_in(o.region.code), currency) + 1e-9


def test_hetzner_singapore_pays_its_own_overage_rate() -> None:
    sin = region(REAL, "sin")
    o = option_for(REAL, sin, Usage(3000, 1.0))  # 3 TB
    assert o is not None
    assert o.egress == pytest.approx((3.0 - sin.included_tb) * sin.overage_per_tb)


def test_filters() -> None:
    assert {o.provider for o in estimate(REAL, Usage(10, 1), "oci")} == {"oracle"}
    only = estimate(REAL, Usage(10, 1), "ovh", "mumbai")
    assert [o.region.code for o in only] == ["AP-SOUTH-MUM-1"]
    with pytest.raises(UsageError, match="needs --provider"):
        estimate(REAL, Usage(10, 1), None, "mumbai")
    with pytest.raises(UsageError, match="no region in Mumbai"):
        estimate(REAL, Usage(10, 1), "hetzner", "mumbai")
    with pytest.raises(UsageError, match="no price list"):
        estimate(REAL, Usage(10, 1), "ssh")


@pytest.mark.parametrize(
    "kwargs",
    [{"users": 0, "egress_gb_per_user": 1}, {"users": 1, "egress_gb_per_user": -1},
     {"users": 1, "egress_gb_per_user": math.nan}, {"users": 1, "egress_gb_per_user": 1, "min_ram_gb": 0},
     {"users": 1, "egress_gb_per_user": 1, "auth_tier": "team"}],
)
def test_bad_usage_is_a_usage_error(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError):
        Usage(**kwargs)


# ---- properties

users = st.integers(min_value=1, max_value=2_000_000)
per_user = st.floats(min_value=0, max_value=200, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(users, users, per_user, st.booleans())
def test_cost_never_falls_when_users_grow(a: int, b: int, gb: float, free: bool) -> None:
    low, high = sorted((a, b))
    for r in REAL.regions:
        lo = option_for(REAL, r, Usage(low, gb, free_tier=free))
        hi = option_for(REAL, r, Usage(high, gb, free_tier=free))
        if lo is None or hi is None:
            assert hi is None  # if the small load does not fit, the big one cannot either
            continue
        assert hi.total_eur >= lo.total_eur - 1e-9, r.code


@settings(max_examples=60, deadline=None)
@given(users, per_user, per_user)
def test_cost_never_falls_when_egress_grows(n: int, x: float, y: float) -> None:
    low, high = sorted((x, y))
    for r in REAL.regions:
        lo, hi = option_for(REAL, r, Usage(n, low)), option_for(REAL, r, Usage(n, high))
        if lo is not None and hi is not None:
            assert hi.total_eur >= lo.total_eur - 1e-9
            assert hi.egress_eur >= lo.egress_eur - 1e-9


@settings(max_examples=60, deadline=None)
@given(users, per_user)
def test_total_is_the_sum_of_its_parts(n: int, gb: float) -> None:
    for o in estimate(REAL, Usage(n, gb)):
        assert o.egress == pytest.approx(max(0.0, o.egress_tb - o.included_tb) * o.overage_per_tb)
        assert o.total_eur == pytest.approx(o.box_eur + o.egress_eur + o.auth.monthly_eur)
