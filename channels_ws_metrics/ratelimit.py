"""Rate-limited logging for failures that can repeat on every message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("channels_ws_metrics")

#: Seconds between two log records of the same kind.
LOG_INTERVAL = 60.0

#: The default last sentence of a failure's log record.
CONNECTION_GOES_ON = "The WebSocket connection goes on without it."


class RateLimiter:
    """Admit one event of each kind per ``interval`` seconds and count the rest.

    Kinds must come from a bounded set chosen by this package, never from
    client data, because each kind keeps an entry.
    """

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """Return how many events of ``kind`` were left out before this one, or None to leave it out."""
        now = self._clock()
        with self._lock:
            last = self._last_logged.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last_logged[kind] = now
            return self._suppressed.pop(kind, 0)


def suppressed_note(count: int, what: str) -> str:
    """Return the sentence that states how many repeats a record stands for, if any."""
    if not count:
        return ""
    return f" {count} similar {what} were not logged since the last report."


class FailureLog(RateLimiter):
    """Log a failure of each kind at most once per ``interval`` seconds.

    A failure on every message thus shows up as one record a minute that
    states how many repeats it stands for, instead of flooding the log.
    """

    def __call__(self, kind: str, exc: BaseException, consequence: str = CONNECTION_GOES_ON) -> None:
        suppressed = self.admit(kind)
        if suppressed is None:
            return
        logger.error(
            "channels_ws_metrics: %s failed: %s: %s. %s%s",
            kind,
            type(exc).__name__,
            exc,
            consequence,
            suppressed_note(suppressed, "failures"),
            exc_info=exc,
        )


report_failure = FailureLog()
