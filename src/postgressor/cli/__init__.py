"""The postgressor command line: parses, calls plain functions, renders the result."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from postgressor.cli import advisor_cmds, box, config_cmds, migrate_cmds
from postgressor.cli.common import GlobalOptions, err_console
from postgressor.errors import PostgressorError

app = typer.Typer(
    name="postgressor",
    help="Provision a hardened PostgreSQL + ElectricSQL box that trusts your Supabase JWTs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="Config file (default ./postgressor.toml)."),
    stack: str = typer.Option("default", "--stack", "-s", envvar="POSTGRESSOR_STACK", help="Stack name."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    ctx.obj = GlobalOptions(config=config, stack=stack, json=json_output)


app.command("init")(config_cmds.init)
app.add_typer(config_cmds.config_app, name="config")
box.register(app)
app.command("migrate")(migrate_cmds.migrate)
app.add_typer(migrate_cmds.schema_app, name="schema")
app.command("regions")(advisor_cmds.regions)
app.command("cost")(advisor_cmds.cost)
app.command("recommend")(advisor_cmds.recommend)


def main() -> None:
    try:
        app(prog_name="postgressor")
    except PostgressorError as err:
        err_console.print(f"error: {err}", markup=False)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; what was created is recorded: run the command again to resume, "
                          "or 'postgressor destroy' to clean up", markup=False)
        sys.exit(130)
    except Exception as err:  # a bug: one line unless asked for the traceback
        if os.environ.get("POSTGRESSOR_DEBUG"):
            raise
        err_console.print(f"internal error: {type(err).__name__}: {err} (set POSTGRESSOR_DEBUG=1 for the "
                          "traceback and report it)", markup=False)
        sys.exit(1)
