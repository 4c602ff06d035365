"""Region resolution, distances and catalogue integrity."""

from __future__ import annotations

import ast
import datetime as dt
import math
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from postgressor import providers as providers_pkg
from postgressor.advisor import catalogue as catalogue_mod
from postgressor.advisor.catalogue import load
from postgressor.advisor.geo import Latency, distance_km, find_city, known_cities, normalise
from postgressor.advisor.regions import default_region, list_regions, provider_info, resolve_region
from postgressor.config import PROVIDERS
from postgressor.errors import UsageError

CAT = load()
CLOUDS = [p for p in CAT.providers.values() if not p.regionless]


# ---- distance and latency against independently known figures

@pytest.mark.parametrize(
    ("a", "b", "km", "tolerance"),
    [
        # great-circle distances from published airport-to-airport/city tables, ±3 %
        ("london", "paris", 344, 0.03),
        ("new york", "london", 5570, 0.03),
        ("chennai", "mumbai", 1030, 0.03),
        ("chennai", "singapore", 2900, 0.03),
        ("sydney", "tokyo", 7820, 0.03),
    ],
)
def test_distance_matches_known_city_pairs(a: str, b: str, km: float, tolerance: float) -> None:
    ca, cb = find_city(CAT, a), find_city(CAT, b)
    assert distance_km(ca.lat, ca.lon, cb.lat, cb.lon) == pytest.approx(km, rel=tolerance)


@pytest.mark.parametrize(
    ("region_city", "floor_ms"),
    # REFERENCE §1: physics floors from Chennai
    [("mumbai", 10), ("hyderabad", 5), ("singapore", 29), ("nuremberg", 74)],
)
def test_rtt_floor_from_chennai_matches_reference(region_city: str, floor_ms: float) -> None:
    chennai, there = find_city(CAT, "chennai"), find_city(CAT, region_city)
    lat = Latency.between(chennai, there.lat, there.lon, CAT.assumptions.fibre_km_per_ms, 2.0)
    assert math.floor(lat.floor_ms) == floor_ms
    assert lat.estimate_ms == pytest.approx(2.0 * lat.floor_ms)


def test_quarter_meridian_is_ten_thousand_km() -> None:
    assert distance_km(0, 0, 90, 0) == pytest.approx(math.pi * 6371 / 2)


coords = st.tuples(st.floats(-90, 90), st.floats(-180, 180))


@given(coords, coords)
def test_distance_is_symmetric_and_bounded(p: tuple[float, float], q: tuple[float, float]) -> None:
    d = distance_km(*p, *q)
    assert d == pytest.approx(distance_km(*q, *p), abs=1e-6)
    assert 0 <= d <= math.pi * 6371 + 1e-6


@example(p=(0.0, 0.0), q=(1.0, 0.0), r=(5.960464477539063e-08, 180.0))  # near-antipodal: haversine failed here
@given(coords, coords, coords)
def test_distance_obeys_triangle_inequality(
    p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]
) -> None:
    assert distance_km(*p, *r) <= distance_km(*p, *q) + distance_km(*q, *r) + 1e-6


# ---- resolve_region

@pytest.mark.parametrize(
    ("provider", "name", "code"),
    [
        ("hetzner", "fsn1", "fsn1"),
        ("hetzner", "NBG1", "nbg1"),
        ("hetzner", "Helsinki", "hel1"),
        ("hetzner", "singapore", "sin"),
        ("hetzner", "ashburn", "ash"),
        ("hetzner", "hillsboro", "hil"),
        ("oracle", "AP-MUMBAI-1", "ap-mumbai-1"),
        ("oracle", "mumbai", "ap-mumbai-1"),
        ("oracle", "hyderabad", "ap-hyderabad-1"),
        ("oci", "singapore", "ap-singapore-1"),
        ("oracle", "ap-singapore-2", "ap-singapore-2"),
        ("ovh", "sgp1", "SGP1"),
        ("ovh", "Mumbai", "AP-SOUTH-MUM-1"),
        ("ovh", "ap-south-mum-1", "AP-SOUTH-MUM-1"),
        ("ovh", "warsaw", "WAW1"),
    ],
)
def test_codes_and_region_cities_resolve(provider: str, name: str, code: str) -> None:
    assert resolve_region(provider, name) == code


