"""Servers in prometheus_client's multiprocess mode.

The ``server`` fixture of ``tests/e2e`` starts one process without a
multiprocess directory. The ``fleet`` fixture here starts servers that
share a temporary directory given in ``PROMETHEUS_MULTIPROC_DIR`` and run
several processes: daphne processes side by side, ``uvicorn --workers`` or
gunicorn with uvicorn workers.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import example_database  # noqa: F401  (a fixture the tests here request)
from tests.servers import SHUTDOWN_TIMEOUT, ServerGroup


@pytest.fixture
def dead_pid() -> int:
    """Return the id of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait(timeout=SHUTDOWN_TIMEOUT)
    return process.pid


@pytest.fixture
def fleet(example_database: Path, tmp_path: Path) -> Iterator[ServerGroup]:  # noqa: F811
    # Each server runs in its own session, so that stopping it also ends
    # the workers of a supervisor that did not stop them itself.
    with ServerGroup(example_database, tmp_path, start_new_session=True) as group:
        yield group


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the output of every server of a failed test to its report."""
    report = yield
    group = getattr(item, "funcargs", {}).get("fleet")
    if report.failed and isinstance(group, ServerGroup):
        with contextlib.suppress(OSError):
            report.sections.append(("server output", group.outputs()))
    return report
