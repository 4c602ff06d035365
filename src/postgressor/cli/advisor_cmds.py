"""regions, cost, recommend: parse flags, call postgressor.advisor, render tables or JSON."""

from __future__ import annotations

import math
from typing import Any

import typer
from rich.table import Table

from postgressor.advisor import catalogue, live
from postgressor.advisor.catalogue import Catalogue, City, Region
from postgressor.advisor.cost import AUTH_CHOICES, CostOption, Usage, assumptions, estimate
from postgressor.advisor.geo import Latency, find_city
from postgressor.advisor.listing import latency_basis, region_rows
from postgressor.advisor.recommend import ranking_rule
from postgressor.advisor.recommend import recommend as rank
from postgressor.advisor.regions import provider_info
from postgressor.cli.common import console, emit_json, global_options, settings_for
from postgressor.errors import UsageError

_NEAR = typer.Option(None, "--near", help="A city your users are near (e.g. chennai); adds estimated RTT.")
_PROVIDER = typer.Option(None, "--provider", "-p", help="Only this provider (hetzner, oracle, ovh).")
_ROUTE = typer.Option(None, "--route-factor", min=1.0, help="Real route length / great circle (default 2.0).")
_LIVE = typer.Option(False, "--live", help="Refresh Hetzner prices and traffic from its API (HCLOUD_TOKEN).")
_JSON = typer.Option(False, "--json", help="Print a machine-readable result.")
_USERS = typer.Option(..., "--users", min=1, help="Monthly active users.")
_EGRESS = typer.Option(..., "--egress-gb-per-user", min=0.0, help="GB each user downloads per month.")
_MIN_RAM = typer.Option(None, "--min-ram-gb", min=0.5, help="Override the RAM sizing rule.")
_AUTH = typer.Option("auto", "--auth-tier", help=f"Supabase tier: {', '.join(AUTH_CHOICES)}.")
_NO_FREE = typer.Option(False, "--no-free-tier", help="Ignore free-tier boxes (e.g. Oracle home region elsewhere).")


def _catalogue(ctx: typer.Context, use_live: bool, provider: str | None = None) -> Catalogue:
    cat = catalogue.load()
    if not use_live:
        return cat
    if provider is not None and provider_info(provider, cat).name != "hetzner":
        raise UsageError("--live refreshes Hetzner's prices only; drop --live or use --provider hetzner")
    token, endpoint = live.hetzner_credentials(settings_for(ctx))
    prices = live.fetch_hetzner_prices(token, endpoint)
    return live.apply_hetzner_prices(cat, prices, source=f"{endpoint.rstrip('/')}/server_types")


def _tb(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 3)


def _traffic(included: float, overage: float, currency: str) -> tuple[str, str]:
    if math.isinf(included):
        return "unmetered", "-"
    return f"{included:g} TB", f"{overage:,.2f} {currency}/TB"


def _latency_json(lat: Latency | None) -> dict[str, Any] | None:
    if lat is None:
        return None
    return {"distance_km": round(lat.distance_km), "rtt_floor_ms": round(lat.floor_ms, 1),
            "rtt_estimate_ms": round(lat.estimate_ms, 1)}


def _region_json(r: Region, currency: str) -> dict[str, Any]:
    return {"provider": r.provider, "code": r.code, "city": r.city, "country": r.country,
            "included_tb": _tb(r.included_tb), "unmetered": r.unmetered, "overage_per_tb": r.overage_per_tb,
            "currency": currency, "free_tier": r.free_tier, "notes": r.notes,
            "checked_on": r.checked_on.isoformat(), "source": r.source, "live": r.live,
            "unverified": r.unverified}


def _city_json(city: City | None) -> dict[str, Any] | None:
    return None if city is None else {"name": city.name, "country": city.country, "lat": city.lat, "lon": city.lon}


