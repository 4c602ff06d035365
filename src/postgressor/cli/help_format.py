"""How --help shows option types: a flag takes no value, so it shows none.

Typer 0.29 (typer/core.py, ``TyperOption.display_type``) labels every option with its Python type in angle
brackets, flags included (``--json <bool>``, ``--help <bool>``). Typer has no setting for this, so the flag
case is overridden here; options that take a value keep their label.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typed = TyperOption.display_type_rich


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _typed(self, ctx)


def hide_flag_types() -> None:
    """Render flags without a type label in every --help (idempotent)."""
    TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]
