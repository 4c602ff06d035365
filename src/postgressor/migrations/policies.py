"""Owner policies for synced tables: row level security enabled and forced, one policy per command.

Each managed policy carries a comment ``postgressor:<wanted>:<actual>``: a hash of the statement that
created it and a hash of the definition PostgreSQL stored. A re-run replaces a policy only when the
wanted statement changed (the config did) or the stored definition changed (someone altered it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from postgressor.config import SyncTable
from postgressor.errors import PostgressorError, UsageError

COMMANDS = ("select", "insert", "update", "delete")
OWNER_TYPES = {"uuid": "uuid", "text": "text", "character varying": "text"}
COMMENT_PREFIX = "postgressor:"


@dataclass(frozen=True)
class TableRef:
    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return self.ident.as_string(None)


def parse_table_name(name: str) -> TableRef:
    """``OR`` -> public."OR"; ``app.notes`` -> app.notes. Names are used literally (no case folding)."""
    schema, dot, table = name.partition(".")
    if not dot:
        schema, table = "public", name
    if not schema or not table or "." in table:
        raise UsageError(f"sync table name '{name}' is invalid; use 'table' or 'schema.table'")
    return TableRef(schema, table)


def policy_name(command: str) -> str:
    return f"postgressor_owner_{command}"


def owner_check(column: str, owner_type: Literal["uuid", "text"]) -> sql.Composed:
    """``owner = caller``, the caller evaluated once per statement (an init plan, not per row)."""
    caller = (
        "(SELECT public.current_user_id()::uuid)"
        if owner_type == "uuid"
        else "(SELECT public.current_user_id())"
    )
    return sql.SQL("{} = " + caller).format(sql.Identifier(column))


def create_policy(table: TableRef, command: str, check: sql.Composable) -> sql.Composed:
    """The CREATE POLICY statement for one command: USING for rows read, WITH CHECK for rows written."""
    parts: list[sql.Composable] = [
        sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR {} TO PUBLIC").format(
            sql.Identifier(policy_name(command)), table.ident, sql.SQL(command.upper())
        )
    ]
    if command in ("select", "update", "delete"):
        parts.append(sql.SQL("USING ({})").format(check))
    if command in ("insert", "update"):
        parts.append(sql.SQL("WITH CHECK ({})").format(check))
    return sql.SQL(" ").join(parts)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PolicyChange:
    policy: str
    action: Literal["create", "replace", "unchanged"]
    reason: str = ""


@dataclass
class TablePolicies:
    table: str
    owner_column: str
    owner_type: str = ""
    enable_rls: bool = False
    force_rls: bool = False
    missing: bool = False  # the table does not exist (yet)
    changes: list[PolicyChange] = field(default_factory=list)

    @property
    def has_work(self) -> bool:
        return (
            self.missing
            or self.enable_rls
            or self.force_rls
            or any(c.action != "unchanged" for c in self.changes)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "owner_column": self.owner_column, "owner_type": self.owner_type,
            "enable_rls": self.enable_rls, "force_rls": self.force_rls, "missing": self.missing,
            "policies": [{"policy": c.policy, "action": c.action, "reason": c.reason} for c in self.changes],
        }  # fmt: skip


def check_config(tables: list[SyncTable]) -> list[tuple[SyncTable, TableRef]]:
    refs = [(t, parse_table_name(t.name)) for t in tables]
    seen: set[TableRef] = set()
    for table, ref in refs:
        if ref in seen:
            raise UsageError(f"sync table {ref} is listed twice in [[sync.tables]]; keep one entry")
        seen.add(ref)
        if not table.owner_column:
            raise UsageError(
                f"sync table {ref} has an empty owner_column; name the column holding the user id"
            )
    return refs


_TABLE_INFO = """
SELECT c.relrowsecurity, c.relforcerowsecurity, c.relkind, pg_catalog.format_type(a.atttypid, NULL)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a
       ON a.attrelid = c.oid AND a.attname = %(column)s AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