@pytest.mark.parametrize(
    ("provider", "city", "code"),
    [
        ("oracle", "chennai", "ap-hyderabad-1"),  # ~520 km vs ~1,030 km to Mumbai
        ("oracle", "bangalore", "ap-hyderabad-1"),
        ("ovh", "chennai", "AP-SOUTH-MUM-1"),
        ("hetzner", "frankfurt", "nbg1"),
        ("hetzner", "munich", "nbg1"),
        ("hetzner", "new york", "ash"),
        ("hetzner", "san francisco", "hil"),
    ],
)
def test_other_cities_go_to_the_nearest_region_in_country(provider: str, city: str, code: str) -> None:
    assert resolve_region(provider, city) == code
    want = find_city(CAT, city)
    chosen = next(r for r in list_regions(provider) if r.code == code)
    assert chosen.country == want.country
    for other in list_regions(provider):
        if other.country == want.country:
            assert distance_km(want.lat, want.lon, chosen.lat, chosen.lon) <= distance_km(
                want.lat, want.lon, other.lat, other.lon
            )


@pytest.mark.parametrize("city", ["mumbai", "chennai", "hyderabad", "delhi"])
def test_hetzner_has_no_india_region_and_says_what_is_nearest(city: str) -> None:
    with pytest.raises(UsageError) as err:
        resolve_region("hetzner", city)
    message = str(err.value)
    assert "\n" not in message
    assert "nearest: sin (Singapore" in message  # Singapore is Hetzner's closest location to India


def test_no_silent_move_across_a_border() -> None:
    with pytest.raises(UsageError, match="no region in London"):
        resolve_region("hetzner", "london")


def test_unknown_region_suggests_a_close_code() -> None:
    with pytest.raises(UsageError, match="did you mean fsn1"):
        resolve_region("hetzner", "fsn2")


def test_unknown_provider_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown provider 'aws'"):
        resolve_region("aws", "x")


@pytest.mark.parametrize("provider", ["local", "ssh"])
def test_regionless_providers(provider: str) -> None:
    assert resolve_region(provider, "") == ""
    assert resolve_region(provider, "  ") == ""
    assert default_region(provider) == ""
    assert list_regions(provider) == []
    with pytest.raises(UsageError, match="has no regions"):
        resolve_region(provider, "fsn1")


@pytest.mark.parametrize("provider", [p.name for p in CLOUDS])
def test_empty_name_gives_the_default_and_defaults_exist(provider: str) -> None:
    code = default_region(provider)
    assert code in {r.code for r in list_regions(provider)}
    assert resolve_region(provider, "") == code


@pytest.mark.parametrize("region", CAT.regions, ids=lambda r: f"{r.provider}:{r.code}")
def test_every_catalogue_region_resolves_to_itself(region: catalogue_mod.Region) -> None:
    assert resolve_region(region.provider, region.code) == region.code
    assert resolve_region(region.provider, region.code.swapcase()) == region.code
    assert resolve_region(region.provider, region.city) == region.code or normalise(region.city) in {
        normalise(a) for r in list_regions(region.provider) if r is not region for a in (r.city, *r.aliases)
    }


# ---- catalogue integrity

def test_catalogue_providers_match_the_config_model() -> None:
    assert set(CAT.providers) == set(PROVIDERS)
    for name in PROVIDERS:
        assert provider_info(name).name == name


def test_reference_regions_are_all_in_the_catalogue() -> None:
    # REFERENCE §4 lists the locations each provider module uses; the catalogue must know them all
    expected = {
        "hetzner": {"fsn1", "nbg1", "hel1", "ash", "hil", "sin"},
        "oracle": {"ap-mumbai-1", "ap-hyderabad-1", "ap-singapore-1", "ap-singapore-2"},
        "ovh": {"SGP1", "AP-SOUTH-MUM-1"},
    }
    for provider, codes in expected.items():
        assert codes <= {r.code for r in list_regions(provider)}
    assert {r.code for r in list_regions("hetzner")} == expected["hetzner"]  # and Hetzner has no others


def test_every_entry_is_dated_and_sourced() -> None:
    dated = [*CAT.regions, *CAT.sizes, *CAT.auth_tiers]
    for entry in dated:
        assert isinstance(entry.checked_on, dt.date), entry
        assert entry.checked_on <= dt.date.today()
        assert entry.source.startswith("https://"), entry
    assert CAT.assumptions.usd_per_eur_source.startswith("https://")


