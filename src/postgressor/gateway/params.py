"""Shape-request parameter pinning: what the client may send, what the gateway sets itself.

Pure functions of (client params, POST body, table rule, user id, secret): no I/O, property-tested.

Channels, as Electric 1.7.12 reads them (``packages/sync-service/lib/electric/plug/serve_shape_plug.ex``,
``validate_request``/``merge_body_params``; ``lib/electric/shapes/api/params.ex``):

- query string: the shape (``table``, ``where``, ``params[n]``, ``columns``, ...) and the protocol params;
  ``subset__<key>`` params are collected into a ``subset`` map.
- POST body (a JSON object) is merged OVER the query: with a ``subset`` key every body key wins (so a body
  ``table``/``where``/``params`` would replace the pinned shape); without it, the subset keys go under
  ``subset`` and any other key replaces the query's.

So the gateway accepts only subset keys on the client channels, checks their types, and sends Electric a
body of its own making: ``{"subset": {...}}`` with nothing else. A subset's ``params`` bind only the subset's
own ``$n`` (``Shape.Subset.new`` parses the subset ``where`` with ``fields[:params]`` alone) and the subset
``where`` is ANDed with the shape's (``Querying.query_subset``), so a subset cannot rebind the pinned ``$1``;
the shape's ``params`` can only come from the gateway.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Electric's protocol params a client may send (the official client's pass-through list,
# ELECTRIC_PROTOCOL_QUERY_PARAMS in @electric-sql/client 1.5.28 src/constants.ts).
FORWARDED = frozenset(
    {
        "live",
        "live_sse",
        "experimental_live_sse",
        "handle",
        "offset",
        "cursor",
        "expired_handle",
        "log",
        "cache-buster",
    }
)
SUBSET_PREFIX = "subset__"
# The subset keys Electric 1.7.12 casts (Api.Params.SubsetParams: where, order_by, limit, offset, params).
SUBSET_KEYS = ("where", "params", "limit", "offset", "order_by")
# Sent by the official client next to where/order_by; SubsetParams does not cast them, so Electric ignores
# them. Accepted from the client and not forwarded.
SUBSET_IGNORED = ("where_expr", "order_by_expr")
# Params that define the shape or authenticate to Electric: only the gateway sets these.
PINNED = frozenset(
    {"table", "where", "columns", "queryable_columns", "secret", "api_secret", "params", "replica",
     "subset", "shape_definition", "experimental_compaction"}
)
PARAM_KEY = re.compile(r"^[1-9][0-9]{0,3}$")
# Source offsets in pglast's JSON parse tree (they differ between the bare and the wrapped form): "location",
# "stmt_location", "stmt_len", and the list bounds of IN (...) and ARRAY[...].
POSITION_FIELD = re.compile(
    r'"(?:[A-Za-z_]*location|stmt_len|list_start|list_end|rexpr_list_start|rexpr_list_end)":-?\d+,?'
)
SELECT_KEYS = frozenset({"targetList", "whereClause", "limitOption", "op"})  # SELECT 1 WHERE <expr>, nothing more
# Characters in a subset where/order_by. Each check parses it twice on the event loop, so its cost is bounded here
# (2 kB: a few ms; the official client's subset clauses are a fraction of that).
MAX_SUBSET_TEXT = 2048


class ParamError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def quote_ident(name: str) -> str:
    """A Postgres identifier in double quotes (inner quotes doubled), as Electric's parser accepts."""
    if not name or "\x00" in name:
        raise ValueError("an identifier cannot be empty or contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_relation(name: str) -> str:
    """``schema.table`` or ``table`` from the config, quoted so case and reserved words survive."""
    schema, dot, table = name.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(table)}" if dot else quote_ident(name)


