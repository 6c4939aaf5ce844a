"""Server instructions per echoed message under valgrind, bare, peer and app.

CPU time on a shared or virtual machine varies by several per cent from
round to round, more than the differences the end-to-end budgets ask
about. Instruction counts from ``valgrind --tool=callgrind`` repeat to a
fraction of a per cent. Each variant's server runs twice under callgrind,
once with a short and once with a long echo load over the same number of
connections. The difference of the two totals, divided by the difference
of the message counts, is the cost of one echoed message: start-up,
handshakes and shutdown cancel out.

    python benchmarks/instructions.py --servers uvicorn,daphne --messages 200,1200

Needs valgrind (Debian package ``valgrind``). Each server runs about 50
times slower than usual, so one run of the defaults takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import harness
from e2e import echo
from harness import SERVER_KINDS, VARIANTS, BenchmarkServer, close_connections, open_connections, parse_servers

# Start-up under callgrind takes tens of seconds instead of about one.
STARTUP_TIMEOUT = 600.0
EXCHANGE_TIMEOUT = 1200.0
SHUTDOWN_TIMEOUT = 300.0

COLLECTED = re.compile(r"Collected : (\d+)")


class CallgrindServer(BenchmarkServer):
    """A daphne or uvicorn server of one variant, run under callgrind."""

    def instructions(self) -> int:
        """Stop the server and return the instructions callgrind counted."""
        self.process.terminate()
        self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        found = COLLECTED.findall(self.read_output())
        if not found:
            raise RuntimeError(f"callgrind printed no total. Output:\n{self.read_output(4000)}")
        return int(found[-1])


async def exchange(server: CallgrindServer, connections: int, messages: int) -> None:
    sockets = await open_connections(server, connections, timeout=EXCHANGE_TIMEOUT)
    try:
        await asyncio.wait_for(asyncio.gather(*(echo(ws, messages, 1) for ws in sockets)), EXCHANGE_TIMEOUT)
    finally:
        await close_connections(sockets, EXCHANGE_TIMEOUT)


def count(kind: str, variant: str, connections: int, messages: int, work_dir: Path) -> int:
    server = CallgrindServer(kind, variant, work_dir)
    _start(server)
    try:
        asyncio.run(exchange(server, connections, messages))
        return server.instructions()
    finally:
        server.stop()


def _start(server: CallgrindServer) -> None:
    # BenchmarkServer.start() reads both names from the harness module when
    # it runs, so this is its start-up with the command under valgrind and
    # a longer wait.
    original_command, original_timeout = harness.server_command, harness.STARTUP_TIMEOUT
    harness.server_command = lambda kind, variant, port: [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={server.work_dir}/callgrind.%p.out",
        *original_command(kind, variant, port),
    ]
    harness.STARTUP_TIMEOUT = STARTUP_TIMEOUT
    try:
        server.start()
    finally:
        harness.server_command, harness.STARTUP_TIMEOUT = original_command, original_timeout


def measure_server_kind(kind: str, connections: int, short: int, long: int, work_dir: Path) -> dict:
    """Count every variant of one server kind and return the counts and their ratios."""
    variants: dict[str, dict] = {}
    for variant in VARIANTS:
        totals = {messages: count(kind, variant, connections, messages, work_dir) for messages in (short, long)}
        per_message = (totals[long] - totals[short]) / ((long - short) * connections)
        variants[variant] = {"instructions": totals, "instructions_per_message": per_message}
        print(f"instructions {kind} {variant}: {per_message:,.0f} per echoed message", file=sys.stderr)

    bare = variants["bare"]["instructions_per_message"]
    peer = variants["peer"]["instructions_per_message"]
    app = variants["app"]["instructions_per_message"]
    return {
        "variants": variants,
        "ratios": {"peer_to_bare": peer / bare, "app_to_bare": app / bare, "app_to_peer": app / peer},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", type=parse_servers, default=list(SERVER_KINDS), help="comma-separated server kinds"
    )
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument(
        "--messages",
        default="200,1200",
        help="two echoed-message counts per connection, short and long load",
    )
    arguments = parser.parse_args()
    try:
        short, long = (int(value) for value in arguments.messages.split(","))
    except ValueError:
        parser.error(f"--messages must be two integers separated by a comma, got {arguments.messages!r}")
    if arguments.connections < 1 or not 0 < short < long:
        parser.error("--connections must be at least 1, and --messages two increasing counts above 0")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian package 'valgrind').")

    with tempfile.TemporaryDirectory(prefix="ws-metrics-callgrind-") as work:
        servers = {
            kind: measure_server_kind(kind, arguments.connections, short, long, Path(work))
            for kind in arguments.servers
        }
    json.dump(
        {
            "benchmark": "instructions",
            "config": {"servers": arguments.servers, "connections": arguments.connections, "messages": [short, long]},
            "servers": servers,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
