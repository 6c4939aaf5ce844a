"""A real Prometheus server scraping two hosts, one of them running two daphne processes.

Host A is two daphne processes sharing a multiprocess directory, and only
one of them is scraped, as a deployment scrapes each host once. Host B is
one daphne process with a directory of its own. Prometheus loads the rules
of contrib/prometheus and is queried through its HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.servers import HOST, NETWORK_TIMEOUT, LoopbackProcess, multiprocess_environment

from .helpers import LEFTOVER_WARNING, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

RULES_PATH = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "channels_ws_metrics.rules.yml"

SCRAPE_INTERVAL = 1.0
SWEEP_INTERVAL = 1.0
# Long enough for several scrapes and rule evaluations on a loaded machine.
QUERY_TIMEOUT = 20.0
# Seconds of samples kept after the counters' zero samples before
# increase() is read; see test_prometheus_counts_across_hosts_and_kill.
SAMPLED_SECONDS = 8.0

ECHO_ROUTE = "ws/echo/"
TEST_ROUTE = "ws/test/"


class Prometheus(LoopbackProcess):
    """A Prometheus server on a loopback port with its data in a temporary directory."""

    def __init__(self, tmp_path: Path, targets: list[tuple[str, str]]) -> None:
        super().__init__("prometheus", tmp_path / "prometheus.log")
        self.tmp_path = tmp_path
        self.targets = targets
        self.config_path = tmp_path / "prometheus.yml"

    def write_config(self) -> None:
        static_configs = [{"targets": [address], "labels": {"host": host}} for host, address in self.targets]
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL:g}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
            },
            "rule_files": [str(RULES_PATH)],
            "scrape_configs": [{"job_name": "chat", "static_configs": static_configs}],
        }
        # JSON is valid YAML, so no YAML library is needed.
        self.config_path.write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [
            require_tool("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.tmp_path / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--log.level=warn",
        ]

    def is_ready(self) -> bool:
        try:
            with self._opener.open(f"http://{HOST}:{self.port}/-/ready", timeout=1.0) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> None:
        self.write_config()
        super().start()

    def query_now(self, expression: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Return an instant query's result as {sorted label pairs: value}, without ``__name__``."""
        url = f"http://{HOST}:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with self._opener.open(url, timeout=NETWORK_TIMEOUT) as response:
            body: dict[str, Any] = json.load(response)
        if body.get("status") != "success":
            raise AssertionError(f"Query {expression!r} failed: {body}")
        return {
            tuple(sorted((name, value) for name, value in item["metric"].items() if name != "__name__")): float(
                item["value"][1]
            )
            for item in body["data"]["result"]
        }

    async def query(self, expression: str) -> dict[tuple[tuple[str, str], ...], float]:
        return await asyncio.to_thread(self.query_now, expression)

    async def query_until(self, expression: str, expected: dict, timeout: float = QUERY_TIMEOUT) -> dict:
        """Query until the result equals ``expected``, or return the last result at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query(expression)
            if result == expected or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(0.2)


def by_route(**values: float) -> dict[tuple[tuple[str, str], ...], float]:
    """Build an expected ``sum by (route)`` result; keywords are route names without slashes."""
    return {(("route", f"ws/{route}/"),): value for route, value in values.items()}


def total(value: float) -> dict[tuple[tuple[str, str], ...], float]:
    return {(): value}


@pytest.fixture
def prometheus_factory(tmp_path: Path):
    started: list[Prometheus] = []

    def start(targets: list[tuple[str, str]]) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus-{len(started)}", targets)
        server.tmp_path.mkdir()
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


async def send_and_receive(websocket, count: int) -> None:
    for number in range(count):
        await websocket.send(f"message {number}")
        assert await asyncio.wait_for(websocket.recv(), NETWORK_TIMEOUT) == f"message {number}"


async def test_prometheus_counts_across_hosts_and_kill(fleet, prometheus_factory):
    require_tool("prometheus")
    directory_a = fleet.directory("host-a")
    directory_b = fleet.directory("host-b")
    host_a = multiprocess_environment(directory_a, sweep_interval=SWEEP_INTERVAL)
    host_b = multiprocess_environment(directory_b, sweep_interval=SWEEP_INTERVAL)
    a1 = fleet.start("daphne", environment=host_a)
    a2 = fleet.start("daphne", environment=host_a)
    b1 = fleet.start("daphne", environment=host_b)
    prometheus = prometheus_factory([("a", f"{HOST}:{a1.port}"), ("b", f"{HOST}:{b1.port}")])

    on_a1 = [await a1.connect("/ws/echo/") for _ in range(3)]
    on_a2 = [await a2.connect("/ws/test/") for _ in range(4)]
    on_b1 = [await b1.connect("/ws/echo/") for _ in range(5)]
    connections = on_a1 + on_a2 + on_b1
    try:
        # increase() extrapolates from the first sample in its range unless
        # that sample is 0, so every host's series must be scraped at 0 first.
        every_series_at_zero = {
            (("host", "a"), ("route", "ws/echo/")): 0,
            (("host", "a"), ("route", "ws/test/")): 0,
            (("host", "b"), ("route", "ws/echo/")): 0,
        }
        zero = await prometheus.query_until(
            "sum by (host, route) (django_websocket_messages_received_total)", every_series_at_zero
        )
        zero_seen_at = time.monotonic()

        for websocket in on_a1:
            await send_and_receive(websocket, 2)
        for websocket in on_a2:
            await send_and_receive(websocket, 3)
        for websocket in on_b1:
            await send_and_receive(websocket, 1)
        received = by_route(echo=3 * 2 + 5 * 1, test=4 * 3)

        before_sum = await prometheus.query_until("sum(django_websocket_connections_active)", total(12))
        before_recorded = await prometheus.query_until(
            "route:django_websocket_connections_active:sum", by_route(echo=8, test=4)
        )
        before_raw = await prometheus.query_until(
            "sum by (route) (django_websocket_messages_received_total)", received
        )
        exposition = (await a1.scrape()).text
        await asyncio.sleep(max(0.0, zero_seen_at + SAMPLED_SECONDS - time.monotonic()))
        before_increase = await prometheus.query(
            "sum by (route) (increase(django_websocket_messages_received_total[1m]))"
        )

        a2.process.send_signal(signal.SIGKILL)
        a2.process.wait(timeout=NETWORK_TIMEOUT)
        for websocket in on_a2:
            await asyncio.wait_for(websocket.wait_closed(), NETWORK_TIMEOUT)

        after_sum = await prometheus.query_until("sum(django_websocket_connections_active)", total(8))
        # Only the killed process had ws/test/ connections, so that route's
        # active series goes away with its live-gauge file.
        after_recorded = await prometheus.query_until(
            "route:django_websocket_connections_active:sum", by_route(echo=8)
        )
        after_raw = await prometheus.query("sum by (route) (django_websocket_messages_received_total)")
        after_increase = await prometheus.query(
            "sum by (route) (increase(django_websocket_messages_received_total[1m]))"
        )
        resets = await prometheus.query("sum(resets(django_websocket_messages_received_total[1m]))")
        connections_total = await prometheus.query("sum by (route) (django_websocket_connections_total)")
        instances = await prometheus.query("count by (host) (django_websocket_connections_total)")
    finally:
        for websocket in connections:
            await asyncio.wait_for(websocket.close(), NETWORK_TIMEOUT)

    assert zero == every_series_at_zero
    assert before_sum == total(12)
    assert before_recorded == by_route(echo=8, test=4)
    assert before_raw == received
    assert after_sum == total(8)
    assert after_recorded == by_route(echo=8)
    # The killed process's counter files stay, so its messages still count.
    assert after_raw == received
    assert resets == total(0)
    assert connections_total == by_route(echo=8, test=4)
    assert set(instances) == {(("host", "a"),), (("host", "b"),)}
    # Its first sample is 0, so increase() extrapolates only towards the
    # end of the range, by at most 1.1 scrape intervals over the sampled
    # span (Prometheus 2.x extrapolatedRate). After SAMPLED_SECONDS of
    # samples that is at most a factor 1 + 1.1 / (SAMPLED_SECONDS - 1).
    bound = 1 + 1.1 * SCRAPE_INTERVAL / (SAMPLED_SECONDS - SCRAPE_INTERVAL)
    for increase in (before_increase, after_increase):
        assert set(increase) == set(received)
        for route, count in received.items():
            assert count <= increase[route] <= count * bound, (route, increase[route], count)
    for server in (a1, a2, b1):
        assert LEFTOVER_WARNING not in server.read_output()

    # promtool's linter on this package's families as a worker exports
    # them in multiprocess mode; django-prometheus's own are left out.
    own_lines = [
        line
        for line in exposition.splitlines()
        if line.removeprefix("# HELP ").removeprefix("# TYPE ").startswith("django_websocket_")
    ]
    lint = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input="\n".join(own_lines) + "\n",
        capture_output=True,
        text=True,
        timeout=NETWORK_TIMEOUT,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout + lint.stderr == ""