def where_problem(expr: str) -> str | None:
    """Why ``expr`` is not exactly one SQL boolean-position expression (PostgreSQL's own grammar, via
    pglast), or None. The check: ``SELECT 1 WHERE <expr>`` is one plain statement, and wrapping ``expr`` in
    parentheses does not change what it parses to (so it cannot close a parenthesis or comment out ours).
    """
    if "\x00" in expr:
        return "it contains a NUL character"
    if not expr.strip():
        return "it is empty"
    from pglast import parser  # a C extension: imported only where a where clause is checked

    try:
        bare = parser.parse_sql_json(f"SELECT 1 WHERE {expr}")
        wrapped = parser.parse_sql_json(f"SELECT 1 WHERE ({expr})")
        tree = json.loads(bare)
    except parser.ParseError as err:
        return f"it is not one SQL expression ({err})"
    except RecursionError:
        return "it is nested too deeply"
    stmts = tree.get("stmts", [])
    if len(stmts) != 1:
        return "it is more than one SQL statement"
    select = stmts[0].get("stmt", {}).get("SelectStmt")
    if not isinstance(select, dict) or set(select) - SELECT_KEYS:
        return "it carries more than an expression (e.g. ORDER BY, GROUP BY or a set operation)"
    # Compared as PostgreSQL's own JSON trees without source offsets: C speed, no Python recursion.
    if POSITION_FIELD.sub("", bare) != POSITION_FIELD.sub("", wrapped):
        return "it does not stand as one expression when wrapped in parentheses"
    return None


@dataclass(frozen=True)
class TableRule:
    """One ``[[sync.tables]]`` entry, ready for pinning."""

    name: str
    owner_column: str
    columns: tuple[str, ...] = ()
    where: str = ""

    def __post_init__(self) -> None:
        if not self.owner_column:
            raise ValueError(f"table {self.name!r}: owner_column is empty")
        if self.columns and self.owner_column not in self.columns:
            raise ValueError(
                f"table {self.name!r}: columns must include the owner column {self.owner_column!r}"
            )
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"table {self.name!r}: a column is listed twice")
        try:
            quote_relation(self.name)
            for column in (self.owner_column, *self.columns):
                quote_ident(column)
        except ValueError:
            raise ValueError(f"table {self.name!r}: use 'table' or 'schema.table' with non-empty names") from None
        if self.where.strip():
            problem = where_problem(self.where)
            if problem:
                raise ValueError(f"table {self.name!r}: where {self.where!r} is refused: {problem}")

    @property
    def relation(self) -> str:
        return quote_relation(self.name)

    @property
    def where_clause(self) -> str:
        own = f"{quote_ident(self.owner_column)} = $1"
        return f"{own} AND ({self.where})" if self.where.strip() else own

    @property
    def column_list(self) -> str:
        return ",".join(quote_ident(c) for c in self.columns)


# --- the subset (query subset__* and the POST body) ----------------------------------------------


def check_subset(subset: dict[str, Any], channel: str) -> dict[str, Any]:
    """The subset with its types checked (``channel`` names where it came from, for messages); the keys
    Electric ignores are dropped. ParamError("param_not_allowed") for any other key or a bad value."""
    kept: dict[str, Any] = {}
    for key, value in subset.items():
        if key in SUBSET_IGNORED:
            continue
        if key not in SUBSET_KEYS:
            raise ParamError(
                "param_not_allowed",
                f"{channel} key '{key}' is not allowed; a subset takes only {', '.join(SUBSET_KEYS)}",
            )
        kept[key] = _subset_value(key, value, channel)
    return kept


