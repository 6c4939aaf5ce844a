"""Rate-limited logging for failures that can repeat on every message."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("channels_ws_metrics")

#: Seconds between two log records of the same kind of failure.
LOG_INTERVAL = 60.0


class FailureLog:
    """Log a failure of each kind at most once per ``interval`` seconds.

    Repeats inside the interval are counted, and the next record states how
    many were suppressed, so a failure on every message shows up as one line
    a minute instead of flooding the log.
    """

    def __init__(self, interval: float = LOG_INTERVAL, clock=time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # Keyed by a fixed set of kinds chosen in this package, so bounded.
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            last = self._last_logged.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last_logged[kind] = now
            suppressed = self._suppressed.pop(kind, 0)

        logger.error(
            "channels_ws_metrics: %s failed: %s: %s (%d similar failures suppressed "
            "since the last report). The WebSocket connection goes on without it.",
            kind,
            type(exc).__name__,
            exc,
            suppressed,
            exc_info=exc,
        )


report_failure = FailureLog()
