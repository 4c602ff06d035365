"""Pick the cloud provider for a --region when none is configured.

The providers that serve the region (``resolve_region`` accepts it: the code itself, the city, or a region in
the same country) are ranked as ``postgressor recommend --near <the region's city>`` ranks them with its
default usage, and the first whose credentials are present wins. None present is a UsageError naming every
provider that serves the region and the credential it needs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from postgressor.advisor.catalogue import Catalogue, City, Region, load
from postgressor.advisor.cost import Usage
from postgressor.advisor.geo import known_cities, normalise
from postgressor.advisor.recommend import Recommendation, recommend
from postgressor.advisor.regions import resolve_region
from postgressor.errors import UsageError

# recommend's defaults (cli/advisor_cmds.py): 1,000 monthly active users downloading 2 GB each.
DEFAULT_USAGE = Usage(users=1000, egress_gb_per_user=2.0)


class Credential(Protocol):
    """Where a provider's credentials were found ("" when absent) and what it needs."""

    @property
    def found(self) -> str: ...

    @property
    def needs(self) -> str: ...


@dataclass(frozen=True)
class Candidate:
    provider: str
    region: Region
    rank: Recommendation | None  # None when no box size of the catalogue fits the default usage


@dataclass(frozen=True)
class Choice:
    provider: str
    region: str  # the provider's region code
    reason: str  # one line: which and why


def city_of(cat: Catalogue, wanted: str) -> City:
    """The city a --region means: a region code's city, else a known city; UsageError when neither."""
    for region in cat.regions:
        if region.code.lower() == wanted.strip().lower():
            return City(region.city, region.country, region.lat, region.lon, region.aliases)
    cities = known_cities(cat)
    city = cities.get(normalise(wanted))
    if city is None:
        names = [*cities, *(r.code.lower() for r in cat.regions)]
        close = difflib.get_close_matches(wanted.strip().lower(), names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(f"unknown region '{wanted}'; {hint}use a city or a provider's region code "
                         "(see 'postgressor regions')")  # fmt: skip
    return city


def candidates(cat: Catalogue, wanted: str) -> list[Candidate]:
    """Providers serving ``wanted`` with their region, best first (recommend's order)."""
    city = city_of(cat, wanted)
    serving: dict[str, Region] = {}
    for info in cat.providers.values():
        if info.regionless:
            continue
        try:
            code = resolve_region(info.name, wanted, cat)
        except UsageError:
            continue
        serving[info.name] = next(r for r in cat.regions_of(info.name) if r.code == code)
    if not serving:
        raise UsageError(f"no provider serves '{wanted}' or its country; see 'postgressor recommend --near "
                         f"{normalise(city.name)}' for the nearest regions")  # fmt: skip
    ranked = recommend(cat, city, DEFAULT_USAGE, per_provider=len(cat.regions))
    out: list[Candidate] = []
    for rec in ranked:
        region = serving.get(rec.option.provider)
        if region is not None and region.code == rec.option.region.code:
            out.append(Candidate(region.provider, region, rec))
    listed = {c.provider for c in out}
    out += [Candidate(p, r, None) for p, r in serving.items() if p not in listed]
    return out


def choose(wanted: str, credential: Callable[[str], Credential], cat: Catalogue | None = None) -> Choice:
    """The best-ranked provider serving ``wanted`` whose credentials are present; UsageError when none is."""
    cat = cat or load()
    ranked = candidates(cat, wanted)
    checked = [(c, credential(c.provider)) for c in ranked]
    for position, (cand, cred) in enumerate(checked):
        if not cred.found:
            continue
        skipped = [f"{c.provider} ranks higher but has no credentials" for c, _ in checked[:position]]
        why = cand.rank.reasons[1] if cand.rank else "no catalogued size fits; priced at the provider"
        band = f"{cand.rank.band}, " if cand.rank else ""
        reason = (f"provider {cand.provider} ({cand.region.code}, {cand.region.city}): no provider configured, "
                  f"it is #{position + 1} of {len(ranked)} serving '{wanted}' as 'recommend' ranks them "
                  f"({band}{why}); credentials found: {cred.found}"
                  + (f"; {'; '.join(skipped)}" if skipped else ""))  # fmt: skip
        return Choice(cand.provider, cand.region.code, reason)
    needs = "; ".join(f"{c.provider} ({c.region.code}) needs {cred.needs}" for c, cred in checked)
    raise UsageError(f"no provider configured and no credentials found for any provider serving '{wanted}': "
                     f"{needs}; or pass --provider")  # fmt: skip
