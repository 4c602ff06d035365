"""--live: Hetzner's GET /server_types through the real hcloud SDK against a loopback fake."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from postgressor.advisor import live
from postgressor.advisor.catalogue import load
from postgressor.advisor.cost import Usage, option_for
from postgressor.errors import PostgressorError, UsageError

TOKEN = "test-token-0123"
TIB = 2**40


def price(location: str, monthly: str, traffic_tib: int, per_tb: str) -> dict[str, Any]:
    """One entry of server_type.prices as the API returns it (amounts are decimal strings)."""
    return {
        "location": location,
        "price_hourly": {"net": "0.0100000000", "gross": "0.0119000000000000"},
        "price_monthly": {"net": monthly, "gross": str(round(float(monthly) * 1.19, 4))},
        "included_traffic": traffic_tib * TIB,
        "price_per_tb_traffic": {"net": per_tb, "gross": str(round(float(per_tb) * 1.19, 4))},
    }


def location(lid: int, name: str, *, deprecated: bool = False, available: bool = True) -> dict[str, Any]:
    deprecation = {"announced": "2025-10-01T00:00:00+00:00",
                   "unavailable_after": "2026-01-01T00:00:00+00:00"} if deprecated else None
    return {"id": lid, "name": name, "deprecation": deprecation, "available": available, "recommended": available}


def server_type(sid: int, name: str, cores: int, memory: float, disk: int, arch: str,
                prices: list[dict[str, Any]], locations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": sid, "name": name, "description": name.upper(), "category": "shared", "cores": cores,
        "memory": memory, "disk": disk, "prices": prices, "storage_type": "local", "cpu_type": "shared",
        "architecture": arch, "deprecated": False, "deprecation": None, "included_traffic": 0,
        "locations": locations,
    }


TYPES = [
    server_type(1, "cx23", 2, 4.0, 40, "x86",
                [price("fsn1", "3.9900000000", 20, "1.0000000000"),
                 price("nbg1", "3.9900000000", 20, "1.0000000000")],
                [location(1, "fsn1"), location(2, "nbg1")]),
    server_type(2, "cpx22", 2, 4.0, 80, "x86",
                [price("fsn1", "7.0000000000", 20, "1.0000000000"),
                 price("sin", "9.5000000000", 1, "7.4000000000"),
                 price("ash", "8.0000000000", 1, "1.0000000000")],
                [location(1, "fsn1"), location(6, "sin"), location(4, "ash", available=False)]),
    server_type(3, "cx22", 2, 4.0, 40, "x86",  # retired: deprecated everywhere
                [price("fsn1", "1.0000000000", 20, "1.0000000000")],
                [location(1, "fsn1", deprecated=True)]),
    server_type(4, "cpx42", 8, 16.0, 320, "x86",
                [price("sin", "30.0000000000", 2, "7.4000000000")],
                [location(6, "sin")]),
]


def serve_pages(httpserver: HTTPServer, types: list[dict[str, Any]], per_page: int = 2) -> list[Request]:
    """Serve GET /server_types paginated like the API (meta.pagination); returns the requests seen."""
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            body = {"error": {"code": "unauthorized", "message": "unable to authenticate", "details": {}}}
            return Response(json.dumps(body), status=401, content_type="application/json")
        page = int(request.args.get("page", "1"))
        last = max(1, math.ceil(len(types) / per_page))
        chunk = types[(page - 1) * per_page: page * per_page]
        meta = {"pagination": {"page": page, "per_page": per_page, "previous_page": page - 1 or None,
                               "next_page": page + 1 if page < last else None, "last_page": last,
                               "total_entries": len(types)}}
        return Response(json.dumps({"server_types": chunk, "meta": meta}), content_type="application/json")

    httpserver.expect_request("/v1/server_types", method="GET").respond_with_handler(handler)
    return seen


def endpoint(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/v1")


def test_fetch_reads_prices_traffic_and_skips_retired_or_unavailable(httpserver: HTTPServer) -> None:
    seen = serve_pages(httpserver, TYPES)
    prices = live.fetch_hetzner_prices(TOKEN, endpoint(httpserver))
    assert len(seen) == 2  # both pages were read
    got = {(p.server_type, p.location): p for p in prices}
    assert set(got) == {("cx23", "fsn1"), ("cx23", "nbg1"), ("cpx22", "fsn1"), ("cpx22", "sin"),
                        ("cpx42", "sin")}  # cx22 deprecated, cpx22@ash unavailable
    sin = got[("cpx22", "sin")]
    assert (sin.monthly_net, sin.included_tb, sin.overage_per_tb) == (9.5, 1.0, 7.4)
    assert got[("cx23", "fsn1")].included_tb == 20.0
    assert (sin.cores, sin.memory_gb, sin.disk_gb, sin.arch) == (2, 4.0, 80, "x86")


def test_live_prices_replace_the_catalogue_for_hetzner_only(httpserver: HTTPServer) -> None:
    serve_pages(httpserver, TYPES)
    cat = load()
    prices = live.fetch_hetzner_prices(TOKEN, endpoint(httpserver))
    fresh = live.apply_hetzner_prices(cat, prices, source="http://fake/server_types")
    assert {s.name for s in fresh.sizes_of("hetzner")} == {"cx23", "cpx22", "cpx42"}
    assert all(s.live for s in fresh.sizes_of("hetzner"))
    assert fresh.sizes_of("ovh") == cat.sizes_of("ovh")
    sin = next(r for r in fresh.regions if r.code == "sin")
    assert sin.live and sin.included_tb == 1.0 and sin.overage_per_tb == 7.4
    hel = next(r for r in fresh.regions if r.code == "hel1")
    assert not hel.live and hel == next(r for r in cat.regions if r.code == "hel1")
    # per-type traffic: 2 TB egress fits cpx42's 2 TB at sin, but costs 1 TB x 7.40 on cpx22
    small = option_for(fresh, sin, Usage(1000, 2.0))
    big = option_for(fresh, sin, Usage(1000, 2.0, min_ram_gb=16))
    assert small is not None and small.size.name == "cpx22" and small.egress == pytest.approx(7.4)
    assert big is not None and big.size.name == "cpx42" and big.egress == 0


def test_cheaper_box_with_less_traffic_can_lose(httpserver: HTTPServer) -> None:
    types = [
        server_type(1, "lean", 2, 4.0, 40, "x86", [price("sin", "5.0000000000", 1, "7.4000000000")],
                    [location(6, "sin")]),
        server_type(2, "roomy", 2, 4.0, 80, "x86", [price("sin", "8.0000000000", 2, "7.4000000000")],
                    [location(6, "sin")]),
    ]
    serve_pages(httpserver, types)
    fresh = live.apply_hetzner_prices(load(), live.fetch_hetzner_prices(TOKEN, endpoint(httpserver)), "x")
    sin = next(r for r in fresh.regions if r.code == "sin")
    light = option_for(fresh, sin, Usage(1000, 1.0))  # 1 TB: lean 5.00 < roomy 8.00
    heavy = option_for(fresh, sin, Usage(1000, 2.0))  # 2 TB: lean 5.00 + 7.40 > roomy 8.00
    assert light is not None and light.size.name == "lean"
    assert heavy is not None and heavy.size.name == "roomy" and heavy.total_eur == pytest.approx(8.0)


def test_refused_token_is_one_line(httpserver: HTTPServer) -> None:
    serve_pages(httpserver, TYPES)
    with pytest.raises(PostgressorError) as err:
        live.fetch_hetzner_prices("wrong", endpoint(httpserver))
    assert not isinstance(err.value, UsageError)
    assert "refused" in str(err.value) and "unauthorized" in str(err.value) and "\n" not in str(err.value)


def test_rate_limit_retries_then_fails_without_sleeping_long(httpserver: HTTPServer) -> None:
    body = {"error": {"code": "rate_limit_exceeded", "message": "limit of 3600 requests per hour reached",
                      "details": {}}}
    httpserver.expect_request("/v1/server_types").respond_with_json(body, status=429)
    waits: list[int] = []

    def no_wait(retries: int) -> float:
        waits.append(retries)
        return 0.0

    with pytest.raises(PostgressorError, match="rate_limit_exceeded"):
        live.fetch_hetzner_prices(TOKEN, endpoint(httpserver), retries=2, backoff=no_wait)
    assert waits == [0, 1]
    assert len(httpserver.log) == 3


def test_unreachable_api_is_one_line() -> None:
    with pytest.raises(PostgressorError, match="cannot reach the Hetzner API"):
        live.fetch_hetzner_prices(TOKEN, "http://127.0.0.1:9/v1", timeout=2, retries=0)


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    monkeypatch.delenv("HCLOUD_ENDPOINT", raising=False)
    with pytest.raises(UsageError, match="HCLOUD_TOKEN"):
        live.hetzner_credentials(None)
    monkeypatch.setenv("HCLOUD_TOKEN", "abc")
    assert live.hetzner_credentials(None) == ("abc", live.DEFAULT_ENDPOINT)
    monkeypatch.setenv("HCLOUD_ENDPOINT", "http://127.0.0.1:1/v1")
    assert live.hetzner_credentials(None)[1] == "http://127.0.0.1:1/v1"


def test_credentials_from_a_config_section(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    monkeypatch.delenv("HCLOUD_ENDPOINT", raising=False)

    class Section:
        token = SecretStr("from-config")
        api_endpoint = "http://127.0.0.1:2/v1"

    class Settings:
        hetzner = Section()

    assert live.hetzner_credentials(Settings()) == ("from-config", "http://127.0.0.1:2/v1")


def test_malformed_price_is_reported(httpserver: HTTPServer) -> None:
    broken = server_type(9, "cx23", 2, 4.0, 40, "x86", [{**price("fsn1", "1", 20, "1"), "price_monthly": {}}],
                         [location(1, "fsn1")])
    serve_pages(httpserver, [broken])
    with pytest.raises(PostgressorError, match="unexpected monthly price"):
        live.fetch_hetzner_prices(TOKEN, endpoint(httpserver))
