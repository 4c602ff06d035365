"""Monthly cost estimate per region: the cheapest box that fits, the auth tier, and egress overage."""

from __future__ import annotations

import math
from dataclasses import dataclass

from postgressor.advisor.catalogue import AuthTier, Catalogue, Region, Size
from postgressor.advisor.regions import provider_info, resolve_region
from postgressor.errors import UsageError

AUTH_CHOICES = ("auto", "free", "pro")


@dataclass(frozen=True)
class Usage:
    users: int  # monthly active users
    egress_gb_per_user: float  # GB each user downloads from the box per month
    min_ram_gb: float | None = None  # overrides the catalogue's sizing table
    auth_tier: str = "auto"
    free_tier: bool = True  # consider free-tier boxes (Oracle Always Free)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise UsageError(f"--users must be at least 1 (got {self.users})")
        if not (self.egress_gb_per_user >= 0 and math.isfinite(self.egress_gb_per_user)):
            raise UsageError(f"--egress-gb-per-user must be 0 or more (got {self.egress_gb_per_user})")
        if self.min_ram_gb is not None and self.min_ram_gb <= 0:
            raise UsageError(f"--min-ram-gb must be positive (got {self.min_ram_gb})")
        if self.auth_tier not in AUTH_CHOICES:
            raise UsageError(f"--auth-tier must be one of {', '.join(AUTH_CHOICES)} (got {self.auth_tier!r})")

    @property
    def egress_tb(self) -> float:
        return self.users * self.egress_gb_per_user / 1000


@dataclass(frozen=True)
class AuthCost:
    tier: AuthTier
    monthly: float  # in the tier's currency
    monthly_eur: float


@dataclass(frozen=True)
class CostOption:
    region: Region
    size: Size
    currency: str
    box: float  # provider's currency
    included_tb: float  # math.inf when egress is not billed
    overage_per_tb: float
    egress_tb: float
    over_tb: float
    egress: float  # provider's currency
    box_eur: float
    egress_eur: float
    auth: AuthCost
    ram_needed_gb: float

    @property
    def total_eur(self) -> float:
        return self.box_eur + self.egress_eur + self.auth.monthly_eur

    @property
    def provider(self) -> str:
        return self.region.provider


def ram_needed_gb(cat: Catalogue, usage: Usage) -> float:
    if usage.min_ram_gb is not None:
        return usage.min_ram_gb
    for step in cat.assumptions.sizing:
        if usage.users <= step.max_users:
            return step.min_ram_gb
    return cat.assumptions.sizing[-1].min_ram_gb


def auth_cost(cat: Catalogue, usage: Usage) -> AuthCost:
    """Free while the users fit its allowance (or when asked), Pro otherwise; Pro charges per extra MAU."""
    free, pro = cat.auth_tier("free"), cat.auth_tier("pro")
    if usage.auth_tier == "free" and usage.users > free.included_mau:
        raise UsageError(f"{free.name} covers {free.included_mau:,} monthly active users, not "
                         f"{usage.users:,}; use --auth-tier pro or auto")
    use_free = usage.auth_tier == "free" or (usage.auth_tier == "auto" and usage.users <= free.included_mau)
    tier = free if use_free else pro
    monthly = tier.monthly + max(0, usage.users - tier.included_mau) * tier.per_mau_over
    return AuthCost(tier, monthly, cat.to_eur(monthly, tier.currency))


def _priced(cat: Catalogue, region: Region, size: Size, usage: Usage, ram: float) -> CostOption:
    currency = cat.providers[region.provider].currency
    included = size.included_tb_by_region.get(region.code, region.included_tb)
    per_tb = size.overage_by_region.get(region.code, region.overage_per_tb)
    over = max(0.0, usage.egress_tb - included)
    box = size.price_in(region.code)
    egress = over * per_tb
    return CostOption(
        region=region, size=size, currency=currency, box=box, included_tb=included,
        overage_per_tb=per_tb, egress_tb=usage.egress_tb, over_tb=over, egress=egress,
        box_eur=cat.to_eur(box, currency), egress_eur=cat.to_eur(egress, currency),
        auth=auth_cost(cat, usage), ram_needed_gb=ram,
    )


