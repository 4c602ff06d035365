"""Electric's shape-request rules, ported from its source for the test stand-ins (NOT Electric).

Shared by the Python stand-in behind the gateway tests (``tests/electric_standin.py``) and the VM image's
stand-in server (``tests/e2e/electric_standin_server.py``, shipped inside the image), so both apply the same
rules. Needs only pglast (PostgreSQL's own grammar), no aiohttp.

Ported from github.com/electric-sql/electric at tag ``@core/sync-service@1.7.12``:
- ``lib/electric/plug/serve_shape_plug.ex`` ``parse_body``/``validate_request``/``merge_body_params``:
  a POST body must be a JSON object (else 400); ``subset__<key>`` query params become a ``subset`` map; the
  body is merged over the query (with a ``subset`` key every body key wins; without it the subset keys
  ``where order_by limit offset params where_expr order_by_expr`` go under ``subset`` and the rest win).
- ``lib/electric/shapes/api/params.ex``: ``offset`` and ``table`` required; ``params`` is the shape's
  ``$n`` map; ``columns`` selects the columns; ``SubsetParams`` casts where/order_by/limit/offset/params,
  limit > 0, offset >= 0, order_by required with limit or offset.
- ``lib/electric/shapes/shape/subset.ex``: the subset ``where`` is parsed with the subset's own params.
- Query params are parsed as Plug does: ``params[1]=x`` is ``{"params": {"1": "x"}}``, the last repeat wins.

Where clauses are parsed with PostgreSQL's grammar (pglast). Like Electric's parser
(``lib/electric/replication/eval/parser.ex``) only a known set of node kinds is accepted: AND/OR/NOT,
comparisons, IN, IS [NOT] NULL, casts, constants, columns and ``$n``; anything else is a 400 when the shape is
defined, never a silent match. ``compile_where`` returns an evaluator over Python rows (values compared the
way PostgreSQL coerces an untyped ``$n``); ``where_sql`` returns the checked clause for running in PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pglast

SUBSET_KEYS = ("where", "order_by", "limit", "offset", "params", "where_expr", "order_by_expr")


class BadRequest(Exception):
    """Electric answers 400 with {"message": ..., "errors": ...}."""



# --- Plug / ServeShapePlug / Api.Params rules -------------------------------------------------------------


def plug_query(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Plug.Conn.Query.decode: ``a[b]=c`` nests, a repeated key keeps the last value."""
    out: dict[str, Any] = {}
    for key, value in items:
        match = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", key)
        if match:
            inner = out.get(match.group(1))
            if not isinstance(inner, dict):
                inner = out[match.group(1)] = {}
            inner[match.group(2)] = value
        else:
            out[key] = value
    return out


def extract_subset(query: dict[str, Any]) -> dict[str, Any]:
    """Electric.Utils.extract_prefixed_keys_into_map(query, "subset", "__")."""
    prefixed = {k.removeprefix("subset__"): v for k, v in query.items() if k.startswith("subset__")}
    if not prefixed:
        return query
    rest = {k: v for k, v in query.items() if not k.startswith("subset__")}
    return {"subset": prefixed, **rest} if "subset" in rest else {**rest, "subset": prefixed}


