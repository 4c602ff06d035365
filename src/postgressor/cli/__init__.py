"""The postgressor command line: parses, calls plain functions, renders the result."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from postgressor import __version__
from postgressor.cli import (
    advisor_cmds,
    backup_cmds,
    config_cmds,
    gateway_cmds,
    host_key_cmds,
    jwt_cmds,
    lifecycle_cmds,
    logs_cmds,
    migrate_cmds,
    move_cmds,
    secrets_cmds,
    servers_cmds,
)
from postgressor.cli.common import GlobalOptions, emit_json, err_console, json_emitted, reset_output
from postgressor.cli.help_format import hide_flag_types
from postgressor.errors import ConfigError, PostgressorError, UsageError
from postgressor.masking import mask_url


class PostgressorGroup(TyperGroup):
    """Every failure ends as one line on stderr and an exit code: 2 bad input, 1 runtime, 130 Ctrl-C."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PostgressorError as err:
            _fail(str(err), _code_of(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            _fail("interrupted; what was created is recorded: run the command again to resume, "
                  "or 'postgressor destroy' to clean up", "interrupted")  # fmt: skip
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:  # a bug: one line unless asked for the traceback
            if _is_usage_error(err) or os.environ.get("POSTGRESSOR_DEBUG"):
                raise
            _fail(f"internal error: {type(err).__name__}: {err} (set POSTGRESSOR_DEBUG=1 for the traceback)",
                  "internal")
            raise typer.Exit(1) from None

    json_errors = False  # set per run: --json anywhere on the command line

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        PostgressorGroup.json_errors = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        reset_output()
        try:
            code = super().main(args=hoist_global_options(self, argv), prog_name=prog_name,
                                standalone_mode=False, **extra)  # fmt: skip
        except typer.Abort:
            _fail("aborted", "aborted")
            code = 1
        except Exception as err:
            if not _is_usage_error(err):
                raise
            ctx = getattr(err, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{err.format_message()}{hint}", "usage")  # type: ignore[attr-defined]
            code = int(err.exit_code)  # type: ignore[attr-defined]
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def hoist_global_options(root: Any, argv: list[str]) -> list[str]:
    """Move the root's options (--json, --stack, --config) found after the verb to the front.

    An option the verb defines itself stays where it is (the verb's own meaning wins), nothing after ``--``
    moves, and once a verb that takes any number of arguments (``ssh``) has its first one, the rest is
    that argument's. Short-option clusters are left alone.
    """
    global_opts = {name: p for p in root.params for name in (*p.opts, *p.secondary_opts)}
    front: list[str] = []
    rest: list[str] = []
    command, i = root, 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            rest += argv[i:]
            break
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            own = {n: p for p in command.params for n in (*p.opts, *p.secondary_opts)}
            param = own.get(name) if (command is root or name in own) else global_opts.get(name)
            target = front if (command is not root and name not in own and param is not None) else rest
            takes_value = param is not None and not param.is_flag and not param.count and "=" not in word
            target += argv[i : i + 2] if takes_value else [word]
            i += 2 if takes_value else 1
            continue
        sub = getattr(command, "commands", {}).get(word)
        if sub is not None:
            command = sub
        elif any(p.param_type_name == "argument" and p.nargs == -1 for p in command.params):
            rest += argv[i:]
            break
        rest.append(word)
        i += 1
    return front + rest


def _is_usage_error(err: Exception) -> bool:
    """Click's own errors (bad option, missing argument), whichever click Typer ships."""
    return hasattr(err, "format_message") and hasattr(err, "exit_code")


ERROR_CODES = ((ConfigError, "config"), (UsageError, "usage"), (PostgressorError, "failed"))


def _fail(message: str, code: str) -> None:
    """One line on stderr; with --json also {"error": {"code", "message"}} on stdout (exit codes unchanged)."""
    message = mask_url(message)  # a URL quoted in any error keeps its credentials to itself
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    if PostgressorGroup.json_errors and not json_emitted():  # a result already printed says ok: false
        emit_json({"error": {"code": code, "message": message}})


def _code_of(err: PostgressorError) -> str:
    return next(code for kind, code in ERROR_CODES if isinstance(err, kind))


hide_flag_types()
app = typer.Typer(
    name="postgressor",
    help="Provision a hardened PostgreSQL + ElectricSQL box that trusts your Supabase JWTs.",
    cls=PostgressorGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        if PostgressorGroup.json_errors:
            emit_json({"version": __version__})
        else:
            print(f"postgressor {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default ./postgressor.toml)."
    ),
    stack: str = typer.Option("default", "--stack", "-s", envvar="POSTGRESSOR_STACK", help="Stack name."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable result; failures too."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print the version and exit."),
) -> None:
    """Global options go before or after the verb: 'postgressor up --json' = 'postgressor --json up'."""
    ctx.obj = GlobalOptions(config=config, stack=stack, json=json_output)


app.command("init")(config_cmds.init)
app.add_typer(config_cmds.config_app, name="config")
lifecycle_cmds.register(app)
app.command("logs")(logs_cmds.logs)
app.command("regions")(advisor_cmds.regions)
app.command("cost")(advisor_cmds.cost)
app.command("recommend")(advisor_cmds.recommend)
app.command("migrate")(migrate_cmds.migrate)
app.add_typer(migrate_cmds.schema_app, name="schema")
app.add_typer(move_cmds.move_app, name="move")
app.command("verify-jwt")(jwt_cmds.verify_jwt)
app.add_typer(gateway_cmds.gateway_app, name="gateway")
app.add_typer(backup_cmds.backup_app, name="backup")
app.command("restore")(backup_cmds.restore)
app.add_typer(servers_cmds.servers_app, name="servers")
app.add_typer(secrets_cmds.secrets_app, name="secrets")
app.command("trust-host-key")(host_key_cmds.trust_host_key)


def main() -> None:
    app(prog_name="postgressor")
