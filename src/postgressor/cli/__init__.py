"""The postgressor command line: parses, calls plain functions, renders the result."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from postgressor.cli import advisor_cmds, backup_cmds, box, config_cmds, gateway_cmds, jwt_cmds, migrate_cmds
from postgressor.cli.common import GlobalOptions, err_console
from postgressor.cli.help_format import hide_flag_types
from postgressor.errors import PostgressorError


class PostgressorGroup(TyperGroup):
    """Every failure ends as one line on stderr and an exit code: 2 bad input, 1 runtime, 130 Ctrl-C."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PostgressorError as err:
            _fail(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            _fail("interrupted; what was created is recorded: run the command again to resume, "
                  "or 'postgressor destroy' to clean up")  # fmt: skip
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:  # a bug: one line unless asked for the traceback
            if _is_usage_error(err) or os.environ.get("POSTGRESSOR_DEBUG"):
                raise
            _fail(f"internal error: {type(err).__name__}: {err} (set POSTGRESSOR_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any
    ) -> Any:
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except typer.Abort:
            _fail("aborted")
            code = 1
        except Exception as err:
            if not _is_usage_error(err):
                raise
            ctx = getattr(err, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{err.format_message()}{hint}")  # type: ignore[attr-defined]
            code = int(err.exit_code)  # type: ignore[attr-defined]
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _is_usage_error(err: Exception) -> bool:
    """Click's own errors (bad option, missing argument), whichever click Typer ships."""
    return hasattr(err, "format_message") and hasattr(err, "exit_code")


def _fail(message: str) -> None:
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)


hide_flag_types()
app = typer.Typer(
    name="postgressor",
    help="Provision a hardened PostgreSQL + ElectricSQL box that trusts your Supabase JWTs.",
    cls=PostgressorGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default ./postgressor.toml)."
    ),
    stack: str = typer.Option("default", "--stack", "-s", envvar="POSTGRESSOR_STACK", help="Stack name."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    ctx.obj = GlobalOptions(config=config, stack=stack, json=json_output)


app.command("init")(config_cmds.init)
app.add_typer(config_cmds.config_app, name="config")
box.register(app)
app.command("regions")(advisor_cmds.regions)
app.command("cost")(advisor_cmds.cost)
app.command("recommend")(advisor_cmds.recommend)
app.command("migrate")(migrate_cmds.migrate)
app.add_typer(migrate_cmds.schema_app, name="schema")
app.command("verify-jwt")(jwt_cmds.verify_jwt)
app.add_typer(gateway_cmds.gateway_app, name="gateway")
app.add_typer(backup_cmds.backup_app, name="backup")
app.command("restore")(backup_cmds.restore)


def main() -> None:
    app(prog_name="postgressor")
