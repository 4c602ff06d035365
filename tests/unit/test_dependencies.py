"""pyproject's dependencies are exactly what the package imports: nothing undeclared, nothing unused."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "postgressor"


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalise(re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0]) for dep in deps}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, str]:
    """Top-level third-party module -> a file importing it."""
    found: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "postgressor" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_and_every_dependency_imported() -> None:
    providers = packages_distributions()
    wanted = declared()
    used: set[str] = set()
    undeclared = []
    for module, where in sorted(imported_modules().items()):
        # A module not installed here (a dependency for older Pythons, behind a marker) counts by its own name.
        dists = {normalise(d) for d in providers.get(module, [])} or {normalise(module)}
        if not dists & wanted:
            undeclared.append(f"{module} (imported in {where}; from {sorted(dists) or 'no installed distribution'})")
        used |= dists & wanted
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"
    assert wanted - used == set(), f"declared but never imported: {sorted(wanted - used)}"