def _subset_value(key: str, value: Any, channel: str) -> Any:
    def bad(why: str) -> ParamError:
        return ParamError("param_not_allowed", f"{channel} '{key}' {why}")

    if key in ("limit", "offset"):
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise bad("must be a whole number")
        if key == "limit" and value == 0:
            raise bad("must be greater than 0")
        return value
    if key == "params":
        if isinstance(value, str):
            try:
                value = json.loads(value, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                raise bad("must be a JSON object like {\"1\": \"value\"}") from None
        if not isinstance(value, dict):
            raise bad("must be an object like {\"1\": \"value\"}")
        numbers = []
        for name, item in value.items():
            if not isinstance(name, str) or not PARAM_KEY.match(name):
                raise bad(f"has key {name!r}; use \"1\", \"2\", ... for $1, $2, ...")
            if (isinstance(item, float) and not math.isfinite(item)) or not isinstance(item, str | int | float | bool):
                raise bad(f"value for {name!r} must be a string, number or boolean")
            numbers.append(int(name))
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            raise bad("keys must be 1..n without gaps")
        return value
    # where, order_by
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SUBSET_TEXT:
        raise bad(f"must be a non-empty string of at most {MAX_SUBSET_TEXT} characters")
    if key == "where":
        problem = where_problem(value)
        if problem:
            raise bad(f"is refused: {problem}")
    elif "\x00" in value:
        raise bad("contains a NUL character")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def subset_body(raw: bytes) -> bytes | None:
    """The body to send Electric for a client's POST body: ``{"subset": {...}}`` (canonical JSON) or None
    for an empty body. Accepted from the client: ``{"subset": {<subset keys>}}`` and nothing else, or the
    subset keys at the top level (what @electric-sql/client sends; Electric moves them under ``subset``).

    ParamError("body_invalid") for a body that is not one JSON object (duplicate keys, NaN, non-UTF-8 too),
    ParamError("param_not_allowed") for any other key.
    """
    if not raw.strip():
        return None
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ParamError("body_invalid", f"the body is not valid JSON ({_first_line(err)})") from None
    if not isinstance(data, dict):
        raise ParamError("body_invalid", "the body must be a JSON object: {\"subset\": {\"where\": ..., ...}}")
    if "subset" in data:
        others = sorted(set(data) - {"subset"})
        if others:
            raise ParamError("param_not_allowed", f"body key '{others[0]}' is not allowed next to 'subset'")
        subset = data["subset"]
        if not isinstance(subset, dict):
            raise ParamError("body_invalid", "'subset' must be a JSON object")
        checked = check_subset(subset, "body subset")
    else:
        checked = check_subset(data, "body")
    return json.dumps({"subset": checked}, separators=(",", ":")).encode()


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:120]


# --- the query string ---------------------------------------------------------------------------------


def check_client_params(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's params to forward, or ParamError for a pinned, unknown, malformed or repeated one.
    ``subset__<key>`` params are checked like a body subset; ``subset__where_expr``/``order_by_expr`` are
    dropped (Electric ignores them)."""
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for key, value in items:
        base = key.split("[", 1)[0]
        if base in PINNED:
            raise ParamError(
                "param_not_allowed", f"'{key}' is set by the gateway; remove it from the request"
            )
        if key in seen:
            raise ParamError("param_not_allowed", f"parameter '{key}' given more than once")
        seen.add(key)
        if key.startswith(SUBSET_PREFIX):
            name = key.removeprefix(SUBSET_PREFIX)
            if not check_subset({name: value}, "query subset"):
                continue
        elif key not in FORWARDED:
            raise ParamError("param_not_allowed", f"unknown parameter '{key}'")
        kept.append((key, value))
    return kept


def upstream_params(
    client: Sequence[tuple[str, str]], rule: TableRule, user_id: str, secret: str
) -> list[tuple[str, str]]:
    """The query string sent to Electric: the client's protocol params, then the pinned ones."""
    pinned = [("table", rule.relation), ("where", rule.where_clause), ("params[1]", user_id)]
    if rule.columns:
        pinned += [("columns", rule.column_list), ("queryable_columns", rule.column_list)]
    pinned.append(("secret", secret))
    return check_client_params(client) + pinned


# --- CORS origins -----------------------------------------------------------------------------------


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` cannot be an exact browser origin (``scheme://host[:port]`` as browsers send it in the
    ``Origin`` header: lower case, no path, default port left out), or None."""
    from urllib.parse import urlsplit

    if origin.strip() == "*":
        return ("cors_origins: '*' is refused: requests carry the user's bearer token, so list each origin "
                "exactly, e.g. https://app.example.com")
    if origin == "null":
        return "cors_origins: 'null' (sandboxed or file pages) is refused; serve the app from an https origin"
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return f"cors_origins: {origin!r} is not an origin like https://app.example.com"
    canonical = f"{parts.scheme}://{parts.hostname}" + (
        f":{port}" if port is not None and port != {"http": 80, "https": 443}.get(parts.scheme) else "")
    if parts.scheme not in ("http", "https") or not parts.hostname or canonical != origin:
        return (f"cors_origins: {origin!r} is not an exact origin; write it as the browser sends it, "
                f"e.g. {canonical if parts.hostname else 'https://app.example.com'} (no path, no trailing slash)")
    return None
