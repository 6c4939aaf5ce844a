"""Run the example project under real daphne and uvicorn processes.

The ``server`` fixture starts one server process per test module and server
kind, on a free loopback port, and hands the tests a ``tests.servers.Server``
with a WebSocket client and a ``/metrics`` scraper. Metric values are
cumulative over the life of the process, so tests compare two scrapes.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT, SERVER_KINDS, STARTUP_TIMEOUT, Server, server_environment


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
    with serve(request.param, example_database, tmp_path_factory) as running:
        yield running


@contextlib.contextmanager
def serve(
    kind: str,
    database_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    environment: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Run one server process of ``kind`` on the shared example database until the block ends."""
    log_path = tmp_path_factory.mktemp(f"{kind}_log") / "server.log"
    running = Server(kind, database_path, log_path, environment=environment)
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
