"""Values of the ``EXTRA_LABELS`` callables, bounded in time, size and number."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from .ratelimit import report_failure

#: Value of a label whose callable raised, timed out, was not run or
#: returned something that is not a usable label value.
ERROR_VALUE = "<error>"

#: Value of a label past its ``MAX_LABEL_VALUES`` distinct values.
OTHER_VALUE = "<other>"

#: Seconds a label callable may take before the connection goes on without it.
CALL_TIMEOUT = 0.1

#: Characters a label value may have. Longer values are rejected: each
#: value is repeated in every series and every scrape.
MAX_VALUE_LENGTH = 128

#: Plain functions that may run at once, in this app's own threads.
THREADS = 4


class LabelThreads:
    """A small pool of daemon threads that never queues work.

    A label callable that blocks runs here instead of on the event loop. One
    that hangs keeps its thread, so when every thread is busy a new call is
    refused at once rather than queued behind it: no job, and no scope it
    holds, can pile up. Daemon threads do not hold up the interpreter's exit.
    """

    def __init__(self, size: int = THREADS) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = 0
        self._started = 0

    def submit(self, function: Callable[..., Any], argument: Any) -> asyncio.Future[Any] | None:
        """Start ``function(argument)`` and return its future, or None if every thread is busy."""
        with self._lock:
            if self._busy >= self.size:
                return None
            self._busy += 1
            if self._started < self._busy:
                self._started += 1
                name = f"channels-ws-metrics-labels-{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((function, argument, loop, future))
        return future

    def _work(self) -> None:
        while True:
            function, argument, loop, future = self._jobs.get()
            try:
                outcome: tuple[bool, Any] = (True, function(argument))
            except Exception as exc:  # handed to the waiting coroutine
                outcome = (False, exc)
            except BaseException as exc:
                # Kept from ending this thread, which the pool counts on.
                outcome = (False, RuntimeError(f"raised {type(exc).__name__}: {exc}"))
            finally:
                with self._lock:
                    self._busy -= 1
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:
                pass  # the event loop closed while the callable ran


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the caller stopped waiting
        return
    succeeded, value = outcome
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)


_threads = LabelThreads()


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)
    )


class ExtraLabels:
    """Compute the extra label values of a connection.

    Each label keeps the distinct values it has produced in this process.
    Past ``max_values`` of them, a new value becomes ``<other>``, so a
    callable that returns client input cannot grow the series without bound.
    """

    def __init__(
        self,
        labels: tuple[tuple[str, Callable[[Any], Any]], ...],
        max_values: int,
        timeout: float = CALL_TIMEOUT,
        on_failure: Callable[[str, BaseException], None] | None = None,
        threads: LabelThreads | None = None,
    ) -> None:
        self.names = tuple(name for name, _ in labels)
        self._functions = tuple(function for _, function in labels)
        self._async = tuple(_is_async(function) for function in self._functions)
        self._max_values = max_values
        self._timeout = timeout
        self._seen: tuple[set[str], ...] = tuple(set() for _ in labels)
        self._lock = threading.Lock()
        self._on_failure = on_failure or _log_failure
        self._threads = threads or _threads

    def __bool__(self) -> bool:
        return bool(self.names)

    async def values(self, scope: dict[str, Any]) -> tuple[str, ...]:
        if not self.names:
            return ()
        # Read-only at the top level, so a callable cannot change the scope
        # that the application gets.
        view = MappingProxyType(scope)
        results = await asyncio.gather(*(self._call(index, view) for index in range(len(self.names))))
        return tuple(self._bound(index, value) for index, value in enumerate(results))

    async def _call(self, index: int, scope: MappingProxyType[str, Any]) -> str:
        name = self.names[index]
        function = self._functions[index]
        if self._async[index]:
            pending: asyncio.Future[Any] | None = asyncio.ensure_future(function(scope))
        else:
            pending = self._threads.submit(function, scope)
            if pending is None:
                busy = RuntimeError(f"not run: all {self._threads.size} label threads are busy with earlier calls")
                self._on_failure(name, busy)
                return ERROR_VALUE

        # asyncio.wait(), unlike wait_for(), does not wait for a cancelled
        # callable to finish, so one that ignores cancellation cannot stall
        # the handshake either.
        done, _ = await asyncio.wait({pending}, timeout=self._timeout)
        if not done:
            pending.cancel()
            pending.add_done_callback(_discard_outcome)
            self._on_failure(name, TimeoutError(f"no value within {self._timeout} s"))
            return ERROR_VALUE

        try:
            value = pending.result()
        except Exception as exc:
            self._on_failure(name, exc)
            return ERROR_VALUE
        problem = _invalid_value(value)
        if problem is not None:
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it so no warning is emitted
            self._on_failure(name, problem)
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


def _invalid_value(value: Any) -> Exception | None:
    """Return why ``value`` cannot be a label value, or None if it can."""
    if not isinstance(value, str):
        return TypeError(f"returned {type(value).__name__} {value!r:.200}, expected str")
    if len(value) > MAX_VALUE_LENGTH:
        return ValueError(f"returned a str of {len(value)} characters; the limit is {MAX_VALUE_LENGTH}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate would make every later scrape fail to encode.
            return ValueError(f"returned {value!r}, which is not encodable as UTF-8")
    return None


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    # Retrieve the outcome of a call that is no longer awaited, so asyncio
    # does not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _log_failure(name: str, exc: BaseException) -> None:
    report_failure(f"EXTRA_LABELS[{name!r}] callable", exc)
