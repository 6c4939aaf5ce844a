"""Server processes on free loopback ports, for the tests that run real servers.

``Server`` runs the example project under daphne, uvicorn or gunicorn,
with optional extra command-line options and environment variables, and
gives the tests a WebSocket client and a ``/metrics`` scraper.
``ServerGroup`` starts servers for one test and stops all of them
afterwards. ``LoopbackProcess`` is the start, readiness wait and stop that
every such process shares, so that other servers the tests need, such as
Prometheus, build on it.

Nothing here imports Django models: the unit tests in the same session
configure Django for themselves, and the servers run in their own processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from channels_ws_metrics.multiprocess import DIRECTORY_ENV, SWEEP_INTERVAL_ENV
from tests.metric_samples import MetricsSnapshot

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_MODULE = "example_project.settings"
ASGI_APPLICATION = "example_project.asgi:application"
HOST = "127.0.0.1"

# The ``server`` fixture runs each of its test modules under each of these
# kinds. server_command() also accepts "gunicorn".
SERVER_KINDS = ("daphne", "uvicorn")

# Bounds on every wait in these tests, in seconds.
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 5.0
NETWORK_TIMEOUT = 10.0
METRICS_POLL_TIMEOUT = 5.0
METRICS_POLL_INTERVAL = 0.05
PROCESS_POLL_INTERVAL = 0.05

# Picking a port by binding to port 0 and releasing it leaves a window in
# which another process can take the port, so startup retries on a new
# port when the server reports the address in use.
PORT_ATTEMPTS = 3

# uvicorn logs this line in each worker once the application is loaded,
# under ``uvicorn --workers`` and under gunicorn's uvicorn worker alike.
_STARTED_WORKER_RE = re.compile(r"Started server process \[(\d+)\]")


def server_command(kind: str, port: int) -> list[str]:
    """Return the command line that serves the example project, ending with the ASGI application."""
    if kind == "daphne":
        return [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), ASGI_APPLICATION]
    if kind == "uvicorn":
        # Channels' ProtocolTypeRouter has no "lifespan" entry, so uvicorn's
        # lifespan probe would only log a failure.
        return [
            sys.executable, "-m", "uvicorn",
            "--host", HOST, "--port", str(port),
            "--no-access-log", "--lifespan", "off",
            ASGI_APPLICATION,
        ]  # fmt: skip
    if kind == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn",
            "--bind", f"{HOST}:{port}",
            "--worker-class", "uvicorn_worker.UvicornWorker",
            "--graceful-timeout", str(int(SHUTDOWN_TIMEOUT)),
            *_gunicorn_control_socket_options(),
            ASGI_APPLICATION,
        ]  # fmt: skip
    raise ValueError(f"Unknown server kind {kind!r}. Expected one of {(*SERVER_KINDS, 'gunicorn')}.")


def _gunicorn_control_socket_options() -> list[str]:
    # Imported here because gunicorn is optional, and its tests skip without it.
    import gunicorn.config

    # Gunicorn releases with a control socket create it under $HOME by
    # default, so it is turned off where the option exists.
    known_settings = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in known_settings else []


def server_environment(database_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["EXAMPLE_DB_PATH"] = str(database_path)
    env["PYTHONUNBUFFERED"] = "1"
    # django-prometheus and prometheus_client switch to multiprocess mode
    # when these are set, which would change what /metrics returns.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    return env


def multiprocess_environment(directory: Path, sweep_interval: float | None = None) -> dict[str, str]:
    """Return the variables that run a server in prometheus_client's multiprocess mode.

    Without ``sweep_interval`` the package's default dead-worker sweep applies.
    """
    env = {DIRECTORY_ENV: str(directory)}
    if sweep_interval is not None:
        env[SWEEP_INTERVAL_ENV] = str(sweep_interval)
    return env


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class LoopbackProcess:
    """A command serving on a free loopback port, with its stdout and stderr in a log file.

    Subclasses give the command and may override ``environment()`` and
    ``is_ready()``. With ``start_new_session`` the command runs in its own
    session, so that stopping it also ends the workers of a supervisor
    that did not stop them itself.
    """

    def __init__(self, kind: str, log_path: Path, *, start_new_session: bool = False) -> None:
        self.kind = kind
        self.log_path = log_path
        self.start_new_session = start_new_session
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # Direct connections only: an HTTP proxy from the environment must
        # not see these requests.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def command(self) -> list[str]:
        """Return the command line for the current ``port``."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """Return the process's environment, or None to inherit that of the test process."""
        return None

    def is_ready(self) -> bool:
        """Return whether the process is ready for requests.

        By default that is when it accepts TCP connections.
        """
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    # Process lifecycle

    def start(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = pick_free_port()
            command = self.command()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {self.kind} on port {self.port}: {' '.join(command)}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=self.start_new_session,
                )
            if self._wait_until_ready():
                return

            self.stop()
            if "address already in use" not in self.read_output().lower():
                break
        pytest.fail(
            f"{self.kind} did not become ready on {HOST}:{self.port} within "
            f"{STARTUP_TIMEOUT} s (exit code {self.process.poll()}). Output:\n{self.read_output()}"
        )

    def _wait_until_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.is_ready():
                return True
            time.sleep(PROCESS_POLL_INTERVAL)
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.start_new_session:
            self._stop_session()
        elif self.process.poll() is None:
            self._stop_process()

    def _stop_process(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)

    def _stop_session(self) -> None:
        # gunicorn gives its workers up to --graceful-timeout, which is
        # SHUTDOWN_TIMEOUT, before it exits, so this wait is twice that.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT * 2)
            except subprocess.TimeoutExpired:
                pass

        # The session id is the pid of the process started above, so this
        # reaches only that process and the workers it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)

    def terminate(self) -> None:
        """Send SIGTERM, as a process manager does to stop the server."""
        self.process.send_signal(signal.SIGTERM)

    async def wait_for_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit, and return its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(PROCESS_POLL_INTERVAL)
        return self.process.poll()

    def output_size(self) -> int:
        return self.log_path.stat().st_size

    def read_output(self, start: int = 0) -> str:
        """Return the process's combined stdout and stderr from byte ``start`` on."""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read().decode("utf-8", errors="replace")


