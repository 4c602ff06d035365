"""`up --region` with no provider configured, and the confirmation before a billed server (issue 14, items 1-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudfakes import oci
from postgressor.cli import app, common
from postgressor.config import load_settings
from postgressor.providers.cloud import CloudProvider
from postgressor.state import open_state

CREDENTIAL_VARS = (
    "HCLOUD_TOKEN", "OCI_CONFIG_FILE", "OCI_CLI_PROFILE", "OVH_ENDPOINT", "OVH_APPLICATION_KEY",
    "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY", "POSTGRESSOR_PROVIDER", "POSTGRESSOR_REGION",
)  # fmt: skip


@pytest.fixture(autouse=True)
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials anywhere: an empty HOME, no provider variables, an empty project directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return home


def oci_config(home: Path, region: str = "ap-mumbai-1") -> None:
    """A complete OCI config at ~/.oci/config (the fake's signing key; nothing here calls the API)."""
    (home / ".oci").mkdir()
    path, _ = oci.write_config(home / ".oci", region=region)
    path.rename(home / ".oci" / "config")


def ovh_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("OVH_ENDPOINT", "ovh-eu"), ("OVH_APPLICATION_KEY", "ak"),
                        ("OVH_APPLICATION_SECRET", "as"), ("OVH_CONSUMER_KEY", "ck")):  # fmt: skip
        monkeypatch.setenv(name, value)


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_only_an_oci_config_picks_oracle_mumbai(bare: Path) -> None:
    oci_config(bare)
    code, _, err = run("up", "--region", "mumbai")
    lines = err.splitlines()
    assert lines[0].startswith("provider oracle (ap-mumbai-1, Mumbai)") and "OCI config" in lines[0]
    assert "region:   ap-mumbai-1" in err
    assert code == 2 and "confirmation needed" in err and "pass --yes" in err  # no terminal, no --yes: refused


def test_only_ovh_keys_picks_ovh_mumbai_and_says_why_not_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    ovh_keys(monkeypatch)
    _, _, err = run("plan", "--region", "bombay")
    first = err.splitlines()[0]
    assert first.startswith("provider ovh (AP-SOUTH-MUM-1, Mumbai)")
    assert "oracle ranks higher but has no credentials" in first


def test_both_present_takes_the_better_ranked(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oci_config(bare)
    ovh_keys(monkeypatch)
    _, _, err = run("plan", "--region", "Mumbai")
    assert err.splitlines()[0].startswith("provider oracle (ap-mumbai-1")
    _, _, err = run("plan", "--region", "AP-SOUTH-MUM-1")  # a provider's own code names that provider
    assert err.splitlines()[0].startswith("provider ovh (AP-SOUTH-MUM-1")


def test_no_credentials_exit_2_naming_each_serving_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "x")  # Hetzner has no Indian region: it does not count
    code, out, err = run("up", "--region", "mumbai")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "oracle (ap-mumbai-1) needs an OCI config file" in err
    assert "ovh (AP-SOUTH-MUM-1) needs OVH API keys" in err
    assert "hetzner" not in err


def test_same_country_city_goes_to_the_nearest_region(bare: Path) -> None:
    oci_config(bare)
    _, _, err = run("plan", "--region", "chennai")
    assert err.splitlines()[0].startswith("provider oracle (ap-hyderabad-1, Hyderabad)")


@pytest.mark.parametrize("provider", ["local", "ssh"])
def test_regionless_provider_with_region_is_a_usage_error(provider: str) -> None:
    code, _, err = run("up", "--provider", provider, "--host", "10.0.0.1", "--region", "mumbai")
    assert code == 2 and f"provider '{provider}' has no regions" in err


def test_region_in_the_environment_with_local_in_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("postgressor.toml").write_text('provider = "local"\n')
    monkeypatch.setenv("POSTGRESSOR_REGION", "mumbai")
    code, _, err = run("plan")
    assert code == 2 and "provider 'local' has no regions" in err


def test_provider_configured_distinguishes_default_from_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load_settings().provider_configured()
    assert load_settings(provider="local").provider_configured()
    Path("postgressor.toml").write_text('provider = "local"\n')
    assert load_settings().provider_configured()


def test_recorded_stack_keeps_its_provider(bare: Path) -> None:
    oci_config(bare)
    state = open_state(Path(".postgressor"), "default", "ovh")
    state.save()
    settings = common.with_provider(load_settings(region="mumbai"), "default", lambda line: None)
    assert settings.provider == "ovh"


# ---- item 2: the plan and the question


