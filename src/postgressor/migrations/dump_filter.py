"""Make a pg_dump of a Supabase database apply to vanilla PostgreSQL, statement by statement.

Each statement is parsed with pglast (PostgreSQL's own grammar) and checked for references to what a
vanilla box lacks: Supabase-managed schemas' tables, functions and types, its internal roles, extension
objects. A statement is kept as written, rewritten (its AST changed and printed again), or removed; every
removal or rewrite of the application's own objects leaves a ``-- postgressor …`` note in place. Objects
removed take their dependants with them (a view on a removed view, a grant or comment on it, a trigger
calling a removed function), so no kept statement refers to something that is gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pglast import ast, enums, parse_sql, visitors
from pglast.parser import ParseError
from pglast.stream import RawStream

from postgressor.migrations import sqltext

MANAGED_SCHEMAS = frozenset({
    "auth", "storage", "realtime", "_realtime", "supabase_functions", "supabase_migrations", "extensions",
    "graphql", "graphql_public", "pgsodium", "pgsodium_masks", "vault", "net", "pgbouncer", "_analytics",
    "_supavisor", "cron", "pgtle", "pgmq", "topology", "tiger", "tiger_data", "postgressor",
})  # fmt: skip
# What postgressor's built-in migrations provide in those schemas (migrations/builtin/).
PROVIDED_FUNCTIONS = frozenset({"auth.uid", "auth.role", "auth.email", "auth.jwt"})
# Supabase's API roles: the box creates them (box/deploys/postgres.py, builtin 0001). All other roles are internal.
API_ROLES = frozenset({"anon", "authenticated", "service_role"})
EXTENSIONS_SCHEMA = "extensions"
_MANAGED_NAME = re.compile(r'(?<![\w."$])"?([a-z_][a-z0-9_]*)"?\s*\.\s*"?([A-Za-z_][A-Za-z0-9_$]*)"?')


@dataclass(frozen=True)
class Source:
    """What the dev database says about extension objects: (schema, name) -> extension."""

    extension_objects: dict[tuple[str, str], str] = field(default_factory=dict)
    extension_schemas: dict[str, str] = field(default_factory=dict)  # extension -> schema it lives in


@dataclass
class Filtered:
    sql: str
    removed: dict[str, int] = field(default_factory=dict)  # reason -> statements removed
    rewritten: dict[str, int] = field(default_factory=dict)  # reason -> statements rewritten
    extensions_used: set[str] = field(default_factory=set)  # extensions whose objects kept statements use


class _Refs(visitors.Visitor):
    """Qualified relations, functions and types a statement mentions."""

    def __init__(self) -> None:
        self.relations: set[str] = set()
        self.functions: set[str] = set()
        self.types: set[str] = set()

    def visit_RangeVar(self, ancestors: object, node: ast.RangeVar) -> None:
        if node.schemaname:
            self.relations.add(f"{node.schemaname}.{node.relname}")

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        self.functions.add(_dotted(node.funcname))

    def visit_TypeName(self, ancestors: object, node: ast.TypeName) -> None:
        if node.names and len(node.names) > 1:
            self.types.add(_dotted(node.names))


def _dotted(names: tuple[ast.String, ...] | None) -> str:
    return ".".join(str(n.sval) for n in names or ())


def _rel(node: ast.RangeVar | None) -> str:
    """``schema.name`` of a relation reference ("" when absent)."""
    if node is None:
        return ""
    return f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname)


def _refs(node: ast.Node) -> _Refs:
    found = _Refs()
    found(node)
    return found


def _is_internal_role(spec: ast.RoleSpec) -> bool:
    return spec.roletype == enums.RoleSpecType.ROLESPEC_CSTRING and spec.rolename not in API_ROLES


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


class DumpFilter:
    """Filter one dump; ``run`` returns the text to write and what was removed or rewritten."""

    def __init__(self, source: Source, managed: frozenset[str] = MANAGED_SCHEMAS) -> None:
        self.source = source
        self.managed = managed
        self.gone: set[str] = set()  # schema.name of relations and functions removed so far
        self.result = Filtered("")

    # -- what a name means on the box -----------------------------------------------------------
    def _missing(self, qualified: str) -> bool:
        """True when ``schema.name`` will not exist on a vanilla box."""
        if qualified in self.gone:
            return True
        schema, _, name = qualified.partition(".")
        extension = self.source.extension_objects.get((schema, name))
        if extension is not None:
            self.result.extensions_used.add(extension)
            return False
        return schema in self.managed and bool(name) and qualified not in PROVIDED_FUNCTIONS

    def _missing_refs(self, refs: _Refs) -> list[str]:
        names = sorted(n for n in refs.relations | refs.functions | refs.types if self._missing(n))
        return [f"{n} (removed above)" if n in self.gone else n for n in names]

    def _body_refs(self, statement: str) -> list[str]:
        """Managed names in a function's text body (PL/pgSQL is not parsed: names are matched in code)."""
        found: set[str] = set()

        def scan(code: str) -> str:
            for m in _MANAGED_NAME.finditer(code):
                name = f"{m.group(1)}.{m.group(2)}"
                if m.group(1) in self.managed and self._missing(name):
                    found.add(name)
            return code

        sqltext.map_code(statement, scan)
        return sorted(found)

    # -- the filter --------------------------------------------------------------------------
    def run(self, dump: str) -> Filtered:
        out: list[str] = []
        for seg in sqltext.split(dump):
            if seg.kind == "meta":
                self._count("removed", "psql meta-commands")
                continue
            if seg.kind != "sql":
                out.append(seg.text)
                continue
            lead = seg.source[seg.start : seg.first]
            verdict = self._statement(seg.statement)
            if verdict is None:
                out.append(lead + seg.statement)
            elif isinstance(verdict, _Removed):
                self._count("removed", _category(verdict.reason))
                if verdict.note:
                    out.append(f"\n-- postgressor removed ({verdict.reason}): {_one_line(seg.statement)}\n")
            elif verdict.quiet:
                out.append(lead + verdict.text + ";")
            else:
                self._count("rewritten", _category(verdict.reason))
                out.append(f"{lead}-- postgressor rewrote ({verdict.reason}); was: {_one_line(seg.statement)}\n"
                           f"{verdict.text};\n")  # fmt: skip
        self.result.sql = re.sub(r"\n{3,}", "\n\n", "".join(out))
        return self.result

    def _count(self, kind: str, reason: str) -> None:
        table = self.result.removed if kind == "removed" else self.result.rewritten
        table[reason] = table.get(reason, 0) + 1

    def _statement(self, statement: str) -> _Removed | _Rewritten | None:
        try:
            (raw,) = parse_sql(statement)
        except (ParseError, ValueError):
            return None  # a grammar newer than pglast's: kept as written, `--verify` tries it
        node = raw.stmt
        if node is None:
            return None
        handler = getattr(self, f"_on_{type(node).__name__}", None)
        if handler is not None:
            verdict: _Removed | _Rewritten | None = handler(node, statement)
            if verdict is not None:
                return verdict
        missing = self._missing_refs(_refs(node))
        if missing:
            self._forget(node)
            return _Removed(f"uses {', '.join(missing)}, which a vanilla box lacks", note=True)
        return None

    def _forget(self, node: ast.Node) -> None:
        """Remember the object a removed CREATE made, so what depends on it goes too."""
        if isinstance(node, ast.ViewStmt):
            self.gone.add(_rel(node.view))
        elif isinstance(node, ast.CreateTableAsStmt) and node.into and node.into.rel:
            self.gone.add(_rel(node.into.rel))
        elif isinstance(node, ast.CreateStmt):
            self.gone.add(_rel(node.relation))
        elif isinstance(node, ast.CreateFunctionStmt):
            self.gone.add(_dotted(node.funcname))
        elif isinstance(node, ast.CreateDomainStmt):
            self.gone.add(_dotted(node.domainname))
        elif isinstance(node, ast.CompositeTypeStmt):
            self.gone.add(_rel(node.typevar))

    # -- kinds removed whole ----------------------------------------------------------------
    def _on_CreateExtensionStmt(self, node: ast.Node, text: str) -> _Removed:
        return _Removed("extensions (installed by the export's preamble)")

    _on_AlterExtensionStmt = _on_AlterExtensionContentsStmt = _on_CreateExtensionStmt

    def _on_CreateEventTrigStmt(self, node: ast.Node, text: str) -> _Removed:
        return _Removed("event triggers")

    _on_AlterEventTrigStmt = _on_CreateEventTrigStmt

    def _on_CreatePublicationStmt(self, node: ast.Node, text: str) -> _Removed:
        return _Removed("publications")

    _on_AlterPublicationStmt = _on_CreateSubscriptionStmt = _on_CreatePublicationStmt

    def _on_SecLabelStmt(self, node: ast.Node, text: str) -> _Removed:
        return _Removed("security labels")

    def _on_GrantRoleStmt(self, node: ast.Node, text: str) -> _Removed:
        return _Removed("role memberships")

    def _on_AlterOwnerStmt(self, node: ast.Node, text: str) -> _Removed:
        return _Removed("owners")

    def _on_VariableSetStmt(self, node: ast.VariableSetStmt, text: str) -> _Removed | None:
        if node.name == "transaction_timeout":
            return _Removed("settings newer servers only know")
        if node.name in ("session_authorization", "role"):
            return _Removed("owners")  # grants by another grantor: the migrating role grants them itself
        return None

    def _on_SelectStmt(self, node: ast.SelectStmt, text: str) -> _Rewritten | None:
        if re.match(r"SELECT\s+pg_catalog\.set_config\('search_path',\s*'',\s*false\)", text, re.I):
            # pg_dump qualifies every name it writes; bodies it cannot qualify (SQL functions inlined into
            # indexes and generated columns) resolve helpers as the app's sessions do on Supabase.
            return _Rewritten(
                "search_path as in a Supabase session, so unqualified helpers in bodies resolve",
                "SELECT pg_catalog.set_config('search_path', 'public, extensions', false)",
            )
        return None

    def _on_CommentStmt(self, node: ast.CommentStmt, text: str) -> _Removed | None:
        kind = enums.ObjectType
        if node.objtype == kind.OBJECT_EXTENSION:
            return _Removed("extensions (installed by the export's preamble)")
        if node.objtype == kind.OBJECT_EVENT_TRIGGER:
            return _Removed("event triggers")
        if node.objtype == kind.OBJECT_PUBLICATION:
            return _Removed("publications")
        if node.objtype == kind.OBJECT_SCHEMA:
            name = node.object.sval if isinstance(node.object, ast.String) else ""
            if name == "public":
                return _Removed("comment on schema public")
            if name in self.managed:
                return _Removed("managed schemas")
            return None
        target = _comment_target(node)
        if target and target in self.gone:
            return _Removed(f"depends on {target}, removed above", note=True)
        return None

    def _on_CreateSchemaStmt(self, node: ast.CreateSchemaStmt, text: str) -> _Removed | _Rewritten | None:
        if node.schemaname in self.managed:
            return _Removed("managed schemas")
        if not node.if_not_exists:
            node.if_not_exists = True
            return _Rewritten("IF NOT EXISTS: the schema may exist already", RawStream()(node), quiet=True)
        return None

    # -- kinds rewritten --------------------------------------------------------------------
    def _on_GrantStmt(self, node: ast.GrantStmt, text: str) -> _Removed | _Rewritten | None:
        missing = self._grant_objects_missing(node)
        if missing:
            return _Removed(f"grants on {', '.join(missing)}, which a vanilla box lacks")
        grantees = node.grantees or ()
        keep = [g for g in grantees if not _is_internal_role(g)]
        if not keep:
            return _Removed("grants to Supabase's internal roles")
        if len(keep) < len(grantees):
            dropped = [g.rolename for g in grantees if _is_internal_role(g)]
            node.grantees = tuple(keep)
            return _Rewritten(f"dropped Supabase's internal roles {', '.join(dropped)}", RawStream()(node))
        return None

    def _grant_objects_missing(self, node: ast.GrantStmt) -> list[str]:
        names: list[str] = []
        for obj in node.objects or ():
            if isinstance(obj, ast.RangeVar) and obj.schemaname:
                names.append(_rel(obj))
            elif isinstance(obj, ast.ObjectWithArgs):
                names.append(_dotted(obj.objname))
            elif isinstance(obj, ast.String) and obj.sval in self.managed:
                names.append(obj.sval)
        return [n for n in names if ("." not in n and n in self.managed) or ("." in n and self._missing(n))]

    def _on_AlterDefaultPrivilegesStmt(self, node: ast.AlterDefaultPrivilegesStmt,
                                        text: str) -> _Removed | _Rewritten:  # fmt: skip
        roles = [o for o in node.options or () if o.defname == "roles"]
        schemas = [o for o in node.options or () if o.defname == "schemas"]
        if any(s.sval in self.managed for o in schemas for s in o.arg):
            return _Removed("default privileges in managed schemas")
        action = node.action
        assert action is not None  # the grammar requires GRANT or REVOKE
        keep = [g for g in action.grantees or () if not _is_internal_role(g)]
        if not keep:
            return _Removed("grants to Supabase's internal roles")
        action.grantees = tuple(keep)
        node.options = tuple(schemas) or None
        reason = "defaults for the migrating role (on Supabase: " + ", ".join(
            r.rolename for o in roles for r in o.arg) + ")" if roles else "dropped Supabase's internal roles"
        return _Rewritten(reason, RawStream()(node))

    def _on_CreatePolicyStmt(self, node: ast.CreatePolicyStmt, text: str) -> _Removed | _Rewritten | None:
        table = _rel(node.table)
        verdict = self._policy_verdict(node, table)
        if verdict is not None:
            self.gone.add(f"{table}.{node.policy_name}")
            return verdict
        internal = [r.rolename for r in node.roles or () if _is_internal_role(r)]
        if not internal:
            return None
        keep = [r for r in node.roles or () if not _is_internal_role(r)]
        node.roles = tuple(keep)
        return _Rewritten(f"dropped Supabase's internal roles {', '.join(internal)}", RawStream()(node))

    _on_AlterPolicyStmt = _on_CreatePolicyStmt

    def _policy_verdict(self, node: ast.CreatePolicyStmt, table: str) -> _Removed | None:
        if self._missing(table):
            return _Removed(f"policy on {table}, which a vanilla box lacks", note=True)
        missing = self._missing_refs(_refs(node))
        if missing:
            return _Removed(f"policy uses {', '.join(missing)}, which a vanilla box lacks", note=True)
        roles = node.roles or ()
        if roles and all(_is_internal_role(r) for r in roles):
            names = ", ".join(r.rolename for r in roles)
            return _Removed(f"policy only for Supabase's internal roles {names}", note=True)
        return None

    def _on_CreateFunctionStmt(self, node: ast.CreateFunctionStmt, text: str) -> _Removed | None:
        name = _dotted(node.funcname)
        if name == "public.current_user_id":
            return _Removed("current_user_id() (postgressor provides it)")
        missing = self._missing_refs(_refs(node)) + [n for n in self._body_refs(text) if n != name]
        if missing:
            self.gone.add(name)
            return _Removed(f"function uses {', '.join(sorted(set(missing)))}, which a vanilla box lacks",
                            note=True)  # fmt: skip
        return None

    def _on_CreateTrigStmt(self, node: ast.CreateTrigStmt, text: str) -> _Removed | None:
        table = _rel(node.relation)
        function = _dotted(node.funcname)
        if self._missing(table):
            return _Removed(f"trigger on {table}, which a vanilla box lacks", note=True)
        if self._missing(function):
            self.gone.add(f"{table}.{node.trigname}")
            return _Removed(f"trigger calls {function}, which a vanilla box lacks", note=True)
        return None

    def _on_CreateStmt(self, node: ast.CreateStmt, text: str) -> _Rewritten | None:
        """A table is never removed: defaults, checks and references to what is missing are."""
        removed: list[str] = []
        elements = []
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                removed += self._clean_column(element)
                elements.append(element)
            elif isinstance(element, ast.Constraint) and self._constraint_missing(element):
                removed.append(f"constraint {element.conname or ''} ({', '.join(self._constraint_missing(element))})")
            else:
                elements.append(element)
        if not removed:
            return None
        node.tableElts = tuple(elements)
        return _Rewritten("removed " + "; ".join(removed) + ": a vanilla box lacks them", RawStream()(node))

    def _clean_column(self, column: ast.ColumnDef) -> list[str]:
        removed = []
        names = column.typeName.names if column.typeName else None
        if names and len(names) > 1 and self._missing(_dotted(names)):
            removed.append(f"type {_dotted(names)} of {column.colname} (now text)")
            column.typeName = ast.TypeName(names=(ast.String("text"),), typemod=-1)
        keep = []
        for constraint in column.constraints or ():
            missing = self._constraint_missing(constraint)
            if missing:
                removed.append(f"{_CONSTRAINT_WORD.get(constraint.contype, 'constraint')} of {column.colname} "
                               f"({', '.join(missing)})")  # fmt: skip
            else:
                keep.append(constraint)
        column.constraints = tuple(keep) or None
        return removed

    def _constraint_missing(self, constraint: ast.Constraint) -> list[str]:
        names = self._missing_refs(_refs(constraint))
        if constraint.pktable is not None:
            target = _rel(constraint.pktable)
            if self._missing(target) and target not in names:
                names.append(target)
        return names

    def _on_AlterTableStmt(self, node: ast.AlterTableStmt, text: str) -> _Removed | None:
        cmds = node.cmds or ()
        if any(c.subtype == enums.AlterTableType.AT_ChangeOwner for c in cmds):
            return _Removed("owners")
        table = _rel(node.relation)
        if self._missing(table):
            return _Removed(f"depends on {table}, removed above", note=True)
        for cmd in cmds:
            constraint = cmd.def_ if isinstance(cmd.def_, ast.Constraint) else None
            if constraint is not None and constraint.contype == enums.ConstrType.CONSTR_FOREIGN:
                target = _rel(constraint.pktable)
                if self._missing(target):
                    return _Removed(f"foreign key into {target}, which a vanilla box lacks", note=True)
        return None


