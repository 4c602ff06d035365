"""What a new cloud server will cost, from the catalogue: the plan `up` shows before it creates one.

Figures are the catalogue's (dated, with their source); a size the catalogue does not price is said to be
unpriced, never guessed. ``postgressor regions --live`` refreshes Hetzner's figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from postgressor.advisor.catalogue import Catalogue, Region, Size, load


@dataclass(frozen=True)
class BillPlan:
    provider: str
    title: str
    region: Region
    size_name: str
    image: str
    size: Size | None  # None when the catalogue does not price this size here
    gone: str = ""  # the recorded server is gone at the provider: what that means for the data

    def lines(self) -> list[str]:
        """The plan as short lines: provider, region, size, image, price, traffic, caveats."""
        r, s = self.region, self.size
        currency = {"EUR": "€", "USD": "$"}.get(self._currency(), self._currency() + " ")
        shape = f" ({s.vcpus} vCPU, {s.ram_gb:g} GB RAM, {s.disk_gb} GB disk)" if s else ""
        out = [
            f"provider: {self.title} ({self.provider})",
            f"region:   {r.code} ({r.city}, {r.country})",
            f"size:     {self.size_name}{shape}",
            f"image:    {self.image}",
        ]
        if s is None:
            out.append(f"price:    unverified: the catalogue has no price for {self.size_name} in {r.code}; "
                       f"check the provider's price list (or 'postgressor regions --live' for Hetzner)")
        else:
            when = "live from the provider's API" if s.live else f"checked {s.checked_on}"
            figure = f"{currency}{s.price_in(r.code):,.2f}/month excl. VAT ({when}; {s.source})"
            out.append(f"price:    unverified: {figure}; {s.unverified}" if s.unverified else f"price:    {figure}")
        if math.isinf(r.included_tb):
            out.append("traffic:  egress is not billed")
        else:
            included = s.included_tb_by_region.get(r.code, r.included_tb) if s else r.included_tb
            over = s.overage_by_region.get(r.code, r.overage_per_tb) if s else r.overage_per_tb
            terms = (f"{included:g} TB/month included, then {currency}{over:,.2f}/TB "
                     f"(checked {r.checked_on}; {r.source})")  # fmt: skip
            out.append(f"traffic:  unverified: {terms}; {r.unverified}" if r.unverified else f"traffic:  {terms}")
        caveats = [text for text in ((r.free_tier if s and s.free_tier else ""), r.notes,
                                     s.notes if s else "") if text]  # fmt: skip
        out += [f"caveat:   {text}" for text in caveats]
        if self.gone:
            out.append(f"warning:  {self.gone}")
        return out

    def question(self) -> str:
        return f"Create this billed {self.title} server{', which starts empty' if self.gone else ''}?"

    def _currency(self) -> str:
        return load().providers[self.provider].currency

    def as_dict(self) -> dict[str, object]:
        s, r = self.size, self.region
        return {"provider": self.provider, "region": r.code, "size": self.size_name, "image": self.image,
                "monthly": s.price_in(r.code) if s else None, "currency": self._currency(),
                "price_checked_on": (None if s is None or s.live else s.checked_on.isoformat()),
                "price_source": s.source if s else None, "included_tb": r.included_tb,
                "overage_per_tb": r.overage_per_tb, "free_tier": bool(s and s.free_tier),
                "unverified": [t for t in ((s.unverified if s else "unpriced"), r.unverified) if t]}  # fmt: skip


def resize_lines(provider: str, region: str, server: str, old: tuple[str, str], new: tuple[str, str],
                 notes: tuple[str, ...] = (), cat: Catalogue | None = None) -> list[str]:  # fmt: skip
    """What a resize changes: the sizes (provider's name, catalogue's name) and their catalogue prices, dated."""
    cat = cat or load()
    before, after = (bill_plan(provider, region, priced, "", cat) for _, priced in (old, new))
    currency = cat.providers[provider].currency
    symbol = {"EUR": "€", "USD": "$"}.get(currency, currency + " ")

    def shape(plan: BillPlan) -> str:
        s = plan.size  # the disk is left out: whether it grows is the provider's rule (see the notes)
        return f" ({s.vcpus} vCPU, {s.ram_gb:g} GB RAM)" if s else ""

    def price(plan: BillPlan) -> str:
        return f"{symbol}{plan.size.price_in(region):,.2f}/month" if plan.size else "unpriced"

    sources = dict.fromkeys(f"{'live' if s.live else f'checked {s.checked_on}'}, {s.source}"
                            for plan in (before, after) if (s := plan.size) is not None)  # fmt: skip
    out = [f"resize:   {cat.providers[provider].title} server {server} in {region}",
           f"from:     {old[0]}{shape(before)}", f"to:       {new[0]}{shape(after)}",
           f"price:    {price(before)} → {price(after)} excl. VAT" + (f" ({'; '.join(sources)})" if sources else "")]
    out += [f"note:     {text}" for text in notes]
    for plan in (before, after):
        if plan.size is None:
            out.append(f"caveat:   the catalogue has no price for {plan.size_name} in {region}; check the provider's "
                       "price list")  # fmt: skip
        elif plan.size.unverified:
            out.append(f"caveat:   {plan.size.unverified}")
    out.append("downtime: the server restarts to change size; PostgreSQL is down meanwhile, then the deploy re-tunes "
               "it for the new RAM and CPUs")  # fmt: skip
    return list(dict.fromkeys(out))


def bill_plan(provider: str, region_code: str, size_name: str, image: str, cat: Catalogue | None = None) -> BillPlan:
    """The plan for a ``size_name`` server of ``provider`` in ``region_code`` (a catalogue size name)."""
    cat = cat or load()
    region = next(r for r in cat.regions_of(provider) if r.code == region_code)
    size = next((s for s in cat.sizes_of(provider) if s.name == size_name and s.offered_in(region_code)), None)
    return BillPlan(provider, cat.providers[provider].title, region, size_name, image, size)
