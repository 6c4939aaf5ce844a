"""Run the example project under real daphne and uvicorn processes.

The ``server`` fixture starts one server process per test module and server
kind, on a free loopback port, and hands the tests a ``Server`` with a
WebSocket client and a ``/metrics`` scraper. Metric values are cumulative
over the life of the process, so tests compare two scrapes.

Nothing here imports Django models: the unit tests in the same session
configure Django for themselves, and the servers run in their own processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULE = "example_project.settings"
ASGI_APPLICATION = "example_project.asgi:application"
HOST = "127.0.0.1"

SERVER_KINDS = ("daphne", "uvicorn")

# Bounds on every wait in these tests, in seconds.
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 5.0
NETWORK_TIMEOUT = 10.0
METRICS_POLL_TIMEOUT = 5.0
METRICS_POLL_INTERVAL = 0.05

# Picking a port by binding to port 0 and releasing it leaves a window in
# which another process can take the port, so startup retries on a new
# port when the server reports the address in use.
PORT_ATTEMPTS = 3


def server_command(kind: str, port: int) -> list[str]:
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
    raise ValueError(f"Unknown server kind {kind!r}; expected one of {SERVER_KINDS}.")


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


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class MetricsSnapshot:
    """Samples of one ``/metrics`` scrape, looked up by sample name and labels.

    Names are sample names as exposed: counters end in ``_total`` and
    histograms contribute ``_count``, ``_sum`` and ``_bucket`` samples.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """Return the sample with exactly these labels, or 0.0 when it is absent.

        prometheus_client exports a labelled series only after its first use,
        so an absent series and a series at zero mean the same to a test.
        """
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def delta(self, earlier: MetricsSnapshot, name: str, **labels: str) -> float:
        """Return how much the sample with exactly these labels grew since ``earlier``."""
        return self.value(name, **labels) - earlier.value(name, **labels)

    def total(self, name: str, **labels: str) -> float:
        """Return the sum of the samples whose labels include these labels."""
        required = set(labels.items())
        return sum(
            value
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and required <= sample_labels
        )

    def total_delta(self, earlier: MetricsSnapshot, name: str, **labels: str) -> float:
        """Return how much ``total(name, **labels)`` grew since ``earlier``."""
        return self.total(name, **labels) - earlier.total(name, **labels)

    def label_values(self, prefix: str) -> set[str]:
        """Return every label value of the samples whose name starts with ``prefix``."""
        return {
            label_value
            for (sample_name, sample_labels), _ in self.samples.items()
            if sample_name.startswith(prefix)
            for _, label_value in sample_labels
        }


class Server:
    """A daphne or uvicorn process serving the example project on loopback."""

    def __init__(self, kind: str, database_path: Path, log_path: Path) -> None:
        self.kind = kind
        self.database_path = database_path
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # Direct connections only: an HTTP proxy from the environment must
        # not see these requests.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    # Process lifecycle

    def start(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = pick_free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {self.kind} on port {self.port}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    server_command(self.kind, self.port),
                    cwd=REPO_ROOT,
                    env=server_environment(self.database_path),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_until_listening():
                return
            if "address already in use" not in self.read_output().lower():
                break
        pytest.fail(
            f"{self.kind} did not start listening on {HOST}:{self.port} within "
            f"{STARTUP_TIMEOUT} s (exit code {self.process.poll()}). Output:\n{self.read_output()}"
        )

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
        self.stop()
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

    def output_size(self) -> int:
        return self.log_path.stat().st_size

    def read_output(self, start: int = 0) -> str:
        """Return the server's combined stdout and stderr from byte ``start`` on."""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read().decode("utf-8", errors="replace")

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


@pytest.fixture(scope="session")
def example_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create a migrated SQLite database that every server process shares."""
    database_path = tmp_path_factory.mktemp("example_db") / "db.sqlite3"
    completed = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO_ROOT,
        env=server_environment(database_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=STARTUP_TIMEOUT * 2,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"manage.py migrate failed with exit code {completed.returncode}:\n"
            f"{completed.stdout.decode(errors='replace')}{completed.stderr.decode(errors='replace')}"
        )
    return database_path


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(
    request: pytest.FixtureRequest,
    example_database: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """Start daphne or uvicorn for the tests of one module, then stop it."""
    kind = request.param
    log_path = tmp_path_factory.mktemp(f"{kind}_log") / "server.log"
    running = Server(kind, example_database, log_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


# Byte offset in the server's log where a test's own output starts.
OUTPUT_START = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach what the server printed during a failed test to its report."""
    report = yield
    running = getattr(item, "funcargs", {}).get("server")
    if not isinstance(running, Server):
        return report

    with contextlib.suppress(OSError):
        if report.when == "setup" and report.passed:
            item.stash[OUTPUT_START] = running.output_size()
        elif report.failed:
            output = running.read_output(item.stash.get(OUTPUT_START, 0))
            report.sections.append((f"{running.kind} output during the test", output))
    return report