def test_region_codes_and_aliases_are_unambiguous() -> None:
    for provider in CAT.providers:
        regions = CAT.regions_of(provider)
        codes = [r.code.lower() for r in regions]
        assert len(codes) == len(set(codes)), provider
        aliases = [normalise(a) for r in regions for a in r.aliases]
        assert len(aliases) == len(set(aliases)), provider
        assert not set(aliases) & set(codes)


def test_every_alias_resolves_back_to_its_region() -> None:
    for region in CAT.regions:
        for alias in region.aliases:
            assert resolve_region(region.provider, alias) == region.code


def test_regions_and_sizes_are_consistent() -> None:
    for region in CAT.regions:
        assert region.provider in CAT.providers and not CAT.providers[region.provider].regionless
        assert -90 <= region.lat <= 90 and -180 <= region.lon <= 180
        assert region.overage_per_tb >= 0 and region.included_tb > 0
        assert any(s.offered_in(region.code) for s in CAT.sizes_of(region.provider)), region.code
    for size in CAT.sizes:
        codes = {r.code for r in CAT.regions_of(size.provider)}
        assert size.regions == ("*",) or set(size.regions) <= codes, size.name
        assert set(size.monthly_by_region) <= codes, size.name
        assert size.monthly >= 0 and size.ram_gb > 0
    # retired Hetzner types must not come back
    assert not {"cx22", "cpx11", "cpx21", "cx11"} & {s.name for s in CAT.sizes_of("hetzner")}


def test_default_regions_exist() -> None:
    for provider in CAT.providers.values():
        if provider.regionless:
            assert provider.default_region == ""
        else:
            assert provider.default_region in {r.code for r in CAT.regions_of(provider.name)}


def test_packaged_file_is_the_one_loaded() -> None:
    text = resources.files("postgressor.advisor").joinpath("catalogue.toml").read_text(encoding="utf-8")
    assert catalogue_mod.parse(tomllib.loads(text)) == CAT


def test_city_names_do_not_collide_with_different_places() -> None:
    # the same name may appear as a region city and a table city only if they are the same place
    for name, city in known_cities(CAT).items():
        for region in CAT.regions:
            if normalise(region.city) == name:
                assert distance_km(city.lat, city.lon, region.lat, region.lon) < 50, name


def test_unknown_city_lists_close_matches() -> None:
    with pytest.raises(UsageError) as err:
        find_city(CAT, "chenai")
    assert "chennai" in str(err.value) and "\n" not in str(err.value)


# ---- the provider modules and the catalogue agree (a missing module is a failure)

PROVIDER_MODULES = {"hetzner": ("hetzner",), "oracle": ("oracle", "oci"), "ovh": ("ovh",)}
CODE_SHAPES = {
    "hetzner": re.compile(r"^(fsn|nbg|hel|ash|hil|sin)\d?$"),
    "oracle": re.compile(r"^[a-z]{2}-[a-z]+-\d$"),
    "ovh": re.compile(r"^((GRA|SBG|RBX|DE|UK|WAW|BHS|SGP|SYD)\d{1,2}|[A-Z]{2}-[A-Z]+-[A-Z]+-\d)$"),
}


def _provider_source(provider: str) -> tuple[Path, str] | None:
    base = Path(providers_pkg.__file__).parent
    for stem in PROVIDER_MODULES[provider]:
        for candidate in (base / f"{stem}.py", base / stem / "__init__.py"):
            if candidate.is_file():
                sources = [candidate] if candidate.name != "__init__.py" else sorted(candidate.parent.glob("*.py"))
                return candidate, "\n".join(p.read_text(encoding="utf-8") for p in sources)
    return None


@pytest.mark.parametrize("provider", sorted(PROVIDER_MODULES))
def test_provider_modules_use_the_catalogue_for_regions(provider: str) -> None:
    found = _provider_source(provider)
    assert found is not None, (f"no {provider} provider module among {PROVIDER_MODULES[provider]} in "
                               "postgressor/providers: a renamed module must be named here too")  # fmt: skip
    path, text = found
    # every region-looking literal in the provider's code is a catalogue region of that provider ...
    known = {r.code for r in list_regions(provider)}
    literals = {
        node.value for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE_SHAPES[provider].match(node.value)
    }
    assert literals <= known, f"{path}: region codes missing from catalogue.toml: {sorted(literals - known)}"
    # ... and the provider resolves --region through resolve_region, so it accepts every catalogue region
    assert "resolve_region" in text, f"{path} should resolve --region with advisor.regions.resolve_region"
