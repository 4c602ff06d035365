"""``postgressor verify-jwt``: check a Supabase access token the way the gateway will."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from postgressor.box.gateway_settings import verifier_config
from postgressor.checks import stack_tokens
from postgressor.checks.stack_tokens import RemoteCheck
from postgressor.checks.tokens import FAIL, Check, check_token, mint_hs256
from postgressor.cli.common import console, emit_json, global_options, settings_for, stack_name
from postgressor.errors import UsageError
from postgressor.jwt_verify import VerifierConfig, config_problem, fingerprint


def _token(token: str | None, mint: bool, sub: str | None, cfg: VerifierConfig) -> str:
    if mint:
        if token:
            raise UsageError("pass either --token or --mint, not both")
        if not sub:
            raise UsageError("--mint needs --sub <user UUID>")
        return mint_hs256(cfg, sub)
    if sub:
        raise UsageError("--sub only goes with --mint")
    if token == "-":  # noqa: S105 - stdin marker
        token = sys.stdin.read().strip()
    if not token:
        raise UsageError("no token: pass --token TOKEN, --token - (stdin), set POSTGRESSOR_TOKEN, "
                         "or --mint --sub UUID")
    return token.removeprefix("Bearer ").strip()


def _secret_from_file(path: Path, token: str | None) -> str:
    """The HS256 secret from ``path`` (``-``: stdin), without its trailing newline; UsageError when unreadable."""
    if str(path) == "-":
        if token == "-":  # noqa: S105 - stdin marker
            raise UsageError("--jwt-secret-file - and --token - both read stdin; put one of them in a file")
        text = sys.stdin.read()
    else:
        try:
            text = path.expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--jwt-secret-file {path}: {getattr(err, 'strerror', None) or err}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise UsageError(f"--jwt-secret-file {path} is empty; put the project's JWT secret in it")
    return secret


def _render(token: str, checks: list[Check | RemoteCheck]) -> None:
    table = Table(title=f"token {fingerprint(token)}", show_lines=False)
    for column in ("check", "result", "detail"):
        table.add_column(column)
    styles = {"pass": "green", "fail": "bold red", "skip": "yellow"}
    for check in checks:
        table.add_row(Text(check.name), Text(check.status, style=styles[check.status]), Text(check.detail))
    console.print(table)


def verify_jwt(
    ctx: typer.Context,
    token: Annotated[str | None, typer.Option(envvar="POSTGRESSOR_TOKEN", show_envvar=True,
                                              help="The access token, or - to read it from stdin.")] = None,
    mint: Annotated[bool, typer.Option("--mint", help="Sign a short-lived HS256 test token.")] = False,
    sub: Annotated[str | None, typer.Option(help="User UUID for --mint.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Local checks only (no gateway, Postgres or "
                                                             "Electric checks on the stack).")] = False,
    jwt_secret_file: Annotated[Path | None, typer.Option(
        "--jwt-secret-file", help="File holding the legacy HS256 secret, or - for stdin (else the config or "
        "POSTGRESSOR_SUPABASE__JWT_SECRET); never on the command line.")] = None,
    jwks_url: Annotated[str | None, typer.Option(help="JWKS URL (else the config).")] = None,
    audience: Annotated[str | None, typer.Option(help="Expected aud (default authenticated).")] = None,
    issuer: Annotated[str | None, typer.Option(help="Expected iss (else the config).")] = None,
    stack: Annotated[str | None, typer.Option("--stack", "-s", help="Stack name.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a token: header, key source, signature, exp/iat/nbf, aud, iss, sub and role; then, unless
    --offline, on the stack: the gateway accepts it (and refuses tampered, expired and missing tokens),
    Postgres maps it to current_user_id() and forced RLS hides other users' rows, Electric is healthy.

    Exit codes: 0 every check passed (or was skipped), 1 a check failed, 2 usage or configuration error.
    """
    name = stack_name(ctx, stack)
    settings = settings_for(ctx)
    base = verifier_config(settings)
    cfg = VerifierConfig(
        jwt_secret=_secret_from_file(jwt_secret_file, token) if jwt_secret_file else base.jwt_secret,
        jwks_url=jwks_url if jwks_url is not None else base.jwks_url,
        issuer=issuer if issuer is not None else base.issuer,
        audience=audience or base.audience,
    )
    problem = config_problem(cfg)
    if problem:
        raise UsageError(problem)
    value = _token(token, mint, sub, cfg)
    # The stack must be checkable before anything runs (usage errors exit 2 with nothing printed).
    target = None if offline else stack_tokens.remote_target(settings, name)
    local = check_token(value, cfg)
    checks: list[Check | RemoteCheck] = list(local)
    if target is not None:
        checks += stack_tokens.run_remote(target, value, cfg, all(c.status != FAIL for c in local))
    ok = all(c.status != FAIL for c in checks)
    if json_output or global_options(ctx).json:
        emit_json({"ok": ok, "token": fingerprint(value), "minted": mint, "stack": None if offline else name,
                   "checks": [c.as_dict() for c in checks]})
    else:
        _render(value, checks)
        failed = [c.name for c in checks[len(local):] if c.status == FAIL]
        if any(c.status == FAIL for c in local):
            summary = "token refused"
        elif failed:
            summary = f"stack '{name}': failed {', '.join(failed)}"
        else:
            summary = "token accepted" + ("" if offline else f"; stack '{name}' passed every check")
        console.print(summary, markup=False)
    if not ok:
        raise typer.Exit(1)
