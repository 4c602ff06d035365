"""Each error path the providers handle, reached through the fakes with the errors the real APIs send.

Shapes and codes: REFERENCE §4 (hcloud 2.27, oci 2.189, ovh 1.2); Hetzner's firewall delete answers 422
``resource_in_use`` while the firewall is applied (API docs, "Delete a Firewall"); ovh 1.2 `ovh/client.py`
maps 403 ``errorCode`` values, 404 and 400 to its exception classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oci
import pytest
import requests

from cloudfakes import oci as fake_oci
from cloudfakes import ovh as fake_ovh
from cloudfakes.base import RESET
from cloudfakes.clouds import NAMES, Cloud, started
from cloudfakes.harness import Recorder, fake_ssh, no_real_sleep, quick_backoff, saved, state_for
from postgressor.errors import PostgressorError

OCI = fake_oci.PREFIX


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("HCLOUD_TOKEN", "OCI_CONFIG_FILE", "OCI_CLI_PROFILE", "OVH_ENDPOINT", "OVH_APPLICATION_KEY",
                 "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY", "OVH_CLOUD_PROJECT_SERVICE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    fake_ssh(monkeypatch)
    no_real_sleep(monkeypatch)


def cloud_of(name: str, tmp_path: Path) -> Iterator[Cloud]:
    with started(name, tmp_path) as c:
        yield c


@pytest.fixture(params=NAMES)
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    yield from cloud_of(request.param, tmp_path)


@pytest.fixture
def hz(tmp_path: Path) -> Iterator[Cloud]:
    yield from cloud_of("hetzner", tmp_path)


@pytest.fixture
def oracle(tmp_path: Path) -> Iterator[Cloud]:
    yield from cloud_of("oracle", tmp_path)


@pytest.fixture
def ovh(tmp_path: Path) -> Iterator[Cloud]:
    yield from cloud_of("ovh", tmp_path)


def refused(cloud: Cloud) -> str:
    with pytest.raises(PostgressorError) as caught:
        cloud.provider(Recorder()).provision()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- every provider


def test_a_connection_reset_after_the_create_finds_the_server_instead_of_making_another(cloud: Cloud) -> None:
    cloud.api.fail(*cloud.create, 0, RESET, after=True)
    rec = Recorder()
    cloud.provider(rec).provision()
    assert cloud.count("server") == 1
    assert any("checking whether it was created anyway" in line for line in rec.lines)


# ---------------------------------------------------------------- Hetzner


def hz_error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message, "details": {}}}


def test_hetzner_destroy_waits_while_the_firewall_is_still_in_use(hz: Cloud) -> None:
    hz.api.detach_lag = 2  # the server's delete is accepted; the firewall stays applied for two more tries
    hz.provider(Recorder()).provision()
    rec = Recorder()
    hz.provider(rec).destroy()
    assert hz.leftovers(hz.cls.kinds) == {}
    assert hz.api.calls("DELETE", r"/v1/firewalls/\d+") == 3
    assert sum("resource_in_use" in line or "in use" in line for line in rec.lines) == 2, rec.lines


@pytest.mark.parametrize(("status", "code", "hint"), [
    (401, "unauthorized", "create a new Read & Write token"),
    (403, "forbidden", "the token must be Read & Write"),
    (403, "resource_limit_exceeded", "project limit reached"),
    (412, "resource_unavailable", "try another --region"),
    (412, "placement_error", "try another --region"),
    (422, "invalid_input", "check --size"),
])  # fmt: skip
def test_hetzner_refusals_are_explained(hz: Cloud, status: int, code: str, hint: str) -> None:
    hz.api.fail(*hz.create, *hz_error(status, code, f"the {code} message"))
    message = refused(hz)
    assert hint in message and f"the {code} message" in message


def test_hetzner_failed_create_action_is_one_line_and_the_server_stays_recorded(hz: Cloud) -> None:
    hz.api.failing_actions["create_server"] = {"code": "server_create_failed", "message": "host failure",
                                               "details": {}}  # fmt: skip
    message = refused(hz)
    assert "server_create_failed: host failure" in message and "'postgressor destroy' removes it" in message
    assert hz.api.calls("GET", r"/v1/actions/\d+") == 1  # it read the action instead of waiting out the start
    state = saved(hz.settings)
    assert state is not None and state.find("server") is not None
    hz.provider(Recorder()).destroy()
    assert hz.leftovers(hz.cls.kinds) == {}


@pytest.mark.parametrize("path", [r"/v1/firewalls/\d+", r"/v1/ssh_keys/\d+", r"/v1/servers/\d+"])
def test_hetzner_destroy_accepts_a_resource_already_gone(hz: Cloud, path: str) -> None:
    hz.provider(Recorder()).provision()
    # Someone else deleted it between the lookup and the delete: the API answers 404 not_found.
    hz.api.fail("DELETE", path, *hz_error(404, "not_found", "not found"), after=True)
    hz.provider(Recorder()).destroy()
    assert hz.leftovers(hz.cls.kinds) == {}


# ---------------------------------------------------------------- OCI


def oci_error(status: int, code: str, message: str) -> tuple[int, dict[str, str]]:
    return status, {"code": code, "message": message}


@pytest.mark.parametrize(("status", "code", "hint"), [
    (400, "LimitExceeded", "OCI service limit reached"),
    (400, "QuotaExceeded", "OCI service limit reached"),
    (404, "NotAuthorizedOrNotFound", "check [oracle] compartment_id"),
])  # fmt: skip
def test_oci_refusals_are_explained(oracle: Cloud, status: int, code: str, hint: str) -> None:
    oracle.api.fail("POST", f"{OCI}/vcns", *oci_error(status, code, f"the {code} message"))
    message = refused(oracle)
    assert hint in message and f"the {code} message" in message


@pytest.mark.parametrize("code", ["Conflict", "IncorrectState"])
def test_oci_409_while_a_resource_settles_is_retried(oracle: Cloud, code: str) -> None:
    oracle.provider(Recorder()).provision()
    # OCI answers 409 to deleting a subnet whose instance's VNIC is still detaching.
    oracle.api.fail("DELETE", rf"{OCI}/subnets/.+", *oci_error(409, code, "still in use"), times=2)
    oracle.provider(Recorder()).destroy()
    assert oracle.leftovers(oracle.cls.kinds) == {}
    assert oracle.api.calls("DELETE", rf"{OCI}/subnets/.+") == 3


def test_oci_shape_not_offered_in_one_domain_tries_the_next(oracle: Cloud) -> None:
    oracle.api.fail("POST", f"{OCI}/instances", *oci_error(404, "NotAuthorizedOrNotFound", "shape not found"))
    rec = Recorder()
    oracle.provider(rec).provision()
    assert "AD-1: shape not offered" in rec.lines
    assert [i["availabilityDomain"] for i in oracle.api.of("Instance")] == ["AD-2"]


def test_oci_delete_of_a_resource_already_gone_is_fine(oracle: Cloud) -> None:
    oracle.provider(Recorder()).provision()
    oracle.api.fail("DELETE", rf"{OCI}/instances/.+", *oci_error(404, "NotAuthorizedOrNotFound", "gone"), after=True)
    oracle.provider(Recorder()).destroy()
    assert oracle.leftovers(oracle.cls.kinds) == {}


def test_oci_lists_are_followed_across_pages(oracle: Cloud) -> None:
    oracle.api.page_size = 1  # every list is one item per page, with opc-next-page while more remain
    stacks = ("pr-1", "pr-2", "pr-3")
    for stack in stacks:
        rec = Recorder()
        oracle.cls(oracle.settings, state_for(oracle.settings, stack), rec.log, backoff=quick_backoff(rec)).provision()
    assert oracle.count("server") == 3
    listed = oracle.provider(Recorder()).list_labelled()
    assert sorted(s.stack for s in listed) == sorted(stacks)


def test_oci_fake_checks_the_body_hash_the_sdk_signs(oracle: Cloud, tmp_path: Path) -> None:
    config = oci.config.from_file(str(oracle.settings.oracle.config_file))
    signer = oci.signer.Signer(config["tenancy"], config["user"], config["fingerprint"], config["key_file"])
    url = f"{oracle.api.url}{OCI}/nothing"  # authentication is checked before the path: 404 once it passes
    body = {"compartmentId": "x", "cidrBlocks": ["10.0.0.0/16"]}
    signed = requests.Request("POST", url, json=body).prepare()
    signer(signed)
    with requests.Session() as session:
        assert session.send(signed).status_code == 404  # the SDK's signing passes
        signed.body = b'{"compartmentId": "y", "cidrBlocks": ["10.0.0.0/16"]}'
        signed.headers["content-length"] = str(len(signed.body))
        tampered = session.send(signed)
    assert tampered.status_code == 401 and "x-content-sha256" in tampered.json()["message"]


# ---------------------------------------------------------------- OVH


@pytest.mark.parametrize(("status", "code", "hint"), [
    (403, "INVALID_KEY", "rejected the API credentials"),
    (403, "INVALID_CREDENTIAL", "rejected the API credentials"),
    (403, "NOT_CREDENTIAL", "rejected the API credentials"),
    (403, "NOT_GRANTED_CALL", "needs GET/POST/DELETE"),
    (403, "FORBIDDEN", "needs GET/POST/DELETE"),
    (400, None, "project quota reached"),
])  # fmt: skip
def test_ovh_refusals_are_explained(ovh: Cloud, status: int, code: str | None, hint: str) -> None:
    message = "Quota exceeded: instances" if status == 400 else f"the {code} message"
    ovh.api.fail(*ovh.create, *fake_ovh.error(status, message, code))
    assert hint in refused(ovh)


def test_ovh_build_that_ends_in_error_is_recorded_and_destroyed(ovh: Cloud) -> None:
    ovh.api.failed_builds = 1
    message = refused(ovh)
    assert "is in ERROR" in message and "'postgressor destroy' removes it" in message
    state = saved(ovh.settings)
    assert state is not None and state.find("server") is not None
    ovh.provider(Recorder()).destroy()
    assert ovh.leftovers(ovh.cls.kinds) == {}


@pytest.mark.parametrize("what", ["instance", "sshkey"])
def test_ovh_destroy_accepts_a_resource_already_gone(ovh: Cloud, what: str) -> None:
    ovh.provider(Recorder()).provision()
    ovh.api.fail("DELETE", rf"/1.0/cloud/project/{fake_ovh.PROJECT}/{what}/.+",
                 *fake_ovh.error(404, "This object does not exist"), after=True)  # fmt: skip
    ovh.provider(Recorder()).destroy()
    assert ovh.leftovers(ovh.cls.kinds) == {}