def parse_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("Invalid JSON in request body") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def merge_body_params(query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """ServeShapePlug.merge_body_params, clause by clause."""
    if not body:
        return query
    if isinstance(body.get("subset"), dict):
        existing = query.get("subset", {})
        return {**query, **body, "subset": {**existing, **body["subset"]}}
    subset = {k: v for k, v in body.items() if k in SUBSET_KEYS}
    other = {k: v for k, v in body.items() if k not in SUBSET_KEYS}
    if subset:
        existing = query.get("subset", {})
        return {**query, **other, "subset": {**existing, **subset}}
    return {**query, **body}


def string_map(value: Any, name: str) -> dict[str, str]:
    """Api.Params.JsonOrMapStringParams: a JSON string or a map; values to_string'd."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest(f"{name}: params must be valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: params must be a JSON object")
    return {str(k): (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in value.items()}


def int_param(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"subset {name}: is invalid") from None
    if number < minimum:
        raise BadRequest(f"subset {name}: must be greater than or equal to {minimum}")
    return number


def relation_name(table: str) -> str:
    """The table's name as PostgreSQL resolves it (unquoted names fold to lower case; public schema)."""
    try:
        return relation(table)[1]
    except BadRequest:
        return table


def relation(table: str) -> tuple[str, str]:
    """Api.Params ``table``: ``name`` or ``schema.name``, quoted or not (schema ``public`` by default)."""
    try:
        (stmt,) = pglast.parse_sql(f"SELECT * FROM {table}")
        (rel,) = stmt.stmt.fromClause
        if type(rel).__name__ != "RangeVar" or stmt.stmt.whereClause is not None or rel.alias is not None:
            raise ValueError(table)
        return str(rel.schemaname or "public"), str(rel.relname)
    except Exception:
        raise BadRequest("table: Invalid zero-length delimited identifier or invalid table name") from None


def parse_columns(columns: str | None) -> list[str] | None:
    if columns is None:
        return None
    try:
        (stmt,) = pglast.parse_sql(f"SELECT {columns}")
        return [t.val.fields[-1].sval for t in stmt.stmt.targetList]
    except Exception:
        raise BadRequest("columns: invalid") from None


# --- where clauses, over Python rows ------------------------------------------------------------------------

Row = dict[str, Any]


def compile_where(where: Any, params: dict[str, str]) -> Callable[[Row], bool]:
    if where is None:
        return lambda _row: True
    if not isinstance(where, str):
        raise BadRequest("where: is invalid")
    try:
        (stmt,) = pglast.parse_sql(f"SELECT 1 WHERE {where}")
    except Exception as err:
        raise BadRequest(f"where: {err}") from None
    tree = stmt.stmt(skip_none=True)["whereClause"]
    _check_kinds(tree)
    _check_params(tree, params)
    return lambda row: _evaluate(tree, row, params) is True


def where_sql(where: str, params: dict[str, str], shift: int = 0) -> str:
    """The checked where clause as SQL for PostgreSQL (printed back from its parse tree, so comments or trailing
    clauses cannot ride along), its ``$n`` renumbered to ``$(n + shift)`` so a subset's own params can follow
    the shape's. Raises BadRequest like ``compile_where``."""
    from pglast.stream import RawStream
    from pglast.visitors import Visitor

    compile_where(where, params)  # the same checks
    (stmt,) = pglast.parse_sql(f"SELECT 1 WHERE {where}")
    clause = stmt.stmt.whereClause

    class Renumber(Visitor):  # type: ignore[misc]
        def visit_ParamRef(self, _ancestors: Any, node: Any) -> None:
            node.number += shift

    Renumber()(clause)
    return str(RawStream()(clause))


# The node kinds the evaluator below understands; Electric's parser likewise refuses what it does not know.
ALLOWED_KINDS = {"BoolExpr", "A_Const", "ColumnRef", "ParamRef", "TypeCast", "TypeName", "NullTest", "A_Expr",
                 "String", "Integer", "Float", "Boolean"}
COMPARISONS = ("=", "<>", "!=", "<", ">", "<=", ">=")


def _check_kinds(node: Any) -> None:
    if isinstance(node, dict):
        kind = node.get("@")
        if kind is not None and kind not in ALLOWED_KINDS:
            raise BadRequest(f"where: unsupported expression {kind}")
        if kind == "A_Expr" and (node["kind"]["name"] not in ("AEXPR_OP", "AEXPR_IN")
                                 or node["name"][-1]["sval"] not in COMPARISONS):
            raise BadRequest(f"where: unsupported operator {node['name'][-1]['sval']}")
        for value in node.values():
            _check_kinds(value)
    elif isinstance(node, tuple | list):
        for value in node:
            _check_kinds(value)


def _check_params(node: Any, params: dict[str, str]) -> None:
    if isinstance(node, dict):
        if node.get("@") == "ParamRef" and str(node["number"]) not in params:
            raise BadRequest(f"where: parameter ${node['number']} has no value")
        for value in node.values():
            _check_params(value, params)
    elif isinstance(node, tuple | list):
        for value in node:
            _check_params(value, params)


def _evaluate(node: dict[str, Any], row: Row, params: dict[str, str]) -> Any:
    kind = node["@"]
    if kind == "BoolExpr":
        op = node["boolop"]["name"]
        values = [_evaluate(a, row, params) for a in node["args"]]
        if op == "NOT_EXPR":
            return None if values[0] is None else not values[0]
        if op == "AND_EXPR":
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    if kind == "A_Const":
        if node.get("isnull"):
            return None
        val = node["val"]
        return val.get("ival", val.get("sval", val.get("boolval", val.get("fval", 0))))
    if kind == "ColumnRef":
        name = node["fields"][-1]["sval"]
        return row.get(name)
    if kind == "ParamRef":
        return _Unknown(params[str(node["number"])])
    if kind == "TypeCast":
        return _evaluate(node["arg"], row, params)
    if kind == "NullTest":
        value = _evaluate(node["arg"], row, params)
        return (value is None) == (node["nulltesttype"]["name"] == "IS_NULL")
    if kind == "A_Expr":
        op = node["name"][-1]["sval"]
        left = _evaluate(node["lexpr"], row, params)
        if node["kind"]["name"] == "AEXPR_IN":
            values = [_compare("=", left, _evaluate(v, row, params)) for v in node["rexpr"]]
            found = True if True in values else (None if None in values else False)
            return found if op == "=" else (None if found is None else not found)
        if node["kind"]["name"] == "AEXPR_OP":
            return _compare(op, left, _evaluate(node["rexpr"], row, params))
    raise BadRequest(f"where: the stand-in cannot evaluate {kind}")


@dataclass(frozen=True)
class _Unknown:
    """A $n value: text of unknown type, coerced to the other side's type as PostgreSQL does."""

    text: str


def _compare(op: str, left: Any, right: Any) -> bool | None:
    left, right = _coerce(left, right), _coerce(right, left)
    if left is None or right is None:
        return None
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "<>": lambda a, b: a != b, "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}
    if op not in ops:
        raise BadRequest(f"where: the stand-in cannot evaluate operator {op}")
    return ops[op](left, right)


def _coerce(value: Any, other: Any) -> Any:
    if not isinstance(value, _Unknown):
        return value
    if isinstance(other, bool):
        return value.text.lower() in ("t", "true", "1", "yes", "on")
    if isinstance(other, int):
        return int(value.text)
    if isinstance(other, float):
        return float(value.text)
    return value.text


def order_rows(rows: list[Row], order_by: str) -> list[Row]:
    try:
        (stmt,) = pglast.parse_sql(f"SELECT 1 ORDER BY {order_by}")
    except Exception:
        raise BadRequest("subset order_by: invalid") from None
    for sort in reversed(stmt.stmt(skip_none=True)["sortClause"]):
        name = sort["node"]["fields"][-1]["sval"]
        desc = sort["sortby_dir"]["name"] == "SORTBY_DESC"
        rows = sorted(rows, key=lambda r, n=name: (r.get(n) is None, r.get(n)), reverse=desc)
    return rows



def order_by_sql(order_by: str) -> str:
    """A subset's ``order_by`` as SQL: columns with ASC/DESC and NULLS FIRST/LAST only, printed back from its
    parse tree."""
    from pglast.stream import RawStream

    try:
        (stmt,) = pglast.parse_sql(f"SELECT 1 ORDER BY {order_by}")
        sorts = stmt.stmt.sortClause
        if stmt.stmt.limitCount is not None or stmt.stmt.limitOffset is not None:
            raise ValueError(order_by)
        if any(type(s.node).__name__ != "ColumnRef" or type(s.node.fields[-1]).__name__ != "String" for s in sorts):
            raise ValueError(order_by)
    except Exception:
        raise BadRequest("subset order_by: invalid") from None
    return ", ".join(str(RawStream()(s)) for s in sorts)
