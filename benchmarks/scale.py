"""Growth of the middleware's cost with the number of routes and of open connections.

Routes, in process: for routers of 1, 10 and 100 routes, the CPU time of
one connection (connect, accept, disconnect) to the last route, bare and
wrapped. The last route is the worst case for matching, and every
connection of a round has a path of its own, so the middleware's cache of
labels by path does not help. A second wrapped time repeats one path, so
that every label after the first comes from the cache. Next to them is
the least metric work of one connection, on pre-bound prometheus_client
children as in inprocess.py, and the memory that building the middleware
around each router allocates, as tracemalloc counts it.

Open connections, on real servers: for 100, 1,000 and 5,000 concurrent
WebSockets to the example project's echo consumer, how much the server's
resident set size (RSS) grows when they open, divided by the count. Bare
and this app each run in a fresh server process for every count. The
server's CPU time spent opening the connections is reported per
connection as well.

Each connection is a socket in this process and one in the server, so
the soft RLIMIT_NOFILE is raised to the count plus a margin, within the
hard limit, before the servers start, and they inherit it. Counts that do
not fit under the hard limit are skipped and listed in the output.

    python benchmarks/scale.py --part all
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from channels.routing import URLRouter
from django.urls import path

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.metrics import get_metrics
from harness import (
    SERVER_KINDS,
    SPARE_FILE_DESCRIPTORS,
    BenchmarkServer,
    abort_connections,
    close_connections,
    exit_on_sigterm,
    open_connections,
    parse_servers,
    raise_file_limit,
    split_cpus,
)
from inprocess import configure, echo_app, minimal_work, run_connection, time_function

# Seconds the server gets to finish pending work before RSS is read.
SETTLE_SECONDS = 1.0
# Connections opened and closed before the first RSS reading, so that
# lazily built state is already in the baseline.
WARMUP_CONNECTIONS = 10

MEMORY_VARIANTS = ("bare", "app")


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        counts = []
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"invalid count list {text!r}; expected positive integers separated by commas")
    return counts


# Routes, in process


def time_route_connections(application, request_paths: list[str], count: int) -> float:
    """Return CPU seconds per connection (connect, accept, disconnect), cycling through ``request_paths``."""
    messages = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    scopes = [{"type": "websocket", "path": request_path, "query_string": b"", "headers": []} for request_path in request_paths]

    async def run_all() -> None:
        for index in range(count):
            await run_connection(application, scopes[index % len(scopes)], messages)

    loop = asyncio.new_event_loop()
    try:
        started = time.process_time()
        loop.run_until_complete(run_all())
        return (time.process_time() - started) / count
    finally:
        loop.close()


def measure_middleware_bytes(router) -> int:
    """Return the bytes that wrapping ``router`` allocates and keeps, as tracemalloc counts them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        middleware = WebSocketMetricsMiddleware(router)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del middleware
    return after - before


