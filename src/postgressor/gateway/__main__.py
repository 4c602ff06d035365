"""`python -m postgressor.gateway --config FILE`: the gateway as the box runs it under systemd.

It imports only the gateway and its few dependencies (not the CLI), so the box's virtualenv stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from postgressor.config import load_settings
from postgressor.errors import PostgressorError
from postgressor.gateway.app import serve
from postgressor.gateway.settings import resolve


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m postgressor.gateway")
    parser.add_argument("--config", type=Path, required=True, help="gateway TOML ([supabase], [[sync.tables]])")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = resolve(load_settings(args.config))
    except PostgressorError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
