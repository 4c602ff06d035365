"""Shape-request parameter pinning: what the client may send, what the gateway sets itself.

A pure function of (client params, table rule, user id, secret): no I/O, property-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Electric's protocol params a client may send (the official client's pass-through list).
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
FORWARDED_PREFIX = "subset__"
# Params that define the shape or authenticate to Electric: only the gateway sets these.
PINNED = frozenset({"table", "where", "columns", "queryable_columns", "secret", "params", "replica"})


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


def check_client_params(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's params, unchanged, or ParamError for a pinned, unknown or repeated one."""
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for key, value in items:
        base = key.split("[", 1)[0]
        if base in PINNED:
            raise ParamError(
                "param_not_allowed", f"'{key}' is set by the gateway; remove it from the request"
            )
        if key not in FORWARDED and not key.startswith(FORWARDED_PREFIX):
            raise ParamError("param_not_allowed", f"unknown parameter '{key}'")
        if key in seen:
            raise ParamError("param_not_allowed", f"parameter '{key}' given more than once")
        seen.add(key)
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
