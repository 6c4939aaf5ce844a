"""Server CPU time per echoed message under uvicorn and daphne, bare, with a peer middleware and with this app.

For each server kind, three processes of one worker each serve the
variants of ``asgi_variants.py`` (bare, peer, app) on 127.0.0.1. This
process is the load client. In each round, and for each variant in turn,
it opens ``--connections`` WebSockets to the example project's echo
consumer. Each connection sends ``--messages`` small text frames,
``--window`` at a time (one by default), and waits for their echoes before
it sends more. The server's user plus system CPU time is read before and
after that exchange, so handshakes and closes fall outside the window. The
variant that goes first changes from round to round, so drift in machine
speed hits every variant.

The server is pinned to one CPU and this process to the others when there
are at least two (``--no-pin`` turns that off). Each round prints how busy
the server and the client were: on a quiet machine the server should be
near 100 %. Prints one JSON object: per variant the CPU microseconds per
echoed message of every round, their median, the ratios of the
medians and a 95 % bootstrap interval of each ratio.

    python benchmarks/e2e.py --servers uvicorn,daphne --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from harness import (
    SERVER_KINDS,
    VARIANTS,
    BenchmarkServer,
    close_connections,
    exit_on_sigterm,
    open_connections,
    parse_servers,
    split_cpus,
)

PAYLOAD = "hello, world"

# Seconds the server gets after the handshakes before the CPU window
# opens, so that the tail of the handshake work is not counted.
SETTLE_SECONDS = 0.2


async def echo(websocket, count: int, window: int) -> None:
    """Send ``count`` frames in batches of ``window`` and read each batch's echoes before the next."""
    remaining = count
    while remaining > 0:
        batch = min(window, remaining)
        for _ in range(batch):
            await websocket.send(PAYLOAD)
        for _ in range(batch):
            reply = await websocket.recv()
            if reply != PAYLOAD:
                raise RuntimeError(f"Echo returned {reply!r}; expected {PAYLOAD!r}.")
        remaining -= batch


async def measure_load(
    server: BenchmarkServer, connections: int, messages: int, window: int, timeout: float
) -> dict[str, float]:
    """Run one load window against ``server`` and return its CPU seconds, message count and wall seconds.

    The client's own CPU seconds come along, to show which side was
    saturated.

    Raises asyncio.TimeoutError when the exchange takes longer than
    ``timeout`` seconds, and RuntimeError when a connection fails or an echo
    differs.
    """
    sockets = await open_connections(server, connections, timeout=timeout)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        cpu_before = server.cpu_seconds()
        client_cpu_before = time.process_time()
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(echo(ws, messages, window) for ws in sockets)), timeout)
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu_before
        cpu_after = server.cpu_seconds()
    finally:
        await close_connections(sockets, timeout)
    return {
        "cpu_seconds": cpu_after - cpu_before,
        "client_cpu_seconds": client_cpu,
        "messages": connections * messages,
        "wall_seconds": wall,
    }


def divide(numerator: float, denominator: float) -> float | None:
    """Return the ratio, or None when a window too short for one clock tick left the denominator at zero."""
    return numerator / denominator if denominator > 0 else None


def ratio_interval(numerators: list[float], denominators: list[float], resamples: int = 2000) -> list[float] | None:
    """Return the 95 % bootstrap interval of median(numerators) / median(denominators).

    Rounds are resampled as pairs, because the variants of one round ran
    back to back on the same machine state. Returns None for fewer than
    three rounds. The random generator has a fixed seed, so the same rounds
    always give the same interval.
    """
    count = len(numerators)
    if count < 3 or len(denominators) != count:
        return None
    generator = random.Random(0)
    ratios = []
    for _ in range(resamples):
        picks = [generator.randrange(count) for _ in range(count)]
        denominator = statistics.median(denominators[index] for index in picks)
        if denominator > 0:
            ratios.append(statistics.median(numerators[index] for index in picks) / denominator)
    if not ratios:
        return None
    ratios.sort()
    return [ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]]


def rotate(items: tuple[str, ...], offset: int) -> list[str]:
    offset %= len(items)
    return list(items[offset:] + items[:offset])


