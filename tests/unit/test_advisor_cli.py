"""regions / cost / recommend through the Typer app: exit codes 0 (ok), 1 (failure), 2 (bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from typer.testing import CliRunner

from postgressor.advisor.catalogue import load
from postgressor.cli import app
from postgressor.errors import PostgressorError

CAT = load()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray postgressor.toml or .env
    for name in ("HCLOUD_TOKEN", "HCLOUD_ENDPOINT", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def run(*args: str) -> tuple[int, str, str]:
    """Invoke the app the way main() does: a PostgressorError becomes its exit code and one line."""
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, PostgressorError):
        return result.exception.exit_code, result.stdout, str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_regions_json_lists_every_cloud_region_with_its_sources() -> None:
    code, out, _ = run("regions", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["near"] is None
    assert {(r["provider"], r["code"]) for r in data["regions"]} == {(r.provider, r.code) for r in CAT.regions}
    assert all(r["checked_on"] and r["source"].startswith("https://") for r in data["regions"])


def test_regions_near_sorts_by_distance_and_states_the_basis() -> None:
    code, out, _ = run("--json", "regions", "--near", "Chennai", "--provider", "oracle")
    assert code == 0
    data = json.loads(out)
    rows = data["regions"]
    assert {r["provider"] for r in rows} == {"oracle"}
    assert [r["distance_km"] for r in rows] == sorted(r["distance_km"] for r in rows)
    assert rows[0]["code"] == "ap-hyderabad-1"
    assert all(r["rtt_estimate_ms"] == pytest.approx(2 * r["rtt_floor_ms"], abs=0.11) for r in rows)
    assert "200 km/ms" in data["latency_basis"]


def test_regions_table_shows_floor_and_estimate() -> None:
    code, out, _ = run("regions", "--near", "chennai", "--provider", "ovh", "--route-factor", "1.5")
    assert code == 0
    assert "RTT floor" in out and "RTT est." in out and "AP-SOUTH-MUM-1" in out
    assert "x 1.5" in out


@pytest.mark.parametrize(
    "args",
    [
        ("regions", "--near", "atlantis"),
        ("regions", "--provider", "aws"),
        ("regions", "--route-factor", "0.5"),
        ("cost", "--users", "0", "--egress-gb-per-user", "1"),
        ("cost", "--users", "10"),
        ("cost", "--users", "10", "--egress-gb-per-user", "-1"),
        ("cost", "--users", "10", "--egress-gb-per-user", "1", "--region", "mumbai"),
        ("cost", "--users", "10", "--egress-gb-per-user", "1", "--provider", "hetzner", "--region", "mumbai"),
        ("cost", "--users", "10", "--egress-gb-per-user", "1", "--provider", "local"),
        ("cost", "--users", "10", "--egress-gb-per-user", "1", "--auth-tier", "team"),
        ("recommend",),
        ("recommend", "--near", "gotham"),
        ("regions", "--live"),  # no token
        ("regions", "--live", "--provider", "ovh"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...]) -> None:
    code, _, err = run(*args)
    assert code == 2, err
    if not err.startswith("Usage") and "Error" not in err:  # our own messages are one line
        assert "\n" not in err.strip()


def test_cost_json_is_cheapest_first_with_assumptions() -> None:
    code, out, _ = run("cost", "--users", "3000", "--egress-gb-per-user", "2", "--json")
    assert code == 0
    data = json.loads(out)
    totals = [o["monthly_eur"]["total"] for o in data["options"]]
    assert totals == sorted(totals)
    assert any("3,000 monthly active users" in a for a in data["assumptions"])
    for o in data["options"]:
        m = o["monthly_eur"]
        assert m["total"] == pytest.approx(m["box"] + m["egress"] + m["auth"], abs=0.02)


def test_cost_for_one_region_by_city_name() -> None:
    code, out, _ = run("cost", "--users", "2000", "--egress-gb-per-user", "1", "-p", "hetzner", "-r", "singapore",
                       "--json")
    assert code == 0
    (only,) = json.loads(out)["options"]
    sin = next(r for r in CAT.regions if r.code == "sin")
    assert only["region"] == "sin"
    assert only["over_tb"] == pytest.approx(2.0 - sin.included_tb)
    assert only["egress"] == pytest.approx((2.0 - sin.included_tb) * sin.overage_per_tb, abs=0.01)


def test_cost_table_prints_assumptions() -> None:
    code, out, _ = run("cost", "--users", "500", "--egress-gb-per-user", "1", "--no-free-tier")
    assert code == 0
    assert "cheapest first" in out and "free-tier boxes excluded" in out and "USD/EUR" in out


def test_recommend_json_has_reasons_and_ranks() -> None:
    code, out, _ = run("recommend", "--near", "chennai", "--users", "1000", "--egress-gb-per-user", "5", "--json")
    assert code == 0
    data = json.loads(out)
    assert [o["rank"] for o in data["options"]] == list(range(1, len(data["options"]) + 1))
    assert all(o["reasons"] for o in data["options"])
    assert data["options"][0]["provider"] == "oracle"
    assert any("ranked by latency band" in a for a in data["assumptions"])


def test_recommend_text() -> None:
    code, out, _ = run("recommend", "--near", "bengaluru")
    assert code == 0
    assert "near Bangalore" in out and "How this was worked out" in out and "1." in out


def test_live_uses_the_token_and_endpoint(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_live_prices import TOKEN, TYPES, serve_pages

    serve_pages(httpserver, TYPES)
    monkeypatch.setenv("HCLOUD_TOKEN", TOKEN)
    monkeypatch.setenv("HCLOUD_ENDPOINT", httpserver.url_for("/v1"))
    code, out, err = run("regions", "--provider", "hetzner", "--live", "--json")
    assert code == 0, err
    sin = next(r for r in json.loads(out)["regions"] if r["code"] == "sin")
    assert sin["live"] and sin["overage_per_tb"] == 7.4 and sin["source"].endswith("/v1/server_types")
    code, out, _ = run("cost", "--users", "100", "--egress-gb-per-user", "1", "-p", "hetzner", "--live", "--json")
    assert code == 0
    assert {o["size"]["name"] for o in json.loads(out)["options"]} <= {"cx23", "cpx22", "cpx42"}


def test_live_refused_exits_1(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_live_prices import TYPES, serve_pages

    serve_pages(httpserver, TYPES)
    monkeypatch.setenv("HCLOUD_TOKEN", "revoked")
    monkeypatch.setenv("HCLOUD_ENDPOINT", httpserver.url_for("/v1"))
    code, _, err = run("regions", "--live")
    assert code == 1 and "refused" in err
