"""Parameter pinning as a pure function: properties over arbitrary client input and table rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postgressor.gateway.params import (
    FORWARDED,
    PINNED,
    ParamError,
    TableRule,
    check_client_params,
    quote_ident,
    quote_relation,
    subset_body,
    upstream_params,
    where_problem,
)

SECRET = "s3cret"
idents = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                 min_size=1, max_size=20)
values = st.text(max_size=30)
forwarded_keys = st.sampled_from(sorted(FORWARDED))


@st.composite
def rules(draw: st.DrawFn) -> TableRule:
    owner = draw(idents)
    extra = draw(st.lists(idents, max_size=4, unique=True).filter(lambda cols: owner not in cols))
    columns = (*extra, owner) if draw(st.booleans()) else ()
    where = draw(st.sampled_from(["", "archived = false", "a = 1 OR b = 2"]))
    name = draw(idents.filter(lambda n: all(n.partition(".")[::2]) or "." not in n))
    return TableRule(name, owner, columns, where)


def unquote(ident: str) -> str:
    assert ident.startswith('"') and ident.endswith('"')
    inner = ident[1:-1]
    assert '"' not in inner.replace('""', "")
    return inner.replace('""', '"')


@given(st.lists(st.tuples(forwarded_keys, values), unique_by=lambda kv: kv[0]), rules(), idents)
def test_forwarded_params_pass_and_pinned_ones_are_ours(client, rule, user) -> None:
    out = upstream_params(client, rule, user, SECRET)
    assert out[: len(client)] == client
    pinned = dict(out[len(client):])
    assert pinned["table"] == rule.relation and pinned["params[1]"] == user and pinned["secret"] == SECRET
    assert pinned["where"].startswith(f"{quote_ident(rule.owner_column)} = $1")
    if rule.where:
        assert pinned["where"].endswith(f" AND ({rule.where})")
    if rule.columns:
        assert pinned["columns"] == pinned["queryable_columns"]
        assert pinned["columns"] == ",".join(quote_ident(c) for c in rule.columns)
        assert rule.owner_column in rule.columns
    else:
        assert "columns" not in pinned and "queryable_columns" not in pinned
    keys = [k for k, _ in out]
    assert len(keys) == len(set(keys))  # nothing is sent twice


@given(st.lists(st.tuples(forwarded_keys, values), max_size=5, unique_by=lambda kv: kv[0]),
       st.sampled_from(sorted(PINNED)) | st.from_regex(r"params\[[0-9]{1,3}\]", fullmatch=True), values,
       rules())
def test_any_pinned_param_from_the_client_is_refused(client, key, value, rule) -> None:
    with pytest.raises(ParamError) as err:
        upstream_params([*client, (key, value)], rule, "u", SECRET)
    assert err.value.code == "param_not_allowed" and "set by the gateway" in err.value.message


@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in FORWARDED and not k.startswith("subset__")
                                                and k.split("[")[0] not in PINNED), values)
def test_unknown_params_are_refused(key, value) -> None:
    with pytest.raises(ParamError, match="unknown parameter"):
        upstream_params([(key, value)], TableRule("t", "user_id"), "u", SECRET)


@given(forwarded_keys, values, values)
def test_repeated_params_are_refused(key, a, b) -> None:
    with pytest.raises(ParamError, match="more than once"):
        upstream_params([(key, a), (key, b)], TableRule("t", "user_id"), "u", SECRET)


@given(idents)
def test_quote_ident_round_trips(name) -> None:
    assert unquote(quote_ident(name)) == name


def test_relation_quoting() -> None:
    assert quote_relation("OR") == '"OR"'
    assert quote_relation("items") == '"items"'
    assert quote_relation("sales.Orders") == '"sales"."Orders"'
    assert quote_relation('we"ird') == '"we""ird"'


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="owner column"):
        TableRule("t", "user_id", ("id", "title"))
    with pytest.raises(ValueError, match="twice"):
        TableRule("t", "user_id", ("id", "id", "user_id"))
    with pytest.raises(ValueError, match="owner_column"):
        TableRule("t", "")
    for bad in (".", "public.", ".items", ""):
        with pytest.raises(ValueError, match="non-empty"):
            TableRule(bad, "user_id")


# --- the subset channels (POST body and subset__* query params) ----------------------------------------


@pytest.mark.parametrize(("body", "sent"), [
    ({"subset": {"where": "title = $1", "params": {"1": "x"}, "limit": 10, "order_by": "id"}},
     {"where": "title = $1", "params": {"1": "x"}, "limit": 10, "order_by": "id"}),
    # what @electric-sql/client 1.5.28 sends (#buildSubsetBody): the keys at the top level
    ({"where": "title = $1", "params": {"1": "x"}, "limit": 5, "offset": 0, "order_by": "id DESC"},
     {"where": "title = $1", "params": {"1": "x"}, "limit": 5, "offset": 0, "order_by": "id DESC"}),
    ({"where": "a = 1", "where_expr": {"type": "func"}, "order_by": "id", "order_by_expr": []},
     {"where": "a = 1", "order_by": "id"}),
    ({"subset": {}}, {}),
])
def test_subset_bodies_are_rewritten_to_one_canonical_subset(body, sent) -> None:
    out = subset_body(json.dumps(body).encode())
    assert out is not None and json.loads(out) == {"subset": sent}


@pytest.mark.parametrize("body", [
    # the attack from issue #18 and its kind: any key that is not a subset key
    {"subset": {"limit": 10}, "table": "secrets", "where": "true", "params": {}},
    {"subset": {"limit": 10, "order_by": "id"}, "table": "secrets"},
    {"subset": {"where": "true"}, "where": "true"},
    {"subset": {}, "params": {"1": "someone-else"}},
    {"subset": {"params": {"1": "x"}}, "columns": "id,secret"},
    {"where": "true", "table": "secrets"},
    {"where": "true", "replica": "full"},
    {"live": "true"},
    {"handle": "h", "offset": 1},
    {"subset": {"table": "secrets"}},
    {"subset": {"where": "true", "secret": "x"}},
    {"secret": "guess"},
])
def test_bodies_with_keys_beyond_the_subset_are_refused(body) -> None:
    with pytest.raises(ParamError) as err:
        subset_body(json.dumps(body).encode())
    assert err.value.code == "param_not_allowed"


@pytest.mark.parametrize("raw", [
    b"[]", b'"where"', b"1", b"null", b"where=1", b"{", b'{"where": "a", "where": "b"}',
    b'{"limit": NaN}', b'{"subset": []}', b'{"subset": "where=true"}', b"\xff\xfe",
])
def test_bodies_that_are_not_one_json_object_are_refused(raw) -> None:
    with pytest.raises(ParamError) as err:
        subset_body(raw)
    assert err.value.code == "body_invalid"


@pytest.mark.parametrize("subset", [
    {"params": {"0": "x"}}, {"params": {"1": "x", "3": "y"}}, {"params": {"one": "x"}},
    {"params": {"1": {"nested": 1}}}, {"params": {"1": ["x"]}}, {"params": {"1": None}}, {"params": ["x"]},
    {"limit": 0}, {"limit": -1}, {"limit": True}, {"limit": "ten"}, {"offset": -1}, {"offset": 1.5},
    {"where": ""}, {"where": 1}, {"where": "a = 1) OR (true"}, {"where": "true; DELETE FROM t"},
    {"where": "true -- "}, {"order_by": ""}, {"order_by": 3},
])
def test_subset_values_of_the_wrong_shape_are_refused(subset) -> None:
    with pytest.raises(ParamError) as err:
        subset_body(json.dumps({"subset": subset}).encode())
    assert err.value.code == "param_not_allowed"


def test_empty_body_sends_none() -> None:
    assert subset_body(b"") is None and subset_body(b"  ") is None


@pytest.mark.parametrize(("key", "value"), [
    ("subset__where", "a = 1) OR (true"), ("subset__params", '{"2": "x"}'), ("subset__params", "[1]"),
    ("subset__limit", "0"), ("subset__limit", "-3"), ("subset__offset", "x"), ("subset__table", "secrets"),
    ("subset__secret", "x"), ("subset[where]", "true"), ("subset__params[1]", "x"), ("subset", "x"),
])
def test_query_subset_params_follow_the_body_rules(key, value) -> None:
    with pytest.raises(ParamError) as err:
        check_client_params([("offset", "-1"), (key, value)])
    assert err.value.code == "param_not_allowed"


def test_query_subset_params_pass_and_ignored_ones_are_dropped() -> None:
    given_ = [("subset__where", "title = $1"), ("subset__params", '{"1":"x"}'), ("subset__limit", "5"),
              ("subset__offset", "0"), ("subset__order_by", "id"), ("subset__where_expr", "{}")]
    assert check_client_params(given_) == given_[:-1]


# --- configured where clauses -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", [
    "archived = false", "a = 1 OR b = 2", "NOT deleted AND (x IN (1, 2) OR y IS NULL)", "created_at > now()",
    "title ILIKE '%) OR (true%'", 'lower("Title") = \'x\'',
])
def test_one_expression_is_accepted_and_wrapped(where) -> None:
    assert where_problem(where) is None
    assert TableRule("t", "user_id", where=where).where_clause == f'"user_id" = $1 AND ({where})'


@pytest.mark.parametrize("where", [
    "archived = false) OR (true", "true) OR (1=1", "a = 1 ORDER BY 1", "true GROUP BY 1", "true LIMIT 1",
    "true UNION SELECT 1", "true; SELECT 1", "true --", "true /*", "", "a = '\x00'", ")(",
])
def test_where_that_is_not_one_expression_is_refused(where) -> None:
    assert where_problem(where) is not None
    with pytest.raises(ValueError, match=r"refused|non-empty|NUL"):
        TableRule("t", "user_id", where=where or " x (")


# --- the kind: whatever the client sends, Electric's merge (ported in the stand-in) keeps the pinned shape ----

json_scalars = st.none() | st.booleans() | st.integers(-5, 20) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
body_keys = st.sampled_from(["subset", "table", "where", "params", "columns", "queryable_columns", "replica",
                             "secret", "api_secret", "offset", "live", "handle", "limit", "order_by",
                             "where_expr", "log", "experimental_compaction"]) | st.text(max_size=10)
subset_values = st.fixed_dictionaries({}, optional={
    "where": st.sampled_from(["true", "title = $1", "a) OR (b"]), "params": st.just({"1": "x"}),
    "limit": st.integers(0, 5), "order_by": st.just("id"), "table": st.just("secrets")})


@given(st.dictionaries(body_keys, json_values | subset_values, max_size=5))
def test_no_accepted_body_can_change_the_pinned_shape_under_electrics_merge(body) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from electric_standin import extract_subset, merge_body_params, plug_query

    rule = TableRule("OR", "Owner", ("id", "Owner"), "archived = false")
    pinned = upstream_params([("offset", "-1")], rule, "user-a", SECRET)
    try:
        out = subset_body(json.dumps(body).encode())
    except ParamError:
        return
    query = plug_query(pinned)
    merged = merge_body_params(extract_subset(query), json.loads(out) if out else {})
    for key in ("table", "where", "params", "columns", "queryable_columns", "secret", "offset"):
        assert merged.get(key) == query.get(key), key
    assert set(merged) <= set(query) | {"subset"}



# --- the attacker review's where clauses ---------------------------------------------------------------


@pytest.mark.parametrize("expr", ["a = ANY(ARRAY[1,2])", "tags @> ARRAY['a']", "ARRAY[1] IS NULL", "x IN (1, 2)"])
def test_array_and_list_expressions_are_one_expression(expr: str) -> None:
    assert where_problem(expr) is None


@pytest.mark.parametrize("expr", ["NOT " * 1000 + "true", "1+" * 2000 + "1 = 1", "ARRAY[" * 1000 + "1" + "]" * 1000])
def test_deep_expressions_are_a_problem_not_a_crash(expr: str) -> None:
    problem = where_problem(expr)
    assert problem is not None and ("nested too deeply" in problem or "not one SQL expression" in problem)


def test_a_subset_where_is_bounded_in_size() -> None:
    from postgressor.gateway.params import MAX_SUBSET_TEXT, check_subset

    huge = " OR ".join(["a = 1"] * (MAX_SUBSET_TEXT // 4))
    with pytest.raises(ParamError):
        check_subset({"where": huge}, "body")
