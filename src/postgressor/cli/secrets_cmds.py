"""`postgressor secrets push`: the stack's gateway URL (and CA) into Supabase Vault (the work is in vault/push.py)."""

from __future__ import annotations

import typer

from postgressor.cli.common import console, emit_json, global_options, settings_for, stack_name
from postgressor.vault import client
from postgressor.vault import push as vault_push

secrets_app = typer.Typer(help="Share what the app side needs from the stack through Supabase Vault.",
                          no_args_is_help=True)  # fmt: skip


@secrets_app.command("push")
def push(ctx: typer.Context) -> None:
    """Store the stack's gateway URL, and with 'tls internal' (no [https] domain) Caddy's root certificate, in
    Supabase Vault (POSTGRESSOR_VAULT_URL) as postgressor_<stack>_gateway_url and
    postgressor_<stack>_ca_certificate, for Edge Functions to read. Creates, updates or leaves each; safe to repeat.
    """
    settings, stack = settings_for(ctx), stack_name(ctx)
    url = client.vault_url("'secrets push'")  # before the box is contacted
    where, done = vault_push.push(settings, stack, url)
    if global_options(ctx).json:
        emit_json({"ok": True, "stack": stack, "vault": where, "secrets": [p.as_dict() for p in done]})
        return
    for pushed in done:
        why = f": {pushed.detail}" if pushed.detail else ""
        console.print(f"{pushed.status:>9} {pushed.name} ({pushed.what}){why}", markup=False)
    console.print(f"in the Supabase Vault at {where}: the app side reads each by name from the view "
                  "vault.decrypted_secrets (column decrypted_secret)", markup=False)  # fmt: skip