def benchmark_routes(route_counts: list[int], connections: int, rounds: int) -> list[dict]:
    configure("default")
    _, per_connection = minimal_work(get_metrics(), "default")
    results = []
    for route_count in route_counts:
        routes = [path(f"ws/route{index}/<str:name>/", echo_app) for index in range(route_count)]
        last_path = f"/ws/route{route_count - 1}/lobby/"
        # A different room for every connection of a round, more than the
        # middleware's cache of labels by path holds, so every connection
        # pays for matching: the worst case.
        distinct_paths = [f"/ws/route{route_count - 1}/room{number}/" for number in range(connections)]
        bare = URLRouter(routes)
        wrapped = WebSocketMetricsMiddleware(bare)

        time_route_connections(wrapped, distinct_paths, max(1, connections // 10))  # warm up
        samples: dict[str, list[float]] = {"bare": [], "wrapped": [], "wrapped_one_path": [], "minimal": []}
        for _ in range(rounds):
            samples["bare"].append(time_route_connections(bare, distinct_paths, connections) * 1e6)
            samples["wrapped"].append(time_route_connections(wrapped, distinct_paths, connections) * 1e6)
            samples["wrapped_one_path"].append(time_route_connections(wrapped, [last_path], connections) * 1e6)
            samples["minimal"].append(time_function(per_connection, connections) * 1e6)

        median = {key: statistics.median(values) for key, values in samples.items()}
        overhead = median["wrapped"] - median["bare"]
        results.append(
            {
                "routes": route_count,
                "path": last_path,
                "distinct_paths": len(distinct_paths),
                "connection_bare_us": median["bare"],
                "connection_wrapped_us": median["wrapped"],
                "connection_wrapped_one_path_us": median["wrapped_one_path"],
                "connection_minimal_us": median["minimal"],
                "connection_overhead_us": overhead,
                "connection_ratio": overhead / median["minimal"] if median["minimal"] > 0 else None,
                "middleware_bytes": measure_middleware_bytes(bare),
                "rounds_us": samples,
            }
        )
        print(
            f"scale routes={route_count}: bare {median['bare']:.1f} us, wrapped {median['wrapped']:.1f} us "
            f"per connection",
            file=sys.stderr,
        )
    return results


# Open connections, on real servers


async def measure_open_connections(server: BenchmarkServer, count: int, timeout: float) -> dict:
    """Open ``count`` connections to ``server`` and return how much its RSS and CPU time grew."""
    warmup = await open_connections(server, WARMUP_CONNECTIONS, timeout=timeout)
    for websocket in warmup:
        await websocket.send("warm up")
        await asyncio.wait_for(websocket.recv(), timeout)
    await close_connections(warmup, timeout)
    await asyncio.sleep(SETTLE_SECONDS)

    rss_before = server.rss_bytes()
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    sockets = await open_connections(server, count, timeout=timeout)
    try:
        open_seconds = time.perf_counter() - started
        cpu_after = server.cpu_seconds()
        # The consumers finish their accept after the client's handshake
        # returns, so RSS is read once the server has gone quiet.
        await asyncio.sleep(SETTLE_SECONDS)
        rss_after = server.rss_bytes()
    finally:
        abort_connections(sockets)
        await asyncio.sleep(0)

    return {
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "bytes_per_connection": (rss_after - rss_before) / count,
        "open_seconds": open_seconds,
        "open_cpu_us_per_connection": (cpu_after - cpu_before) * 1e6 / count,
    }


def benchmark_connections(
    kinds: list[str], counts: list[int], rounds: int, timeout: float, server_cpus: set[int] | None
) -> tuple[dict, list[str]]:
    file_limit = raise_file_limit(max(counts) + SPARE_FILE_DESCRIPTORS)
    skipped = [
        f"{count} connections: the soft RLIMIT_NOFILE is {file_limit}, below {count + SPARE_FILE_DESCRIPTORS} "
        f"and the hard limit does not allow more"
        for count in counts
        if count + SPARE_FILE_DESCRIPTORS > file_limit
    ]
    counts = [count for count in counts if count + SPARE_FILE_DESCRIPTORS <= file_limit]

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ws-metrics-scale-") as work_dir:
        for kind in kinds:
            results[kind] = {}
            for count in counts:
                samples: dict[str, list[dict]] = {variant: [] for variant in MEMORY_VARIANTS}
                for round_index in range(rounds):
                    # Alternate which variant goes first, as in e2e.py.
                    order = MEMORY_VARIANTS if round_index % 2 == 0 else MEMORY_VARIANTS[::-1]
                    for variant in order:
                        with BenchmarkServer(kind, variant, Path(work_dir), server_cpus) as server:
                            sample = asyncio.run(measure_open_connections(server, count, timeout))
                        samples[variant].append(sample)
                        print(
                            f"scale {kind} {count} open connections {variant}: "
                            f"{sample['bytes_per_connection'] / 1024:.1f} KiB RSS per connection, "
                            f"{sample['open_cpu_us_per_connection']:.0f} us CPU per handshake",
                            file=sys.stderr,
                        )

                summary = {
                    variant: {
                        "median_bytes_per_connection": statistics.median(s["bytes_per_connection"] for s in values),
                        "median_open_cpu_us_per_connection": statistics.median(
                            s["open_cpu_us_per_connection"] for s in values
                        ),
                        "rounds": values,
                    }
                    for variant, values in samples.items()
                }
                summary["app_minus_bare_bytes_per_connection"] = (
                    summary["app"]["median_bytes_per_connection"] - summary["bare"]["median_bytes_per_connection"]
                )
                results[kind][str(count)] = summary
    return {"file_limit": file_limit, "servers": results}, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("routes", "connections", "all"), default="all", help="which part to run")
    parser.add_argument(
        "--route-counts",
        type=parse_counts,
        default=[1, 10, 100],
        help="comma-separated numbers of routes in the router",
    )
    parser.add_argument(
        "--route-connections", type=int, default=5_000, help="connections per round in the routes part"
    )
    parser.add_argument(
        "--route-rounds", type=int, default=7, help="rounds of the routes part; the median is reported"
    )
    parser.add_argument("--servers", type=parse_servers, default=list(SERVER_KINDS), help="comma-separated server kinds")
    parser.add_argument(
        "--open-counts",
        type=parse_counts,
        default=[100, 1_000, 5_000],
        help="comma-separated numbers of concurrent open connections",
    )
    parser.add_argument(
        "--open-rounds", type=int, default=3, help="fresh servers per variant and count; the median is reported"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed for opening or closing one batch of connections"
    )
    parser.add_argument("--no-pin", action="store_true", help="leave server and client on every CPU")
    arguments = parser.parse_args()
    if arguments.route_connections < 1 or arguments.route_rounds < 1 or arguments.open_rounds < 1:
        parser.error("--route-connections, --route-rounds and --open-rounds must be at least 1")

    exit_on_sigterm()
    report: dict = {"benchmark": "scale", "config": dict(vars(arguments))}
    if arguments.part in ("routes", "all"):
        report["routes"] = benchmark_routes(
            arguments.route_counts, arguments.route_connections, arguments.route_rounds
        )

    if arguments.part in ("connections", "all"):
        server_cpus, client_cpus = (None, None) if arguments.no_pin else split_cpus()
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        report["config"]["server_cpus"] = sorted(server_cpus) if server_cpus else None
        report["config"]["client_cpus"] = sorted(client_cpus) if client_cpus else None
        connections, skipped = benchmark_connections(
            arguments.servers, arguments.open_counts, arguments.open_rounds, arguments.timeout, server_cpus
        )
        report["connections"] = connections
        report["skipped"] = skipped
        for reason in skipped:
            print(f"scale: skipped {reason}", file=sys.stderr)

    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
