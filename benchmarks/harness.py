"""Server processes and WebSocket clients shared by e2e.py and scale.py.

``BenchmarkServer`` runs daphne or uvicorn with one application of
``asgi_variants.py`` on a free 127.0.0.1 port and reads the CPU time and
resident memory of that process with psutil. The client helpers open,
drive and drop many connections from the calling process, with a timeout
on every step.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
from websockets.asyncio.client import ClientConnection, connect

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
HOST = "127.0.0.1"
ECHO_PATH = "/ws/echo/"

SERVER_KINDS = ("uvicorn", "daphne")
#: Names of the applications in asgi_variants.py, without "_application".
VARIANTS = ("bare", "peer", "app")

# Seconds.
STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 10.0

# Binding port 0 and releasing it leaves a window in which another process
# can take the port, so a server that reports the address in use is
# started again on a new port.
PORT_ATTEMPTS = 3

# Handshakes in flight at once. Daphne 4.2 listens with Twisted's default
# backlog of 50, and a full backlog makes the kernel drop SYNs, which the
# client sees as a stalled connect.
OPEN_CONCURRENCY = 32

# An estimated margin for the file descriptors a process needs besides its
# WebSocket connections: the interpreter, the log file, the thread pool and
# the listening socket.
SPARE_FILE_DESCRIPTORS = 256

# Linux's prctl(2), to have the kernel send a server SIGTERM when the
# benchmark that started it dies, even by SIGKILL. None elsewhere.
PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``with`` blocks stop the servers on the way out."""

    def handle(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)


def parse_servers(text: str) -> list[str]:
    """Parse a comma-separated list of server kinds, for argparse."""
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    if not kinds or any(kind not in SERVER_KINDS for kind in kinds):
        raise argparse.ArgumentTypeError(
            f"invalid server list {text!r}; expected a comma-separated subset of {SERVER_KINDS}"
        )
    return kinds


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """Return the CPUs for the server and for the client, or (None, None) to leave both unpinned.

    The server gets the first CPU this process may run on and the client
    the rest, so that on a 2-core machine neither steals the other's core.
    With a single CPU, or where the platform has no ``sched_setaffinity``,
    nothing is pinned.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def raise_file_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``needed`` and return the new soft limit.

    The soft limit never goes past the hard limit, which only root may
    raise. Child processes inherit the limit, so servers started after this
    call get it too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def server_command(kind: str, variant: str, port: int) -> list[str]:
    application = f"asgi_variants:{variant}_application"
    if kind == "uvicorn":
        # Channels' ProtocolTypeRouter has no "lifespan" entry, so the
        # lifespan probe would only log a failure.
        return [
            sys.executable, "-m", "uvicorn",
            "--host", HOST, "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--lifespan", "off",
            application,
        ]  # fmt: skip
    if kind == "daphne":
        # Verbosity 0 turns off daphne's access log as well.
        return [sys.executable, "-m", "daphne", "-v", "0", "-b", HOST, "-p", str(port), application]
    raise ValueError(f"Unknown server kind {kind!r}; expected one of {SERVER_KINDS}.")


def server_environment(work_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    env["DJANGO_DEBUG"] = "0"
    # The echo consumer never queries the database, but Django must not
    # create the example project's db.sqlite3 in the checkout.
    env["EXAMPLE_DB_PATH"] = str(work_dir / "db.sqlite3")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCHMARKS_DIR), str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    # Multiprocess mode would change the cost of every metric update.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    return env


class BenchmarkServer:
    """One daphne or uvicorn process serving one variant on 127.0.0.1."""

    def __init__(self, kind: str, variant: str, work_dir: Path, cpus: set[int] | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}; expected one of {VARIANTS}.")
        self.kind = kind
        self.variant = variant
        self.work_dir = work_dir
        self.cpus = cpus
        self.log_path = work_dir / f"{kind}-{variant}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._psutil: psutil.Process | None = None

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def __enter__(self) -> BenchmarkServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and return once it accepts TCP connections.

        Raises RuntimeError, with the server's output, when it exits or
        does not listen within STARTUP_TIMEOUT.
        """
        for _ in range(PORT_ATTEMPTS):
            self.port = pick_free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {self.kind} {self.variant} on port {self.port}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    server_command(self.kind, self.variant, self.port),
                    cwd=REPO_ROOT,
                    env=server_environment(self.work_dir),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=self._prepare_child,
                )
            if self._wait_until_listening():
                self._psutil = psutil.Process(self.process.pid)
                return
            self.stop()
            if "address already in use" not in self.read_output().lower():
                break

        raise RuntimeError(
            f"{self.kind} serving {self.variant}_application did not listen on {HOST}:{self.port} "
            f"within {STARTUP_TIMEOUT} s (exit code {self.process.poll()}). Output:\n{self.read_output()}"
        )

    def _prepare_child(self) -> None:
        # Runs in the child between fork and exec, so every thread the
        # server starts inherits the CPU set.
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def _wait_until_listening(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)

    def read_output(self, max_chars: int | None = None) -> str:
        """Return the server's combined stdout and stderr, only the last ``max_chars`` characters if given."""
        try:
            output = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(could not read {self.log_path}: {exc})"
        return output if max_chars is None else output[-max_chars:]

    def cpu_seconds(self) -> float:
        """Return the user plus system CPU time of the server process, all threads, in seconds.

        psutil reads utime and stime from /proc/<pid>/stat on Linux, in
        clock ticks (usually 10 ms). Child processes are not included.
        """
        times = self._process().cpu_times()
        return times.user + times.system

    def rss_bytes(self) -> int:
        return self._process().memory_info().rss

    def _process(self) -> psutil.Process:
        if self._psutil is None:
            raise RuntimeError(f"{self.kind} serving {self.variant}_application is not running.")
        return self._psutil


async def open_connections(
    server: BenchmarkServer, count: int, *, timeout: float, path: str = ECHO_PATH
) -> list[ClientConnection]:
    """Open ``count`` WebSocket connections to ``path``, at most OPEN_CONCURRENCY at a time.

    Raises RuntimeError, after closing the ones that opened, when any
    handshake fails or takes longer than ``timeout`` seconds.
    """
    semaphore = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one() -> ClientConnection:
        async with semaphore:
            # AllowedHostsOriginValidator rejects handshakes without an
            # allowed Origin. proxy=None keeps the client off any proxy set
            # in the environment. Compression is off because it would add
            # the same cost to every variant and hide the difference.
            return await asyncio.wait_for(
                connect(
                    server.ws_url(path),
                    origin=server.origin,
                    proxy=None,
                    compression=None,
                    ping_interval=None,
                    open_timeout=timeout,
                    close_timeout=timeout,
                ),
                timeout,
            )

    results = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    opened = [result for result in results if isinstance(result, ClientConnection)]
    failures = [result for result in results if not isinstance(result, ClientConnection)]
    if failures:
        abort_connections(opened)
        raise RuntimeError(
            f"{len(failures)} of {count} connections to {server.ws_url(path)} failed "
            f"({server.kind}, {server.variant}); first error: {failures[0]!r}. "
            f"End of the server's output:\n{server.read_output(2000)}"
        )
    return opened


async def close_connections(connections: Iterable[ClientConnection], timeout: float) -> None:
    """Close each connection with a close handshake, aborting the ones still open after ``timeout``."""
    connections = list(connections)
    try:
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True), timeout)
    except asyncio.TimeoutError:
        abort_connections(connections)


def abort_connections(connections: Iterable[ClientConnection]) -> None:
    """Drop the TCP connections without a close handshake."""
    for websocket in connections:
        websocket.transport.abort()
