"""A seeded storm of WebSocket clients against daphne and uvicorn, checked against one scrape.

Environment variables size the storm, so that ``make test`` runs one that
fits CI and ``make soak`` a larger one:

- ``STORM_CONNECTIONS``: clients per server (default 2000).
- ``STORM_CONCURRENCY``: clients running at the same time (default 32).
- ``STORM_SEED``: seed of the mix of clients. Unset, each run draws a new
  one; every failure message prints it with the command that replays it.
- ``STORM_TIME_LIMIT``: seconds after which no new client starts (default
  60). Clients that never started are left out of the expectations.

The module has its own daphne and uvicorn processes (the ``server`` fixture
is module-scoped), and the checks use deltas from a scrape taken just
before the storm.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.metric_samples import MetricsSnapshot
from tests.servers import STARTUP_TIMEOUT, Server
from tests.storm.clients import (
    ACTIVE,
    CLOSED,
    CONNECTIONS,
    COUNTED_SAMPLES,
    DURATION_COUNT,
    HANDSHAKES,
    CLIENT_TIMEOUT,
    ROUTES,
    ClientPlan,
    Outcome,
    draw_plans,
    run_client,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

# Bound on the wait for the server to finish recording after the last
# client. The maximum consumer sleep in the mix is 2 s.
SETTLE_TIMEOUT = 30.0

# Problems and mismatches listed in a failure message, at most.
MAX_LISTED = 40

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class StormConfig:
    connections: int
    concurrency: int
    seed: int
    time_limit: float

    @classmethod
    def from_environment(cls) -> StormConfig:
        seed = _read_env("STORM_SEED", None, int, 0)
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        return cls(
            connections=_read_env("STORM_CONNECTIONS", 2000, int, 1),
            concurrency=_read_env("STORM_CONCURRENCY", 32, int, 1),
            seed=seed,
            time_limit=_read_env("STORM_TIME_LIMIT", 60.0, float, 1),
        )

    def replay_command(self, server_kind: str) -> str:
        return (
            f"STORM_SEED={self.seed} STORM_CONNECTIONS={self.connections} "
            f"STORM_CONCURRENCY={self.concurrency} STORM_TIME_LIMIT={self.time_limit:g} "
            f".venv/bin/python -m pytest 'tests/storm/test_storm.py::test_storm_metrics_match[{server_kind}]'"
        )


def _read_env(name: str, default: Any, parse: Callable[[str], Any], minimum: float) -> Any:
    """Return the environment variable ``name`` parsed, or ``default`` when it is unset or empty."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "an integer" if parse is int else "a number"
        raise ValueError(f"Invalid {name}={text!r}: expected {kind} of at least {minimum:g}.")
    return value


CONFIG = StormConfig.from_environment()

# Bound on the whole test: starting the server, the storm, the clients
# still running at its time limit, the wait to settle, and a margin.
TEST_TIMEOUT = STARTUP_TIMEOUT + CONFIG.time_limit + CLIENT_TIMEOUT + SETTLE_TIMEOUT + 30


