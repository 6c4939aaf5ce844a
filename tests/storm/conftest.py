"""Servers for the storm, close-timeout and shutdown tests.

The storm test uses the module-scoped ``server`` fixture of ``tests/e2e``,
so its module gets a daphne and a uvicorn process of its own. The other
tests start servers with extra command-line options or environment
variables through the ``servers`` fixture. Tests that stop a server and
then read its metrics run it in prometheus_client's multiprocess mode,
because the files in the multiprocess directory outlive the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.e2e.conftest import (
    HOST,
    PORT_ATTEMPTS,
    REPO_ROOT,
    STARTUP_TIMEOUT,
    Server,
    example_database,  # noqa: F401  (a fixture the tests here request)
    pick_free_port,
    server,  # noqa: F401  (a fixture the tests here request)
    server_command,
    server_environment,
)

#: Environment variable that puts prometheus_client in multiprocess mode.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class CustomServer(Server):
    """A daphne or uvicorn process started with extra options and environment variables."""

    def __init__(
        self,
        kind: str,
        database_path: Path,
        log_path: Path,
        options: list[str],
        environment: dict[str, str],
    ) -> None:
        super().__init__(kind, database_path, log_path)
        self.options = options
        self.environment = environment

    def command(self) -> list[str]:
        # Both commands end with the ASGI application, and both servers
        # read their options before it.
        base = server_command(self.kind, self.port)
        return [*base[:-1], *self.options, base[-1]]

    def start(self) -> None:
        env = server_environment(self.database_path)
        env.update(self.environment)
        for _ in range(PORT_ATTEMPTS):
            self.port = pick_free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {self.kind} on port {self.port}: {' '.join(self.command())}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    self.command(),
                    cwd=REPO_ROOT,
                    env=env,
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

    def terminate(self) -> None:
        """Send SIGTERM, as a process manager does to stop the server."""
        self.process.send_signal(signal.SIGTERM)

    async def wait_for_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit, and return its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.process.poll()


class ServerStarter:
    """Starts servers for one test and stops every one of them afterwards."""

    def __init__(self, database_path: Path, tmp_path: Path) -> None:
        self.database_path = database_path
        self.tmp_path = tmp_path
        self.started: list[CustomServer] = []

    def start(
        self,
        kind: str,
        options: list[str] | None = None,
        environment: dict[str, str] | None = None,
    ) -> CustomServer:
        log_path = self.tmp_path / f"{kind}-{len(self.started)}.log"
        running = CustomServer(kind, self.database_path, log_path, options or [], environment or {})
        self.started.append(running)
        running.start()
        return running

    def multiprocess_directory(self) -> Path:
        path = self.tmp_path / f"multiproc-{len(self.started)}"
        path.mkdir()
        return path

    def stop_all(self) -> None:
        for running in self.started:
            running.stop()

    def outputs(self) -> str:
        return "\n".join(
            f"--- {running.kind} output ({running.log_path})\n{running.read_output()}" for running in self.started
        )


@pytest.fixture
def servers(example_database: Path, tmp_path: Path) -> Iterator[ServerStarter]:  # noqa: F811
    starter = ServerStarter(example_database, tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()


class ProcessMetrics:
    """Metric values that one server process left in a multiprocess directory."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = directory
        self.pid = pid

        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(directory))
        self.samples = _samples_by_labels(registry.collect())

        # MultiProcessCollector adds up the live-gauge files of every pid it
        # finds, dead or not, because only mark_process_dead() removes them.
        # Merging this pid's file alone gives the value the process left.
        self.live_gauge_files = sorted(glob.glob(str(directory / f"gauge_live*_{pid}.db")))
        self.live_gauge_samples = _samples_by_labels(MultiProcessCollector.merge(self.live_gauge_files))

    def value(self, name: str, **labels: str) -> float:
        """Return the sample with exactly these labels, or 0.0 when it is absent."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Return the sum of the samples whose labels include these labels."""
        required = set(labels.items())
        return sum(
            value
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and required <= sample_labels
        )

    def live_gauge_total(self, name: str) -> float:
        """Return the sum over all label sets of a live gauge, as this pid left it."""
        return sum(value for (sample_name, _), value in self.live_gauge_samples.items() if sample_name == name)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample_name, labels), value in self.samples.items() if sample_name == name}


def _samples_by_labels(families: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in families:
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the output of the servers of a failed test to its report."""
    report = yield
    if not report.failed:
        return report

    funcargs = getattr(item, "funcargs", {})
    with contextlib.suppress(OSError):
        starter = funcargs.get("servers")
        if isinstance(starter, ServerStarter):
            report.sections.append(("server output", starter.outputs()))
        running = funcargs.get("server")
        if isinstance(running, Server):
            # The storm prints thousands of access-log lines, so only the
            # end of the log is attached.
            output = running.read_output()
            report.sections.append((f"{running.kind} output (last 20000 characters)", output[-20000:]))
    return report