def test_plan_shows_price_traffic_and_caveats_then_asks(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oci_config(bare)
    monkeypatch.setattr(common, "interactive", lambda: True)
    code, _, err = run("up", "--region", "mumbai", input="n\n")
    assert code == 1
    assert "price:    $0.00/month excl. VAT (checked " in err and "oracle.com" in err
    assert "traffic:  10 TB/month included, then $25.00/TB" in err
    assert "idle" in err  # Always Free reclamation of idle instances
    assert "Create this billed" in err


def test_oracle_outside_the_home_region_is_priced_pay_as_you_go(bare: Path) -> None:
    oci_config(bare, region="ap-hyderabad-1")  # home region Hyderabad: Always Free is not in Mumbai
    _, _, err = run("up", "--region", "mumbai")
    size = next(line for line in err.splitlines() if line.startswith("size:"))
    assert size.startswith("size:     A1.Flex 2 OCPU / 12 GB (2 vCPU") and "Always Free" not in size
    assert "price:    $27.74/month" in err


def test_paid_size_plan_names_its_price(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "x")
    code, _, err = run("up", "--provider", "hetzner", "--region", "ash", "--size", "cpx22")
    assert "size:     cpx22" in err and "price:    unverified: €9.49/month" in err and "--live" in err
    assert "traffic:  unverified: 1 TB/month included" in err and "per plan" in err
    assert code == 2 and "pass --yes" in err


def test_uncatalogued_size_is_unverified_not_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "x")
    _, _, err = run("up", "--provider", "hetzner", "--region", "fsn1", "--size", "ccx63")
    assert "price:    unverified" in err and "--live" in err


def test_no_question_for_local_ssh_or_a_recorded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "x")
    assert common.billing_plan(load_settings(), "default") is None
    assert common.billing_plan(load_settings(provider="ssh", ssh={"host": "10.0.0.1"}), "default") is None
    settings = load_settings(provider="hetzner", region="fsn1")
    assert common.billing_plan(settings, "default") is not None
    open_state(settings.state_dir, "default", "hetzner").add("server", "42", region="fsn1")
    monkeypatch.setattr(CloudProvider, "power_state", lambda self: "running")  # one API read, here faked
    assert common.billing_plan(settings, "default") is None
    monkeypatch.setattr(CloudProvider, "power_state", lambda self: "missing")
    bill = common.billing_plan(settings, "default")
    assert bill is not None and "server 42 no longer exists at Hetzner" in bill.lines()[-1]
    assert bill.question().endswith("which starts empty?")


def test_missing_credentials_reported_before_the_question() -> None:
    code, _, err = run("up", "--provider", "hetzner")
    assert code == 2 and "HCLOUD_TOKEN" in err and "price:" not in err


# ---- item 6: dated facts where they are shown


def test_oracle_idle_reclamation_in_regions_cost_and_recommend() -> None:
    _, out, _ = run("regions", "--provider", "oracle", "--json")
    assert all("idle" in r["free_tier"] for r in json.loads(out)["regions"])
    _, out, _ = run("cost", "--users", "1000", "--egress-gb-per-user", "2", "--provider", "oracle",
                    "--region", "mumbai")
    assert "idle for 7 days" in " ".join(out.split())
    _, out, _ = run("recommend", "--near", "mumbai", "--json")
    oracle = next(o for o in json.loads(out)["options"] if o["provider"] == "oracle")
    assert "idle" in json.dumps(oracle)


def test_hetzner_prices_after_june_2026_are_flagged_unverified_not_invented() -> None:
    _, out, _ = run("cost", "--users", "1000", "--egress-gb-per-user", "2", "--provider", "hetzner",
                    "--region", "fsn1", "--json")
    (option,) = json.loads(out)["options"]
    assert "15 June 2026" in option["size"]["unverified"] and "--live" in option["size"]["unverified"]
    _, out, _ = run("regions", "--provider", "hetzner", "--json")
    by_code = {r["code"]: r for r in json.loads(out)["regions"]}
    assert "per plan" in by_code["ash"]["unverified"] and by_code["fsn1"]["unverified"] == ""


def test_unknown_region_suggests_close_names() -> None:
    code, _, err = run("up", "--region", "mumbay")
    assert code == 2 and "did you mean mumbai" in err and err.count("\n") == 1


def test_project_identity_is_the_config_files_directory(tmp_path: Path) -> None:
    app_dir = tmp_path / "my-shop"
    app_dir.mkdir()
    (app_dir / "postgressor.toml").write_text("")
    assert load_settings(app_dir / "postgressor.toml").project == "my-shop"  # from any working directory
    (app_dir / "postgressor.toml").write_text('project = "acme/shop"\n')
    assert load_settings(app_dir / "postgressor.toml").project == "acme/shop"