def _option_json(o: CostOption) -> dict[str, Any]:
    return {
        "provider": o.provider, "region": o.region.code, "city": o.region.city,
        "size": {"name": o.size.name, "vcpus": o.size.vcpus, "ram_gb": o.size.ram_gb, "arch": o.size.arch,
                 "free_tier": o.size.free_tier, "checked_on": o.size.checked_on.isoformat(),
                 "source": o.size.source, "live": o.size.live, "unverified": o.size.unverified},
        "currency": o.currency, "box": round(o.box, 2), "egress_tb": round(o.egress_tb, 3),
        "included_tb": _tb(o.included_tb), "over_tb": round(o.over_tb, 3),
        "overage_per_tb": o.overage_per_tb, "egress": round(o.egress, 2),
        "auth": {"tier": o.auth.tier.name, "currency": o.auth.tier.currency, "monthly": round(o.auth.monthly, 2)},
        "monthly_eur": {"box": round(o.box_eur, 2), "egress": round(o.egress_eur, 2),
                        "auth": round(o.auth.monthly_eur, 2), "total": round(o.total_eur, 2)},
    }


def regions(
    ctx: typer.Context,
    near: str | None = _NEAR,
    provider: str | None = _PROVIDER,
    route_factor: float | None = _ROUTE,
    use_live: bool = _LIVE,
    json_out: bool = _JSON,
) -> None:
    """List provider regions with traffic terms, free tiers and (with --near) estimated round trips."""
    cat = _catalogue(ctx, use_live, provider)
    city = find_city(cat, near) if near else None
    rows = region_rows(cat, near=city, provider=provider, route_factor=route_factor)
    basis = latency_basis(cat, route_factor)
    if json_out or global_options(ctx).json:
        emit_json({"near": _city_json(city), "latency_basis": basis if city else None,
                   "regions": [{**_region_json(r.region, r.currency), **(_latency_json(r.latency) or {})}
                               for r in rows]})
        return
    table = Table(title=f"Regions near {city.name}" if city else "Regions", show_lines=False)
    for column in ("provider", "code", "city", *(("km", "RTT floor", "RTT est.") if city else ()),
                   "included", "overage", "free tier", "notes", "checked"):
        table.add_column(column, overflow="fold")
    for row in rows:
        r, lat = row.region, row.latency
        included, overage = _traffic(r.included_tb, r.overage_per_tb, row.currency)
        rtt = (f"{lat.distance_km:,.0f}", f"{lat.floor_ms:.0f} ms", f"~{lat.estimate_ms:.0f} ms") if lat else ()
        table.add_row(r.provider, r.code, f"{r.city}, {r.country}", *rtt, included, overage,
                      r.free_tier or "-", r.notes or "-",
                      "live" if r.live else ("unverified" if r.unverified else str(r.checked_on)))
    console.print(table)
    if city:
        console.print(basis, markup=False)
    console.print("Prices and allowances are dated catalogue figures, not quotes; sources: --json.", markup=False)


