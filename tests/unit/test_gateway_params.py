"""Parameter pinning as a pure function: properties over arbitrary client input and table rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postgressor.gateway.params import (
    FORWARDED,
    PINNED,
    ParamError,
    TableRule,
    quote_ident,
    quote_relation,
    upstream_params,
)

SECRET = "s3cret"
idents = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                 min_size=1, max_size=20)
values = st.text(max_size=30)
forwarded_keys = st.sampled_from(sorted(FORWARDED)) | st.from_regex(r"subset__[a-z_]{1,12}", fullmatch=True)


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
