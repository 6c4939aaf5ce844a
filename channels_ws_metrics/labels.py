"""Values of the ``EXTRA_LABELS`` callables, bounded in time and in number."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .ratelimit import report_failure


#: Value of a label whose callable raised, timed out or returned a non-str.
ERROR_VALUE = "<error>"

#: Value of a label past its ``MAX_LABEL_VALUES`` distinct values.
OTHER_VALUE = "<other>"

#: Seconds a label callable may take before the connection goes on without it.
CALL_TIMEOUT = 0.1

# Label callables run in threads of their own, so one that blocks cannot
# stall the event loop, and one that hangs takes at most these threads,
# never the loop's default executor that other code relies on.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="channels-ws-metrics-labels")


class ExtraLabels:
    """Compute the extra label values of a connection.

    Each label keeps the distinct values it has produced in this process;
    past ``max_values`` of them a new value becomes ``<other>``, so a
    callable that returns user input cannot grow the series without bound.
    """

    def __init__(
        self,
        labels: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...],
        max_values: int,
        timeout: float = CALL_TIMEOUT,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.names = tuple(name for name, _ in labels)
        self._functions = tuple(function for _, function in labels)
        self._max_values = max_values
        self._timeout = timeout
        self._seen: tuple[set[str], ...] = tuple(set() for _ in labels)
        self._lock = threading.Lock()
        self._on_failure = on_failure or _log_failure

    def __bool__(self) -> bool:
        return bool(self.names)

    async def values(self, scope: dict[str, Any]) -> tuple[str, ...]:
        if not self.names:
            return ()
        results = await asyncio.gather(
            *(self._call(index, function, scope) for index, function in enumerate(self._functions))
        )
        return tuple(self._bound(index, value) for index, value in enumerate(results))

    async def _call(
        self, index: int, function: Callable[[dict[str, Any]], Any], scope: dict[str, Any]
    ) -> str:
        name = self.names[index]
        try:
            if inspect.iscoroutinefunction(function):
                value = await asyncio.wait_for(function(scope), self._timeout)
            else:
                loop = asyncio.get_running_loop()
                value = await asyncio.wait_for(
                    loop.run_in_executor(_executor, function, scope), self._timeout
                )
        except asyncio.TimeoutError:
            self._on_failure(name, TimeoutError(f"no value within {self._timeout} s"))
            return ERROR_VALUE
        except Exception as exc:
            self._on_failure(name, exc)
            return ERROR_VALUE
        if not isinstance(value, str):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it so no warning is emitted
            self._on_failure(name, TypeError(f"returned {type(value).__name__} {value!r}, expected str"))
            return ERROR_VALUE
        return value

    def _bound(self, index: int, value: str) -> str:
        if value == ERROR_VALUE:
            return value
        seen = self._seen[index]
        if value in seen:
            return value
        with self._lock:
            if len(seen) >= self._max_values:
                return OTHER_VALUE
            seen.add(value)
        return value


def _log_failure(name: str, exc: BaseException) -> None:
    report_failure(f"EXTRA_LABELS[{name!r}] callable", exc)