def cost(
    ctx: typer.Context,
    users: int = _USERS,
    egress_gb_per_user: float = _EGRESS,
    provider: str | None = _PROVIDER,
    region: str | None = typer.Option(None, "--region", "-r", help="A region code or city (needs --provider)."),
    min_ram_gb: float | None = _MIN_RAM,
    auth_tier: str = _AUTH,
    no_free_tier: bool = _NO_FREE,
    use_live: bool = _LIVE,
    json_out: bool = _JSON,
) -> None:
    """Estimate the monthly bill per region: box + Supabase auth tier + egress beyond the allowance."""
    usage = Usage(users, egress_gb_per_user, min_ram_gb, auth_tier.lower(), free_tier=not no_free_tier)
    cat = _catalogue(ctx, use_live, provider)
    options = estimate(cat, usage, provider, region)
    notes = assumptions(cat, usage)
    if json_out or global_options(ctx).json:
        emit_json({"users": users, "egress_gb_per_user": egress_gb_per_user, "assumptions": notes,
                   "options": [_option_json(o) for o in options]})
        return
    table = Table(title=f"Monthly estimate for {users:,} users x {egress_gb_per_user:g} GB (EUR, cheapest first)")
    for column in ("provider", "region", "box", "box €", "egress", "egress €", "auth €", "total €", "checked"):
        table.add_column(column, justify="right" if "€" in column else "left")
    for o in options:
        included, _ = _traffic(o.included_tb, o.overage_per_tb, o.currency)
        egress = "free" if math.isinf(o.included_tb) else f"{o.over_tb:,.2f} TB over {included}"
        checked = "live" if o.size.live else str(min(o.size.checked_on, o.region.checked_on))
        checked = "unverified" if (o.size.unverified or o.region.unverified) else checked
        table.add_row(o.provider, f"{o.region.code} ({o.region.city})",
                      o.size.name + (" *" if o.size.free_tier else ""), f"{o.box_eur:,.2f}", egress,
                      f"{o.egress_eur:,.2f}", f"{o.auth.monthly_eur:,.2f}", f"{o.total_eur:,.2f}", checked)
    console.print(table)
    if any(o.size.free_tier for o in options):
        console.print("* free tier: home region only, launches may fail for lack of capacity, and an Always Free "
                      "instance idle for 7 days (under ~20 % CPU, network and memory) can be reclaimed", markup=False)
    for line in notes:
        console.print(f"- {line}", markup=False)
    for text in sorted({t for o in options for t in (o.size.unverified, o.region.unverified) if t}):
        console.print(f"- unverified: {text}", markup=False)


def recommend(
    ctx: typer.Context,
    near: str = typer.Option(..., "--near", help="The city your users are near (e.g. chennai)."),
    users: int = typer.Option(1000, "--users", min=1, help="Monthly active users."),
    egress_gb_per_user: float = typer.Option(2.0, "--egress-gb-per-user", min=0.0,
                                             help="GB each user downloads per month."),
    provider: str | None = _PROVIDER,
    min_ram_gb: float | None = _MIN_RAM,
    auth_tier: str = _AUTH,
    no_free_tier: bool = _NO_FREE,
    route_factor: float | None = _ROUTE,
    use_live: bool = _LIVE,
    json_out: bool = _JSON,
) -> None:
    """Rank where to host for users near a city, by latency and cost, with the reasons for each option."""
    usage = Usage(users, egress_gb_per_user, min_ram_gb, auth_tier.lower(), free_tier=not no_free_tier)
    cat = _catalogue(ctx, use_live, provider)
    city = find_city(cat, near)
    recs = rank(cat, city, usage, provider=provider, route_factor=route_factor)
    factor = cat.assumptions.route_factor if route_factor is None else route_factor
    notes = [ranking_rule(factor), latency_basis(cat, route_factor), *assumptions(cat, usage)]
    if json_out or global_options(ctx).json:
        emit_json({"near": _city_json(city), "users": users, "egress_gb_per_user": egress_gb_per_user,
                   "assumptions": notes, "options": [
                       {"rank": i, "band": r.band, **(_latency_json(r.latency) or {}),
                        **_option_json(r.option), "reasons": list(r.reasons), "caveats": list(r.caveats),
                        "fallback": _option_json(r.fallback) if r.fallback else None}
                       for i, r in enumerate(recs, 1)]})
        return
    console.print(f"Where to host for {users:,} users near {city.name} ({egress_gb_per_user:g} GB each a month)",
                  markup=False)
    for i, r in enumerate(recs, 1):
        o = r.option
        console.print(f"\n{i}. {o.provider} {o.region.code} ({o.region.city}) on {o.size.name}: "
                      f"~{r.latency.estimate_ms:.0f} ms, about €{o.total_eur:,.2f}/month", markup=False)
        for line in r.reasons:
            console.print(f"   + {line}", markup=False)
        for line in r.caveats:
            console.print(f"   ! {line}", markup=False)
    console.print("\nHow this was worked out:", markup=False)
    for line in notes:
        console.print(f"- {line}", markup=False)
