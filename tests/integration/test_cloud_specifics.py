"""What is particular to each cloud: Hetzner firewall/labels/SDK retries, OCI capacity across ADs and
network wiring, OVH signatures/regions/flavors; plus credentials that are missing or rejected."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from cloudfakes import hetzner as fake_hetzner
from cloudfakes import oci as fake_oci
from cloudfakes.base import RESET
from cloudfakes.clouds import Cloud, started
from cloudfakes.harness import Recorder, fake_ssh, no_real_sleep, saved
from postgressor.errors import PostgressorError, UsageError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no ovh.conf / postgressor.toml from the working directory
    monkeypatch.setenv("HOME", str(tmp_path))  # nor ~/.oci/config, ~/.ovh.conf
    for name in ("HCLOUD_TOKEN", "OCI_CONFIG_FILE", "OCI_CLI_PROFILE", "OVH_ENDPOINT", "OVH_APPLICATION_KEY",
                 "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY", "OVH_CLOUD_PROJECT_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    fake_ssh(monkeypatch)


@pytest.fixture
def hz(tmp_path: Path) -> Iterator[Cloud]:
    with started("hetzner", tmp_path, region="nuremberg") as c:
        yield c


@pytest.fixture
def oracle(tmp_path: Path) -> Iterator[Cloud]:
    with started("oracle", tmp_path) as c:
        yield c


@pytest.fixture
def ovh(tmp_path: Path) -> Iterator[Cloud]:
    with started("ovh", tmp_path) as c:
        yield c


# ---------------------------------------------------------------- Hetzner


def test_hetzner_server_request(hz: Cloud) -> None:
    hz.provider(Recorder()).provision()
    (req,) = [r for r in hz.api.log if (r.method, r.path) == ("POST", "/v1/servers")]
    body = req.body
    assert (body["location"], body["server_type"], body["image"]) == ("nbg1", "cx23", "debian-13")
    assert body["labels"]["postgressor-stack"] == "default" and len(body["labels"]["postgressor-id"]) == 8
    assert body["user_data"].startswith("#cloud-config") and "ssh_pwauth: false" in body["user_data"]
    (firewall,) = hz.api.firewalls.values()
    assert [(r["direction"], r["protocol"], r["port"]) for r in firewall["rules"]] == [
        ("in", "tcp", "22"), ("in", "tcp", "80"), ("in", "tcp", "443")]
    assert body["firewalls"] == [{"firewall": firewall["id"]}]
    (key,) = hz.api.ssh_keys.values()
    state = saved(hz.settings)
    assert state is not None
    assert key["public_key"] == (state.stack_dir / "id_ed25519.pub").read_text().strip()


@pytest.mark.parametrize(("region", "size"), [("fsn1", "cx23"), ("ashburn", "cpx22"), ("singapore", "cpx22")])
def test_hetzner_default_size_follows_the_catalogue(hz: Cloud, region: str, size: str) -> None:
    assert hz.provider(Recorder(), region=region).size == size


def test_hetzner_size_flag_is_used(hz: Cloud) -> None:
    hz.provider(Recorder(), size="cpx12").provision()
    assert next(iter(hz.api.servers.values()))["server_type"]["name"] == "cpx12"


def test_hetzner_sdk_retries_are_off_ours_apply(hz: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    no_real_sleep(monkeypatch)
    hz.api.fail("GET", "/v1/ssh_keys", 502, {"error": {"code": "bad_gateway", "message": "bad gateway"}}, times=3)
    rec = Recorder()
    hz.provider(rec).provision()
    assert len(rec.sleeps) >= 3


def test_hetzner_location_full_names_other_regions(hz: Cloud) -> None:
    hz.api.fail("POST", "/v1/servers", 412, {"error": {"code": "resource_unavailable", "message": "full"}})
    with pytest.raises(PostgressorError, match=r"cannot place a cx23 server in nbg1 .*--region \(fsn1, hel1"):
        hz.provider(Recorder()).provision()
    assert hz.count("server") == 0


def test_hetzner_rejected_token(hz: Cloud) -> None:
    provider = hz.provider(Recorder(), hetzner=hz.settings.hetzner.model_copy(
        update={"token": SecretStr("wrong-token-1234")}))
    with pytest.raises(PostgressorError) as caught:
        provider.provision()
    assert "rejected the API token from [hetzner] token" in str(caught.value)
    assert "wrong-token-1234" not in str(caught.value)


def test_hetzner_missing_token_names_where_it_looked(hz: Cloud) -> None:
    provider = hz.provider(Recorder(), hetzner=hz.settings.hetzner.model_copy(update={"token": None}))
    with pytest.raises(UsageError, match=r"looked in .*HCLOUD_TOKEN"):
        provider.validate()


def test_hetzner_token_from_environment(hz: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", fake_hetzner.TOKEN)
    provider = hz.provider(Recorder(), hetzner=hz.settings.hetzner.model_copy(update={"token": None}))
    provider.validate()
    provider.provision()
    assert hz.count("server") == 1


# ---------------------------------------------------------------- Oracle


def test_oci_launch_uses_free_a1_ubuntu_and_wires_the_network(oracle: Cloud) -> None:
    host = oracle.provider(Recorder()).provision()
    assert host.user == "ubuntu"
    (launch,) = [r for r in oracle.api.log if (r.method, r.path) == ("POST", "/20160918/instances")]
    body = launch.body
    assert body["shape"] == "VM.Standard.A1.Flex"
    assert body["shapeConfig"] == {"ocpus": 2.0, "memoryInGBs": 12.0}
    assert body["sourceDetails"]["imageId"] == fake_oci.IMAGE_ID
    assert body["createVnicDetails"]["assignPublicIp"] is True
    assert base64.b64decode(body["metadata"]["user_data"]).startswith(b"#cloud-config")
    assert body["metadata"]["ssh_authorized_keys"].startswith("ssh-ed25519 ")
    assert body["freeformTags"]["postgressor-stack"] == "default"
    (vcn,) = oracle.api.of("Vcn")
    (gateway,) = oracle.api.of("InternetGateway")
    table = oracle.api.items[vcn["defaultRouteTableId"]]
    assert [(r["destination"], r["networkEntityId"]) for r in table["routeRules"]] == [("0.0.0.0/0", gateway["id"])]
    (seclist,) = [s for s in oracle.api.of("SecurityList") if not s.get("_default")]
    ports = [r["tcpOptions"]["destinationPortRange"]["min"] for r in seclist["ingressSecurityRules"]]
    assert ports == [22, 80, 443]
    (subnet,) = oracle.api.of("Subnet")
    assert subnet["securityListIds"] == [seclist["id"]] and subnet["routeTableId"] == table["id"]


def test_oci_out_of_capacity_moves_to_the_next_ad(oracle: Cloud) -> None:
    oracle.api.no_capacity = {"AD-1", "AD-2"}
    rec = Recorder()
    oracle.provider(rec).provision()
    (instance,) = oracle.api.of("Instance")
    assert instance["availabilityDomain"] == "AD-3"
    assert oracle.api.calls("POST", "/20160918/instances") == 3
    assert any("AD-1: out of host capacity" in line for line in rec.lines)


def test_oci_no_capacity_anywhere_says_what_to_try_then_up_resumes(oracle: Cloud) -> None:
    oracle.api.no_capacity = {"AD-1", "AD-2", "AD-3"}
    rec = Recorder()
    with pytest.raises(PostgressorError) as caught:
        oracle.provider(rec).provision()
    message = str(caught.value)
    for hint in ("AD-1 (out of host capacity)", "another --region", "smaller shape", "retry later"):
        assert hint in message
    assert oracle.api.calls("POST", "/20160918/instances") == 9  # 3 rounds x 3 ADs
    assert len([s for s in rec.sleeps if s >= 30]) == 2  # backoff between rounds, not after the last
    assert oracle.count("server") == 0 and oracle.count("vcn") == 1
    oracle.api.no_capacity = set()
    oracle.provider(Recorder()).provision()
    assert oracle.count("server") == 1 and len(oracle.api.of("Vcn", alive=False)) == 1


def test_oci_retry_token_makes_a_repeated_launch_idempotent(oracle: Cloud) -> None:
    # The launch happens but its answer is lost (the connection resets), and the lookup that follows does not
    # list the new instance yet: the launch is sent again, with the same retry token, and OCI answers with the
    # instance it already made.
    oracle.api.fail("POST", "/20160918/instances", 0, RESET, after=True)
    oracle.api.list_lag = 1
    oracle.provider(Recorder()).provision()
    launches = [r for r in oracle.api.log if r.method == "POST" and r.path == "/20160918/instances"]
    assert len(launches) == 2
    tokens = {r.headers.get("opc-retry-token") for r in launches}
    assert len(tokens) == 1 and None not in tokens
    assert oracle.count("server") == 1 and oracle.api.launches == 1


def test_oci_missing_config_file_names_where_it_looked(oracle: Cloud, tmp_path: Path) -> None:
    provider = oracle.provider(Recorder(), oracle=oracle.settings.oracle.model_copy(
        update={"config_file": tmp_path / "nope"}))
    with pytest.raises(UsageError, match=r"no OCI config file at .*nope \(looked at \[oracle\] config_file, "
                                         r"OCI_CONFIG_FILE, ~/.oci/config\)"):
        provider.validate()


def test_oci_rejected_key(oracle: Cloud, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    path, _ = fake_oci.write_config(other, fingerprint="00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00")
    provider = oracle.provider(Recorder(), oracle=oracle.settings.oracle.model_copy(update={"config_file": path}))
    with pytest.raises(PostgressorError, match=r"OCI rejected the API key of profile DEFAULT in .*NotAuthenticated"):
        provider.provision()


def test_oci_region_defaults_to_the_config_home_region(oracle: Cloud) -> None:
    assert oracle.provider(Recorder()).region == "ap-mumbai-1"
    assert oracle.provider(Recorder(), region="hyderabad").region == "ap-hyderabad-1"


# ---------------------------------------------------------------- OVH


def test_ovh_instance_request(ovh: Cloud) -> None:
    host = ovh.provider(Recorder()).provision()
    assert host.user == "debian"
    (req,) = [r for r in ovh.api.log if r.method == "POST" and r.path.endswith("/instance")]
    assert req.body["flavorId"] == "flavor-d2-4-GRA11" and req.body["imageId"] == "img-debian13-GRA11"
    assert req.body["monthlyBilling"] is False and req.body["region"] == "GRA11"
    assert req.body["userData"].startswith("#cloud-config")
    (key,) = ovh.api.ssh_keys.values()
    assert req.body["sshKeyId"] == key["id"]


def test_ovh_region_the_project_lacks(ovh: Cloud) -> None:
    with pytest.raises(PostgressorError, match="cannot use region SBG5; it has AP-SOUTH-MUM-1, GRA11"):
        ovh.api.regions = ("GRA11", "AP-SOUTH-MUM-1")
        ovh.provider(Recorder(), region="strasbourg").provision()


def test_ovh_unknown_flavor_lists_known_ones(ovh: Cloud) -> None:
    with pytest.raises(PostgressorError, match=r"no flavor 'x9-999' in GRA11 \(known: b3-16, b3-8, d2-4, d2-8\)"):
        ovh.provider(Recorder(), size="x9-999").provision()


def test_ovh_rejected_consumer_key(ovh: Cloud) -> None:
    bad = ovh.settings.ovh.model_copy(update={"consumer_key": SecretStr("not-the-consumer-key")})
    with pytest.raises(PostgressorError) as caught:
        ovh.provider(Recorder(), ovh=bad).provision()
    assert "OVHcloud rejected the API credentials" in str(caught.value)
    assert "not-the-consumer-key" not in str(caught.value)


def test_ovh_missing_credentials_name_where_it_looked(ovh: Cloud) -> None:
    empty = ovh.settings.ovh.model_copy(update={"endpoint": "", "application_key": None,
                                                "application_secret": None, "consumer_key": None})
    with pytest.raises(UsageError, match=r"looked in .*OVH_APPLICATION_KEY.*ovh\.conf"):
        ovh.provider(Recorder(), ovh=empty).validate()


def test_ovh_missing_project(ovh: Cloud) -> None:
    with pytest.raises(UsageError, match="OVH_CLOUD_PROJECT_SERVICE"):
        ovh.provider(Recorder(), ovh=ovh.settings.ovh.model_copy(update={"project_id": ""})).validate()
