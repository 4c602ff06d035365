"""`python -m postgressor.gateway --config FILE`: the gateway as the box runs it under systemd.

FILE is the gateway's own settings file (see postgressor.gateway.settings), written by the deploy;
ELECTRIC_SECRET comes from the environment. Imports only the gateway, the verifier and their wheels.
Exit codes: 0 stopped, 2 unusable settings (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from postgressor.gateway.app import serve
from postgressor.gateway.settings import SettingsError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m postgressor.gateway")
    parser.add_argument("--config", type=Path, required=True, help="the gateway's settings file (TOML)")
    args = parser.parse_args(argv)
    try:
        settings = load(args.config)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except OSError as err:  # the one line the deploy's health gate quotes from the journal
        print(f"error: cannot listen on {settings.host}:{settings.port}: {(err.strerror or str(err)).lower()}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