def option_for(
    cat: Catalogue, region: Region, usage: Usage, *, free_tier: bool | None = None
) -> CostOption | None:
    """The cheapest way (box + egress) to serve ``usage`` from ``region``, or None when nothing fits.

    ``free_tier`` overrides ``usage.free_tier`` (e.g. to price the paid fallback of a free option).
    """
    allow_free = usage.free_tier if free_tier is None else free_tier
    ram = ram_needed_gb(cat, usage)
    options = [
        _priced(cat, region, s, usage, ram)
        for s in cat.sizes_of(region.provider)
        if s.offered_in(region.code) and s.ram_gb >= ram and (allow_free or not s.free_tier)
    ]
    return min(options, key=lambda o: (o.total_eur, o.size.ram_gb, o.size.name), default=None)


def cloud_regions(cat: Catalogue, provider: str | None = None, region: str | None = None) -> list[Region]:
    """The regions a cost question is about: all clouds, one provider, or one region of one provider."""
    if region and not provider:
        raise UsageError("--region needs --provider (region names differ between providers)")
    if provider is None:
        return [r for r in cat.regions if not cat.providers[r.provider].regionless]
    info = provider_info(provider, cat)
    if info.regionless:
        raise UsageError(f"provider '{info.name}' has no price list ({info.note}); "
                         f"choose one of {', '.join(p for p, i in cat.providers.items() if not i.regionless)}")
    if region:
        code = resolve_region(info.name, region, cat)
        return [r for r in cat.regions_of(info.name) if r.code == code]
    return cat.regions_of(info.name)


def estimate(cat: Catalogue, usage: Usage, provider: str | None = None, region: str | None = None) -> list[CostOption]:
    """One option per region (the cheapest box that fits), cheapest total first."""
    options = [o for r in cloud_regions(cat, provider, region) if (o := option_for(cat, r, usage))]
    if not options:
        raise UsageError(f"no catalogue box has {ram_needed_gb(cat, usage):g} GB RAM in the chosen regions; "
                         "lower --min-ram-gb or widen --provider/--region")
    return sorted(options, key=lambda o: (o.total_eur, o.provider, o.region.code))


def assumptions(cat: Catalogue, usage: Usage) -> list[str]:
    """The assumptions behind every estimate, as sentences to print next to it."""
    a = cat.assumptions
    sizing = ", ".join(f"<= {s.max_users:,} users: {s.min_ram_gb:g} GB" for s in a.sizing[:-1])
    free, pro = cat.auth_tier("free"), cat.auth_tier("pro")
    return [
        f"{usage.users:,} monthly active users x {usage.egress_gb_per_user:g} GB each = "
        f"{usage.egress_tb:,.2f} TB/month of egress from the box (1 TB = 1000 GB)",
        f"box: the cheapest catalogue size with >= {ram_needed_gb(cat, usage):g} GB RAM "
        + ("(--min-ram-gb)" if usage.min_ram_gb is not None else f"(sizing rule: {sizing}; more: "
           f"{a.sizing[-1].min_ram_gb:g} GB)")
        + ("; free-tier boxes included (Oracle Always Free: home region only, capacity permitting)"
           if usage.free_tier else "; free-tier boxes excluded"),
        f"auth: Supabase used for auth only; {free.name} up to {free.included_mau:,} MAU, else {pro.name} "
        f"${pro.monthly:g} + ${pro.per_mau_over:g}/MAU beyond {pro.included_mau:,} (checked {pro.checked_on})",
        "egress: only traffic beyond the region's (or box's) included allowance is charged; ingress is free; "
        "disks, backups, IPv4 and VAT are not included",
        f"USD converted at {a.usd_per_eur:g} USD/EUR ({a.usd_per_eur_checked_on}); prices are catalogue "
        "figures with their checked-on dates, not live quotes (Hetzner: add --live)",
    ]
