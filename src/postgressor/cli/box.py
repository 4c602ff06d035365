"""Box verbs: up, deploy, plan, status, ssh, destroy."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the box verbs to ``app``."""
