"""Servers for the storm, close-timeout and shutdown tests.

The storm test uses the module-scoped ``server`` fixture of ``tests/e2e``,
so its module gets a daphne and a uvicorn process of its own. The other
tests start servers with extra command-line options or environment
variables through the ``servers`` fixture. Tests that stop a server and
then read its metrics run it in prometheus_client's multiprocess mode,
because the files in the multiprocess directory outlive the process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    example_database,  # noqa: F401  (a fixture the tests here request)
    server,  # noqa: F401  (a fixture the tests here request)
)
from tests.servers import Server, ServerGroup


@pytest.fixture
def servers(example_database: Path, tmp_path: Path) -> Iterator[ServerGroup]:  # noqa: F811
    with ServerGroup(example_database, tmp_path) as group:
        yield group


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the output of the servers of a failed test to its report."""
    report = yield
    if not report.failed:
        return report

    funcargs = getattr(item, "funcargs", {})
    with contextlib.suppress(OSError):
        group = funcargs.get("servers")
        if isinstance(group, ServerGroup):
            report.sections.append(("server output", group.outputs()))
        running = funcargs.get("server")
        if isinstance(running, Server):
            # The storm prints thousands of access-log lines, so only the
            # end of the log is attached.
            output = running.read_output()
            report.sections.append((f"{running.kind} output (last 20000 characters)", output[-20000:]))
    return report
