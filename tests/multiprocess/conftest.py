"""Servers in prometheus_client's multiprocess mode, and tools they need.

The end-to-end helpers of ``tests/e2e`` start one process without a
multiprocess directory. The servers here share a temporary directory given
in ``PROMETHEUS_MULTIPROC_DIR`` and run several processes: daphne processes
side by side, ``uvicorn --workers`` or gunicorn with uvicorn workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from channels_ws_metrics.multiprocess import DIRECTORY_ENV, SWEEP_INTERVAL_ENV
from tests.e2e.conftest import (
    ASGI_APPLICATION,
    HOST,
    NETWORK_TIMEOUT,
    PORT_ATTEMPTS,
    REPO_ROOT,
    SHUTDOWN_TIMEOUT,
    STARTUP_TIMEOUT,
    Server,
    example_database,  # noqa: F401  (a fixture the tests here request)
    pick_free_port,
    server_environment,
)

#: A phrase of the warning about files left by an earlier run, which a
#: normal start must not log.
LEFTOVER_WARNING = "include values from an earlier run"

# uvicorn logs this line in each worker once the application is loaded,
# under ``uvicorn --workers`` and under gunicorn's uvicorn worker alike.
_STARTED_WORKER_RE = re.compile(r"Started server process \[(\d+)\]")

CommandBuilder = Callable[[int], list[str]]


def daphne_command(port: int) -> list[str]:
    return [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), ASGI_APPLICATION]


def uvicorn_workers_command(workers: int) -> CommandBuilder:
    def build(port: int) -> list[str]:
        # Channels' ProtocolTypeRouter has no "lifespan" entry.
        return [
            sys.executable, "-m", "uvicorn",
            "--host", HOST, "--port", str(port),
            "--workers", str(workers),
            "--no-access-log", "--lifespan", "off",
            ASGI_APPLICATION,
        ]  # fmt: skip

    return build


def gunicorn_command(workers: int, config_path: Path) -> CommandBuilder:
    import gunicorn.config

    # Gunicorn releases with a control socket create it under $HOME by
    # default, so it is turned off where the option exists.
    known_settings = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    no_control_socket = ["--no-control-socket"] if "control_socket_disable" in known_settings else []

    def build(port: int) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn",
            "--config", str(config_path),
            "--bind", f"{HOST}:{port}",
            "--workers", str(workers),
            "--worker-class", "uvicorn_worker.UvicornWorker",
            "--graceful-timeout", str(int(SHUTDOWN_TIMEOUT)),
            *no_control_socket,
            ASGI_APPLICATION,
        ]  # fmt: skip

    return build


class MultiprocessServer(Server):
    """A server command on a loopback port, writing to a shared multiprocess directory.

    The command runs in its own session, so that stopping it also ends the
    workers of a supervisor that did not stop them itself.
    """

    def __init__(
        self,
        kind: str,
        command: CommandBuilder,
        database_path: Path,
        log_path: Path,
        multiprocess_directory: Path,
        sweep_interval: float,
    ) -> None:
        super().__init__(kind, database_path, log_path)
        self.command = command
        self.multiprocess_directory = multiprocess_directory
        self.sweep_interval = sweep_interval

    def environment(self) -> dict[str, str]:
        env = server_environment(self.database_path)
        env[DIRECTORY_ENV] = str(self.multiprocess_directory)
        env[SWEEP_INTERVAL_ENV] = str(self.sweep_interval)
        return env

    def start(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = pick_free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {self.kind} on port {self.port}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    self.command(self.port),
                    cwd=REPO_ROOT,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_until_listening():
                return
            if "address already in use" not in self.read_output().lower():
                break
        pytest.fail(
            f"{self.kind} did not start listening on {HOST}:{self.port} within "
            f"{STARTUP_TIMEOUT} s (exit code {self.process.poll()}). Output:\n{self.read_output()}"
        )

    def stop(self) -> None:
        if self.process is None:
            return
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
            time.sleep(0.05)


class ServerFleet:
    """Starts multiprocess servers for one test and stops all of them afterwards."""

    def __init__(self, database_path: Path, tmp_path: Path) -> None:
        self.database_path = database_path
        self.tmp_path = tmp_path
        self.servers: list[MultiprocessServer] = []

    def directory(self, name: str) -> Path:
        """Create an empty multiprocess directory, as deployments should before a start."""
        path = self.tmp_path / name
        path.mkdir()
        return path

    def start(
        self,
        kind: str,
        command: CommandBuilder,
        multiprocess_directory: Path,
        sweep_interval: float,
    ) -> MultiprocessServer:
        log_path = self.tmp_path / f"{kind}-{len(self.servers)}.log"
        server = MultiprocessServer(
            kind, command, self.database_path, log_path, multiprocess_directory, sweep_interval
        )
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def outputs(self) -> str:
        return "\n".join(f"--- {server.kind} output\n{server.read_output()}" for server in self.servers)


@pytest.fixture
def dead_pid() -> int:
    """Return the id of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait(timeout=SHUTDOWN_TIMEOUT)
    return process.pid


@pytest.fixture
def fleet(example_database: Path, tmp_path: Path) -> Iterator[ServerFleet]:  # noqa: F811
    servers = ServerFleet(example_database, tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the output of every server of a failed test to its report."""
    report = yield
    servers = getattr(item, "funcargs", {}).get("fleet")
    if report.failed and isinstance(servers, ServerFleet):
        with contextlib.suppress(OSError):
            report.sections.append(("server output", servers.outputs()))
    return report


async def open_whoami(server: Server, count: int) -> list[tuple[ClientConnection, int]]:
    """Open ``count`` connections to ``ws/test/?action=whoami`` and return each with its worker's pid."""
    connections = []
    for _ in range(count):
        websocket = await server.connect("/ws/test/?action=whoami")
        greeting = await asyncio.wait_for(websocket.recv(), NETWORK_TIMEOUT)
        connections.append((websocket, int(greeting.removeprefix("pid:"))))
    return connections


def require_tool(name: str) -> str:
    """Return the path of a command-line tool, skipping the test outside CI when it is missing.

    CI installs the Debian package ``prometheus`` (``.ci/run``), so a missing
    tool there fails the test instead of hiding it behind a skip.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = (
        f"{name} was not found on PATH. Install it with "
        "'apt-get install --no-install-recommends prometheus' (Debian package 'prometheus')."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message + " CI must run this test, so .ci/run installs the package.")
    pytest.skip(message)
