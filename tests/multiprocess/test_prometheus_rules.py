"""The Prometheus rules and example configuration in contrib/prometheus, checked by promtool."""

from __future__ import annotations

import subprocess

import pytest

from tests.servers import REPO_ROOT

from .helpers import require_tool

CONTRIB = REPO_ROOT / "contrib" / "prometheus"
RULES = "channels_ws_metrics.rules.yml"
RULE_TESTS = "channels_ws_metrics.rules.test.yml"
CONFIG = "prometheus.yml"

# promtool reads local files only; this bounds a hung run.
PROMTOOL_TIMEOUT = 60.0


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *arguments],
        cwd=CONTRIB,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
    )


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(("check", "rules", RULES), id="check-rules"),
        pytest.param(("test", "rules", RULE_TESTS), id="test-rules"),
        pytest.param(("check", "config", CONFIG), id="check-config"),
    ],
)
def test_promtool_accepts_contrib(arguments):
    completed = promtool(*arguments)

    assert completed.returncode == 0, f"promtool {' '.join(arguments)}:\n{completed.stdout}{completed.stderr}"