_CONSTRAINT_WORD = {
    enums.ConstrType.CONSTR_DEFAULT: "default", enums.ConstrType.CONSTR_CHECK: "check",
    enums.ConstrType.CONSTR_FOREIGN: "reference", enums.ConstrType.CONSTR_GENERATED: "generated expression",
}  # fmt: skip


def _comment_target(node: ast.CommentStmt) -> str:
    obj = node.object
    if isinstance(obj, tuple) and all(isinstance(p, ast.String) for p in obj):
        parts = [p.sval for p in obj]
        if node.objtype == enums.ObjectType.OBJECT_COLUMN:
            parts = parts[:-1]
        return ".".join(parts)
    if isinstance(obj, ast.ObjectWithArgs):
        return _dotted(obj.objname)
    return ""


def _category(reason: str) -> str:
    """The summary line a removal or rewrite counts under (its note in the file has the details)."""
    if "internal roles" in reason:
        return "Supabase's internal roles"
    if "vanilla box lacks" in reason or "removed above" in reason:
        return "references to Supabase-managed objects"
    if reason.startswith("defaults for the migrating role"):
        return "default privileges for Supabase's roles"
    return reason


@dataclass
class _Removed:
    reason: str
    note: bool = False  # the app's own object lost something: say so in place


@dataclass
class _Rewritten:
    reason: str
    text: str
    quiet: bool = False


def filter_dump(dump: str, source: Source | None = None, managed: frozenset[str] = MANAGED_SCHEMAS) -> Filtered:
    """The dump without what a vanilla box would reject; see the module docstring."""
    return DumpFilter(source or Source(), managed).run(dump)