async def run_storm(server: Server, plans: list[ClientPlan], concurrency: int, time_limit: float) -> list[Outcome]:
    """Run ``plans`` with ``concurrency`` clients at a time, starting none after ``time_limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    outcomes: list[Outcome] = []
    # One iterator shared by every worker, so each plan runs once.
    pending = iter(plans)

    async def worker() -> None:
        for plan in pending:
            if loop.time() >= deadline:
                return
            outcomes.append(await run_client(server, plan))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def observed_deltas(before: MetricsSnapshot, after: MetricsSnapshot) -> Counter[SampleKey]:
    """Return the non-zero growth of every counted sample between two scrapes."""
    deltas: Counter[SampleKey] = Counter()
    for key in set(before.samples) | set(after.samples):
        if key[0] in COUNTED_SAMPLES:
            delta = after.samples.get(key, 0.0) - before.samples.get(key, 0.0)
            if delta:
                deltas[key] = delta
    return deltas


def settled(before: MetricsSnapshot, expected: Counter[SampleKey], attempts: int) -> Callable[[MetricsSnapshot], bool]:
    """Build a scrape condition: no connection is open and every counted total has arrived.

    Counters only grow, so waiting for the expected totals cannot hide a
    surplus. A shortfall shows up when the wait times out.
    """
    expected_totals = Counter()
    for (name, _), value in expected.items():
        expected_totals[name] += value

    def condition(after: MetricsSnapshot) -> bool:
        if after.total(ACTIVE) != 0 or after.total_delta(before, HANDSHAKES) != attempts:
            return False
        return all(after.total_delta(before, name) == expected_totals[name] for name in COUNTED_SAMPLES)

    return condition


def format_key(key: SampleKey) -> str:
    name, labels = key
    return name + "{" + ",".join(f'{label}="{value}"' for label, value in sorted(labels)) + "}"


def format_lines(lines: list[str]) -> str:
    text = "\n".join(lines[:MAX_LISTED])
    if len(lines) > MAX_LISTED:
        text += f"\n... and {len(lines) - MAX_LISTED} more"
    return text


@pytest.mark.timeout(TEST_TIMEOUT)
async def test_storm_metrics_match(server: Server) -> None:
    config = CONFIG
    plans = draw_plans(config.seed, config.connections)
    mix = Counter(plan.scenario for plan in plans)

    before = await server.scrape()
    outcomes = await run_storm(server, plans, config.concurrency, config.time_limit)

    expected: Counter[SampleKey] = Counter()
    for outcome in outcomes:
        expected.update(outcome.samples)
    attempts = sum(outcome.attempts for outcome in outcomes)
    after = await server.scrape_until(settled(before, expected, attempts), timeout=SETTLE_TIMEOUT)

    banner = (
        f"Storm against {server.kind}: seed {config.seed}, {len(outcomes)} of {len(plans)} clients ran, "
        f"{config.concurrency} at a time.\n"
        f"Replay with: {config.replay_command(server.kind)}\n"
        f"Mix: {', '.join(f'{name}={count}' for name, count in sorted(mix.items()))}\n"
    )

    active = {route: after.value(ACTIVE, route=route) for route in ROUTES}
    unequal_routes = []
    for route in ROUTES:
        accepted = after.delta(before, CONNECTIONS, route=route)
        closed = after.total_delta(before, CLOSED, route=route)
        timed = after.delta(before, DURATION_COUNT, route=route)
        handshakes_accepted = after.delta(before, HANDSHAKES, route=route, outcome="accepted")
        if not accepted == closed == timed == handshakes_accepted:
            unequal_routes.append(
                f"{route}: {accepted:g} accepted, {handshakes_accepted:g} accepted handshakes, "
                f"{closed:g} closed, {timed:g} durations observed"
            )

    observed = observed_deltas(before, after)
    mismatches = [
        f"{format_key(key)}: expected {expected[key]:g}, got {observed[key]:g}"
        for key in sorted(set(expected) | set(observed), key=format_key)
        if expected[key] != observed[key]
    ]
    route_labels = {
        dict(labels)["route"]
        for name, labels in after.samples
        if name.startswith("django_websocket_") and "route" in dict(labels)
    }
    problems = [problem for outcome in outcomes for problem in outcome.problems]

    # Every finding goes to the captured output, so a failure of the first
    # assert below still shows the rest.
    print(banner)
    print(f"Open connections by route: {active}")
    print("Routes where the counts differ:\n" + format_lines(unequal_routes))
    print("Samples that differ from what the clients did:\n" + format_lines(mismatches))
    print("Clients that saw what their plan did not expect:\n" + format_lines(problems))

    assert after.total(ACTIVE) == 0, banner + f"Connections still counted as open: {active}"
    assert not unequal_routes, (
        banner + "Accepted connections, closes and durations differ:\n" + format_lines(unequal_routes)
    )
    assert not mismatches, banner + "Samples that differ from what the clients did:\n" + format_lines(mismatches)
    assert route_labels <= set(ROUTES), banner + f"Unexpected route labels: {sorted(route_labels - set(ROUTES))}"
    assert not problems, banner + "Clients saw what their plan did not expect:\n" + format_lines(problems)
