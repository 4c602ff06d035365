"""``postgressor trust-host-key``: show the pinned and the current SSH host key, ask, and re-pin."""

from __future__ import annotations

import typer

from postgressor.cli.common import confirm, console, emit_json, global_options, say, settings_for, stack_name
from postgressor.day2.host_key import fingerprint, observe, repin
from postgressor.state import require_state


def trust_host_key(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required without a terminal)."),
) -> None:
    """Re-pin the stack's SSH host key after the server was rebuilt on purpose.

    Shows the pinned and the current fingerprint (SHA256, as ssh-keygen -l prints them) and asks before
    replacing the pin; nothing else ever replaces it. Exit codes: 0 pinned (or unchanged), 1 SSH unreachable
    or declined, 2 no such stack, or no terminal and no --yes.
    """
    name = stack_name(ctx)
    settings = settings_for(ctx)
    state = require_state(settings.state_dir, name)
    change = observe(state)
    as_json = global_options(ctx).json
    if not change.changed:
        if as_json:
            emit_json({"ok": True, "repinned": False, **change.as_dict()})
        else:
            console.print(f"{change.address}:{change.port} still shows the pinned key {fingerprint(change.new)}; "
                          "nothing to do", markup=False)  # fmt: skip
        return
    say(f"stack '{name}', SSH host {change.address}:{change.port}")
    say(f"  pinned:  {fingerprint(change.old) or '(none)'}")
    say(f"  now:     {fingerprint(change.new)}")
    say("Compare the new fingerprint with the server's own (its console: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub);"
        " a key you did not expect means someone may be between you and the server.")
    confirm(f"Trust the new host key of {change.address} for stack '{name}'?", yes)
    repin(state, change)
    if as_json:
        emit_json({"ok": True, "repinned": True, **change.as_dict()})
    else:
        console.print(f"pinned {fingerprint(change.new)} for stack '{name}'", markup=False)