def benchmark_server_kind(
    kind: str, arguments: argparse.Namespace, work_dir: Path, server_cpus: set[int] | None
) -> dict:
    """Run every round for one server kind, with one server process per variant."""
    rounds: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for round_index in range(arguments.rounds):
        # Fresh server processes every round, because one process can run a
        # few per cent faster or slower than another for its whole life
        # (memory layout, hash seeds). The median over rounds of the same
        # processes would keep that as a bias between variants.
        with ExitStack() as stack:
            servers = {
                variant: stack.enter_context(BenchmarkServer(kind, variant, work_dir, server_cpus))
                for variant in VARIANTS
            }

            # Imports, first-connection caches and the metric series are
            # built here, outside the measured window.
            for variant in VARIANTS:
                asyncio.run(
                    measure_load(
                        servers[variant], arguments.connections, arguments.warmup_messages, arguments.window, arguments.timeout
                    )
                )

            for variant in rotate(VARIANTS, round_index):
                load = asyncio.run(
                    measure_load(
                        servers[variant], arguments.connections, arguments.messages, arguments.window, arguments.timeout
                    )
                )
                rounds[variant].append(load)
                print(
                    f"e2e {kind} round {round_index + 1}/{arguments.rounds} {variant}: "
                    f"{load['cpu_seconds'] * 1e6 / load['messages']:.1f} us CPU per message, "
                    f"{load['messages'] / load['wall_seconds']:.0f} messages/s, "
                    f"server busy {load['cpu_seconds'] / load['wall_seconds']:.0%}, "
                    f"client busy {load['client_cpu_seconds'] / load['wall_seconds']:.0%}",
                    file=sys.stderr,
                )

    per_message = {
        variant: [load["cpu_seconds"] * 1e6 / load["messages"] for load in loads]
        for variant, loads in rounds.items()
    }
    median = {variant: statistics.median(values) for variant, values in per_message.items()}
    return {
        "cpu_us_per_message": per_message,
        "median_cpu_us_per_message": median,
        "loads": rounds,
        "median_messages_per_second": {
            variant: statistics.median(load["messages"] / load["wall_seconds"] for load in loads)
            for variant, loads in rounds.items()
        },
        "ratios": {
            "peer_to_bare": divide(median["peer"], median["bare"]),
            "app_to_bare": divide(median["app"], median["bare"]),
            "app_to_peer": divide(median["app"], median["peer"]),
        },
        "ratio_intervals": {
            "peer_to_bare": ratio_interval(per_message["peer"], per_message["bare"]),
            "app_to_bare": ratio_interval(per_message["app"], per_message["bare"]),
            "app_to_peer": ratio_interval(per_message["app"], per_message["peer"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=parse_servers, default=list(SERVER_KINDS), help="comma-separated server kinds")
    parser.add_argument("--rounds", type=int, default=9, help="measured rounds per variant; the median is reported")
    parser.add_argument("--connections", type=int, default=32, help="concurrent WebSocket connections per round")
    parser.add_argument("--messages", type=int, default=1000, help="echoed messages per connection per round")
    parser.add_argument(
        "--window", type=int, default=1, help="frames each connection sends before it reads their echoes"
    )
    parser.add_argument(
        "--warmup-messages", type=int, default=50, help="echoed messages per connection before each round"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed for one round's handshakes, exchange or closes"
    )
    parser.add_argument("--no-pin", action="store_true", help="leave server and client on every CPU")
    arguments = parser.parse_args()
    if min(arguments.rounds, arguments.connections, arguments.messages, arguments.window, arguments.warmup_messages) < 1:
        parser.error("--rounds, --connections, --messages, --window and --warmup-messages must be at least 1")

    exit_on_sigterm()
    server_cpus, client_cpus = (None, None) if arguments.no_pin else split_cpus()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)

    results = {}
    with tempfile.TemporaryDirectory(prefix="ws-metrics-e2e-") as work_dir:
        for kind in arguments.servers:
            results[kind] = benchmark_server_kind(kind, arguments, Path(work_dir), server_cpus)

    report = {
        "benchmark": "e2e",
        "config": {
            "servers": arguments.servers,
            "rounds": arguments.rounds,
            "connections": arguments.connections,
            "messages_per_connection": arguments.messages,
            "window": arguments.window,
            "warmup_messages_per_connection": arguments.warmup_messages,
            "payload": PAYLOAD,
            "server_cpus": sorted(server_cpus) if server_cpus else None,
            "client_cpus": sorted(client_cpus) if client_cpus else None,
        },
        "servers": results,
    }
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