class Server(LoopbackProcess):
    """A daphne, uvicorn or gunicorn process serving the example project on loopback.

    ``options`` go before the ASGI application on the command line, and
    ``environment`` is added to that of ``server_environment()``.
    """

    def __init__(
        self,
        kind: str,
        database_path: Path,
        log_path: Path,
        options: list[str] | None = None,
        environment: dict[str, str] | None = None,
        *,
        start_new_session: bool = False,
    ) -> None:
        super().__init__(kind, log_path, start_new_session=start_new_session)
        self.database_path = database_path
        self.options = options or []
        self.extra_environment = environment or {}

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def command(self) -> list[str]:
        # Every server reads its options before the ASGI application, which
        # ends each command of server_command().
        base = server_command(self.kind, self.port)
        return [*base[:-1], *self.options, base[-1]]

    def environment(self) -> dict[str, str]:
        env = server_environment(self.database_path)
        env.update(self.extra_environment)
        return env

    # Workers

    def started_worker_pids(self) -> list[int]:
        """Return the pids of the workers that logged their start, in order."""
        return [int(pid) for pid in _STARTED_WORKER_RE.findall(self.read_output())]

    def wait_for_workers(self, count: int, timeout: float = STARTUP_TIMEOUT) -> list[int]:
        """Wait until ``count`` workers logged their start, and return their pids."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.started_worker_pids()
            if len(pids) >= count:
                return pids
            if time.monotonic() >= deadline or self.process.poll() is not None:
                pytest.fail(
                    f"{self.kind}: {len(pids)} of {count} workers started within {timeout} s. "
                    f"Output:\n{self.read_output()}"
                )
            time.sleep(PROCESS_POLL_INTERVAL)

    # Metrics

    def scrape_now(self) -> MetricsSnapshot:
        with self._opener.open(f"{self.origin}/metrics", timeout=NETWORK_TIMEOUT) as response:
            return MetricsSnapshot(response.read().decode("utf-8"))

    async def scrape(self) -> MetricsSnapshot:
        return await asyncio.to_thread(self.scrape_now)

    async def scrape_until(
        self,
        condition: Callable[[MetricsSnapshot], bool],
        timeout: float = METRICS_POLL_TIMEOUT,
    ) -> MetricsSnapshot:
        """Scrape until ``condition`` holds, or return the last scrape at the timeout.

        The server may record a close a moment after the client sees it, so
        tests wait for the value they expect and then assert exact values.
        On timeout the caller's assertions report what is missing.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            snapshot = await self.scrape()
            if condition(snapshot) or asyncio.get_running_loop().time() >= deadline:
                return snapshot
            await asyncio.sleep(METRICS_POLL_INTERVAL)

    # WebSocket client

    async def connect(self, path: str, *, origin: str | None = None, **options: Any) -> ClientConnection:
        """Open a WebSocket to ``path``, sending this server's origin unless ``origin`` is given.

        AllowedHostsOriginValidator rejects handshakes without an Origin
        header, so tests send one that ALLOWED_HOSTS accepts.
        """
        options.setdefault("ping_interval", None)
        options.setdefault("open_timeout", NETWORK_TIMEOUT)
        options.setdefault("close_timeout", NETWORK_TIMEOUT)
        return await asyncio.wait_for(
            connect(self.ws_url(path), origin=origin or self.origin, proxy=None, **options),
            NETWORK_TIMEOUT,
        )

    async def send_upgrade_request(self, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a TCP connection and send a WebSocket upgrade request for ``path``.

        For steps that a WebSocket client library does not expose, such as
        leaving in the middle of the handshake or sending a close frame
        without a code.
        """
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), NETWORK_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {HOST}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Origin: {self.origin}\r\n"
            "\r\n"
        )
        writer.write(request.encode("ascii"))
        await asyncio.wait_for(writer.drain(), NETWORK_TIMEOUT)
        return reader, writer

    async def connect_rejected(self, path: str, **options: Any) -> InvalidStatus:
        """Open a WebSocket that the server must reject, and return the ``InvalidStatus`` error."""
        try:
            websocket = await self.connect(path, **options)
        except InvalidStatus as exc:
            return exc
        await asyncio.wait_for(websocket.close(), NETWORK_TIMEOUT)
        pytest.fail(f"{self.kind} accepted a WebSocket to {path!r}; expected an HTTP error response.")


class ServerGroup:
    """Servers started for one test, all stopped by ``stop_all()`` or on leaving a ``with`` block."""

    def __init__(self, database_path: Path, tmp_path: Path, *, start_new_session: bool = False) -> None:
        self.database_path = database_path
        self.tmp_path = tmp_path
        self.start_new_session = start_new_session
        self.servers: list[Server] = []

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def directory(self, name: str) -> Path:
        """Create an empty multiprocess directory, as deployments should before a start."""
        path = self.tmp_path / name
        path.mkdir()
        return path

    def start(
        self,
        kind: str,
        options: list[str] | None = None,
        environment: dict[str, str] | None = None,
    ) -> Server:
        log_path = self.tmp_path / f"{kind}-{len(self.servers)}.log"
        server = Server(
            kind,
            self.database_path,
            log_path,
            options,
            environment,
            start_new_session=self.start_new_session,
        )
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def outputs(self) -> str:
        return "\n".join(
            f"--- {server.kind} output ({server.log_path})\n{server.read_output()}" for server in self.servers
        )
