"""Issue #18, item 1: every input channel pinned. The stand-in applies Electric 1.7.12's own request rules
(body merged over query, subset ANDed), so a gateway that lets a client change the shape shows a leaked row."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postgressor.gateway.params import TableRule

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_gateway import Stack, error_code, make_stack, token

from jwt_keys import OTHER_USER, USER

SECRET_ROW = "LEAKED-secret-row"


@pytest.fixture
def rows() -> Iterator[Stack]:
    with make_stack() as stack:
        stack.standin.rows["secrets"] = [{"id": "LEAKED-s1", "note": SECRET_ROW, "_version": 1}]
        stack.standin.rows["OR"] = [
            {"id": "a1", "Owner": USER, "title": "mine", "archived": False, "_version": 2},
            {"id": "a2", "Owner": USER, "title": "mine, archived", "archived": True, "_version": 3},
            {"id": "LEAKED-b1", "Owner": OTHER_USER, "title": "other user", "archived": False, "_version": 4},
        ]
        stack.standin.rows["items"] = [{"id": "LEAKED-i1", "user_id": OTHER_USER, "title": "x", "_version": 5}]
        yield stack


def assert_no_leak(text: str) -> None:
    assert "LEAKED" not in text, f"LEAKED ROW: {text[:300]}"
    assert "mine, archived" not in text, f"LEAKED ROW (pinned where dropped): {text[:300]}"


ATTACKS: list[dict[str, Any]] = [
    # issue #18 verbatim (Electric 1.7.12 itself refuses limit without order_by, so it is refused upstream today)
    {"subset": {"limit": 10}, "table": "secrets", "where": "true", "params": {}},
    # the same with order_by: any user reads any table
    {"subset": {"limit": 10, "order_by": "id"}, "table": "secrets", "where": "true", "params": {}},
    {"subset": {"limit": 10, "order_by": "id"}, "table": "secrets", "where": "true", "params": {},
     "columns": "id,note"},
    # the shape's where replaced (body wins when it has subset)
    {"subset": {"where": "true"}, "where": "true"},
    # the pinned $1 rebound to another user
    {"subset": {}, "params": {"1": OTHER_USER}},
    # without subset: table/columns/replica in the body still win over the query
    {"where": "true", "table": "secrets"},
    {"order_by": "id", "table": "items", "where": "true"},
]


@pytest.mark.parametrize("body", ATTACKS, ids=lambda b: ",".join(sorted(b)))
def test_post_bodies_that_change_the_shape_never_reach_electric(rows: Stack, body: dict[str, Any]) -> None:
    response = rows.request("POST", "/v1/shape/OR?offset=-1", token(), json=body)
    assert_no_leak(response.text)
    assert response.status_code == 400, response.text
    assert error_code(response) in ("param_not_allowed", "body_invalid")
    assert rows.standin.received == []


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"not json", b'{"subset": {"where": "true"}, "subset": {}}'])
def test_post_bodies_that_are_not_one_object_are_refused(rows: Stack, raw: bytes) -> None:
    response = rows.request("POST", "/v1/shape/OR?offset=-1", token(), content=raw,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and error_code(response) == "body_invalid"
    assert rows.standin.received == []


@pytest.mark.parametrize("body", [
    {"where": "true", "order_by": "id", "limit": 10},  # what @electric-sql/client sends
    {"subset": {"where": "true", "order_by": "id", "limit": 10}},
    {"subset": {"where": '"Owner" = $1', "params": {"1": OTHER_USER}, "order_by": "id", "limit": 10}},
])
def test_a_subset_only_narrows_the_pinned_shape(rows: Stack, body: dict[str, Any]) -> None:
    response = rows.request("POST", "/v1/shape/OR?offset=-1", token(), json=body)
    assert_no_leak(response.text)
    assert response.status_code == 200, response.text
    (got,) = rows.standin.received
    assert set(json.loads(got.body)) == {"subset"}
    ids = [m["value"]["id"] for m in response.json()["data"]]
    assert ids in (["a1"], [])


@pytest.mark.parametrize("query", [
    "subset__where=true&subset__order_by=id&subset__limit=5",
    "subset__where=%22Owner%22%20%3D%20%241&subset__params=%7B%221%22%3A%220b6e3c1a-2222-4333-8444-555566667777%22%7D",
])
def test_query_subsets_only_narrow_the_pinned_shape(rows: Stack, query: str) -> None:
    response = rows.get(f"/v1/shape/OR?offset=-1&{query}", token())
    assert_no_leak(response.text)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("query", [
    "subset[where]=true", "subset__table=secrets", "subset__where=true)%20OR%20(true", "subset__params[1]=x",
    "params%5B1%5D=x", "api_secret=x", "subset__params=%7B%222%22%3A%22x%22%7D",
])
def test_query_channels_that_could_change_the_shape_are_refused(rows: Stack, query: str) -> None:
    response = rows.get(f"/v1/shape/OR?offset=-1&{query}", token())
    assert_no_leak(response.text)
    assert response.status_code == 400 and error_code(response) == "param_not_allowed"
    assert rows.standin.received == []


def test_electric_query_form_is_pinned_like_the_path_form(rows: Stack) -> None:
    response = rows.get("/v1/shape?table=OR&offset=-1", token())
    assert response.status_code == 200
    assert [m["value"]["id"] for m in response.json() if "value" in m] == ["a1"]
    (got,) = rows.standin.received
    assert got.param("table") == '"OR"' and got.param("where") == '"Owner" = $1 AND (archived = false)'
    assert got.param("params[1]") == USER


def test_where_that_breaks_out_of_its_parentheses_is_refused() -> None:
    # On PostgreSQL this pinned `"Owner" = $1 AND (archived = false) OR (true)`: every row of the table.
    with pytest.raises(ValueError, match=r"one SQL expression|refused"):
        TableRule("OR", "Owner", ("id", "Owner", "title"), "archived = false) OR (true")


def test_the_standin_applies_electrics_secret_and_merge_rules(rows: Stack) -> None:
    """The stand-in is what makes the tests above meaningful: check it leaks what Electric would."""
    import httpx

    base = rows.upstream + "/v1/shape"
    assert httpx.get(base, params={"table": "secrets", "offset": "-1"}).status_code == 401
    merged = httpx.post(base, params={"table": '"OR"', "offset": "-1", "where": '"Owner" = $1',
                                      "params[1]": USER, "secret": "electric-shared-secret-for-tests-0123456789"},
                        json={"subset": {"order_by": "id", "limit": 10}, "table": "secrets", "where": "true"})
    assert merged.status_code == 200 and SECRET_ROW in merged.text