"""

_POLICY_STATE = """
SELECT p.polname, p.polpermissive, p.polcmd, p.polroles::text,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       pg_catalog.obj_description(p.oid, 'pg_policy')
FROM pg_catalog.pg_policy p
WHERE p.polrelid = %(oid)s::regclass
"""


def _stored_digest(row: tuple[Any, ...]) -> str:
    return digest(repr(tuple(row[1:6])))


def plan_table(conn: psycopg.Connection, table: SyncTable, ref: TableRef) -> TablePolicies:
    """What must change on one table; raises when the table is unusable (not when it is missing)."""
    plan = TablePolicies(table=str(ref), owner_column=table.owner_column)
    row = conn.execute(
        _TABLE_INFO, {"schema": ref.schema, "table": ref.name, "column": table.owner_column}
    ).fetchone()
    if row is None:
        plan.missing = True
        return plan
    rls, force, relkind, column_type = row
    if relkind not in ("r", "p"):
        raise UsageError(
            f"sync table {ref} is not a table (relkind {relkind}); list only tables in [[sync.tables]]"
        )
    if column_type is None:
        raise UsageError(
            f"sync table {ref} has no column '{table.owner_column}'; fix owner_column or the table"
        )
    owner_type = OWNER_TYPES.get(column_type)
    if owner_type is None:
        raise UsageError(
            f"owner column {table.owner_column} of {ref} is {column_type}; it must be uuid or text "
            "(Supabase user ids are uuids)"
        )
    plan.owner_type, plan.enable_rls, plan.force_rls = owner_type, not rls, not force
    existing = {r[0]: r for r in conn.execute(_POLICY_STATE, {"oid": str(ref)}).fetchall()}
    check = owner_check(table.owner_column, owner_type)  # type: ignore[arg-type]
    for command in COMMANDS:
        name = policy_name(command)
        wanted = digest(create_policy(ref, command, check).as_string(conn))
        current = existing.get(name)
        if current is None:
            plan.changes.append(PolicyChange(name, "create"))
            continue
        comment = current[6] or ""
        if comment == f"{COMMENT_PREFIX}{wanted}:{_stored_digest(current)}":
            plan.changes.append(PolicyChange(name, "unchanged"))
        elif comment.startswith(COMMENT_PREFIX) and comment.split(":")[1] != wanted:
            plan.changes.append(PolicyChange(name, "replace", "the configuration changed"))
        else:
            plan.changes.append(PolicyChange(name, "replace", "the policy was changed outside postgressor"))
    return plan


def _fixed_search_path(conn: psycopg.Connection) -> None:
    """pg_get_expr qualifies names relative to search_path: pin it so digests do not depend on the role."""
    conn.execute("SET LOCAL search_path = pg_catalog")


def plan_policies(conn: psycopg.Connection, tables: list[SyncTable]) -> list[TablePolicies]:
    refs = check_config(tables)
    with conn.transaction(force_rollback=True):
        _fixed_search_path(conn)
        return [plan_table(conn, table, ref) for table, ref in refs]


def apply_policies(conn: psycopg.Connection, tables: list[SyncTable]) -> list[TablePolicies]:
    """Bring every synced table's RLS and policies up to date in one transaction; return what was done."""
    refs = check_config(tables)
    with conn.transaction():
        _fixed_search_path(conn)
        plans = []
        for table, ref in refs:
            plan = plan_table(conn, table, ref)
            if plan.missing:
                raise PostgressorError(
                    f"sync table {ref} does not exist; create it in a migration or remove it from [[sync.tables]]"
                )
            _apply_table(conn, table, ref, plan)
            plans.append(plan)
    return plans


def _apply_table(conn: psycopg.Connection, table: SyncTable, ref: TableRef, plan: TablePolicies) -> None:
    try:
        if plan.enable_rls:
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ref.ident))
        if plan.force_rls:
            conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(ref.ident))
        check = owner_check(table.owner_column, plan.owner_type)  # type: ignore[arg-type]
        for change, command in zip(plan.changes, COMMANDS, strict=True):
            if change.action == "unchanged":
                continue
            name = sql.Identifier(change.policy)
            statement = create_policy(ref, command, check)
            conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(name, ref.ident))
            conn.execute(statement)
            stored = conn.execute(_POLICY_STATE + " AND p.polname = %(name)s",
                                  {"oid": str(ref), "name": change.policy}).fetchone()  # fmt: skip
            assert stored is not None
            comment = f"{COMMENT_PREFIX}{digest(statement.as_string(conn))}:{_stored_digest(stored)}"
            conn.execute(
                sql.SQL("COMMENT ON POLICY {} ON {} IS {}").format(name, ref.ident, sql.Literal(comment))
            )
    except psycopg.errors.InsufficientPrivilege as err:
        raise PostgressorError(
            f"cannot set row level security on {ref}: {err.diag.message_primary}; the migrating role must own "
            "the table (create it in a migration, or ALTER TABLE ... OWNER TO it)"
        ) from None
