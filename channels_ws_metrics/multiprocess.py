"""Housekeeping of prometheus_client's multiprocess directory.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) prometheus_client
writes one file per process and metric type, named ``<type>_<pid>.db``, and
``MultiProcessCollector`` merges every file it finds. A ``livesum`` gauge
such as ``django_websocket_connections_active`` is kept in
``gauge_livesum_<pid>.db``, which prometheus_client removes only when
something calls ``multiprocess.mark_process_dead(pid)``. Gunicorn can do that
from its ``child_exit`` hook, but daphne and ``uvicorn --workers`` never do,
so a worker killed by SIGKILL or the OOM killer would leave its open
connections counted as active until the directory is emptied.

``start_housekeeping()`` runs in every process that loads this app:

- at start-up it removes the live-gauge files of processes that are no
  longer running, and logs a warning when the directory still contains
  metric files of an earlier run;
- then a daemon thread repeats the removal every 10 s
  (``DEFAULT_SWEEP_INTERVAL``), or as often as the
  ``CHANNELS_WS_METRICS_SWEEP_INTERVAL`` environment variable sets.

Only ``gauge_live*_<pid>.db`` files are ever removed: counter and histogram
files of dead processes stay, so that totals do not drop when a worker dies.

A process counts as running when ``os.kill(pid, 0)`` succeeds or raises
``PermissionError``. Process ids are only meaningful inside one PID
namespace, so a directory shared between containers that do not share one
makes other containers' processes look dead (their live gauges get removed)
or alive (a dead process's gauge stays).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

logger = logging.getLogger("channels_ws_metrics")

#: Environment variable that prometheus_client reads to enable multiprocess mode.
DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Environment variable that sets the sweep interval in seconds; ``0`` turns
#: the periodic sweep off and keeps the one at start-up.
SWEEP_INTERVAL_ENV = "CHANNELS_WS_METRICS_SWEEP_INTERVAL"

#: Seconds between two sweeps. A sweep lists the directory and checks each
#: process id in it once, which took under 1 ms for 32 processes in the
#: measurement in docs/deployment.md. 10 s is shorter than the common 15 s to
#: 60 s scrape intervals, so a dead worker's connections leave the gauge by the
#: next scrape or the one after it.
DEFAULT_SWEEP_INTERVAL = 10.0

# prometheus_client's file names: "<type>_<pid>.db", where the type of a
# gauge includes its multiprocess mode, as in "gauge_livesum".
_FILE_NAME_RE = re.compile(r"(?P<kind>[a-z]+(?:_[a-z]+)?)_(?P<pid>[0-9]+)\.db")

# A file whose mtime is this much earlier than the process start counts as
# older than the process. The margin covers the clock-tick resolution of the
# start time and the coarse clock that stamps file times, each 10 ms or less.
_START_TIME_MARGIN = 0.1


@dataclass(frozen=True)
class MetricFile:
    """One per-process file of prometheus_client's multiprocess directory."""

    path: str
    kind: str
    pid: int

    @property
    def is_live_gauge(self) -> bool:
        return self.kind.startswith("gauge_live")


def multiprocess_directory() -> str | None:
    """Return the multiprocess directory as prometheus_client reads it, or ``None`` when unset."""
    if DIRECTORY_ENV in os.environ:
        return os.environ[DIRECTORY_ENV]
    # prometheus_client still accepts the deprecated lower-case name.
    return os.environ.get(DIRECTORY_ENV.lower())


def list_metric_files(directory: str) -> list[MetricFile]:
    """List the files in ``directory`` that follow prometheus_client's naming."""
    files = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _FILE_NAME_RE.fullmatch(entry.name)
            if match is not None:
                files.append(MetricFile(entry.path, match["kind"], int(match["pid"])))
    return files


def is_process_running(pid: int) -> bool:
    """Return whether a process with this id exists and has not exited.

    A zombie, a process that has exited but that its parent has not reaped
    yet, counts as not running where ``/proc`` shows it: it writes nothing
    any more.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the process exists but belongs to another user
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except OSError:
        return False
    # Field 2 is the command name in parentheses and may contain spaces or
    # parentheses itself, so the state is the first field after the last ")".
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state in (b"Z", b"X")


def remove_dead_live_gauges(directory: str) -> list[str]:
    """Remove the live-gauge files of processes that are no longer running.

    Files of this process are never removed, nor are counter, histogram or
    non-live gauge files. Returns the paths removed. Raises ``OSError`` when
    the directory cannot be listed.
    """
    own_pid = os.getpid()
    running: dict[int, bool] = {}
    removed = []
    for metric_file in list_metric_files(directory):
        if not metric_file.is_live_gauge or metric_file.pid == own_pid:
            continue
        if metric_file.pid not in running:
            running[metric_file.pid] = is_process_running(metric_file.pid)
        # NOTE: a new process that gets the same id between the check above
        # and the removal would lose this file. Linux hands out process ids
        # in increasing order, so that needs the id counter to wrap around
        # within that window.
        if not running[metric_file.pid] and _remove(metric_file.path):
            removed.append(metric_file.path)
    if removed:
        logger.info(
            "Removed %d live-gauge file(s) of processes that are no longer running from %s: %s",
            len(removed),
            directory,
            ", ".join(os.path.basename(path) for path in removed),
        )
    return removed


def _remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False  # another worker's sweep or mark_process_dead() was first
    return True


def check_directory_at_startup(directory: str) -> None:
    """Remove stale live-gauge files and warn about files left by an earlier run.

    Meant to run once in each process before it records metrics. Besides
    the files of dead processes, files named with this process's own id that
    it did not create are stale: an earlier process had the same id, which
    is common for containers restarted with the same small process ids.
    prometheus_client would read such a live gauge back as this process's
    starting value, so it is removed before anything opens it.

    The warning is logged only when no other running process has files in
    the directory. The workers of a normal multi-worker start see each
    other's files, and so does a replacement for a crashed worker, whose
    predecessor's counters are meant to stay.
    """
    own_pid = os.getpid()
    files = list_metric_files(directory)
    running = {pid: is_process_running(pid) for pid in {f.pid for f in files} if pid != own_pid}
    stale_own = _stale_own_files([f for f in files if f.pid == own_pid])
    stale = [f for f in files if f.pid != own_pid and not running[f.pid]] + stale_own

    for metric_file in stale:
        if metric_file.is_live_gauge:
            _remove(metric_file.path)

    if stale and not any(running.values()):
        examples = ", ".join(sorted(os.path.basename(f.path) for f in stale)[:3])
        logger.warning(
            "%s=%s contains %d metric files of processes that are no longer running "
            "(%s), so the counters and histograms exported on /metrics include "
            "values from an earlier run. Empty the directory before the server "
            "starts, for example with: rm -f %s",
            DIRECTORY_ENV,
            directory,
            len(stale),
            examples,
            os.path.join(directory, "*.db"),
        )


def _stale_own_files(own_files: Iterable[MetricFile]) -> list[MetricFile]:
    mapped = _mapped_paths()
    started_at = _process_start_time()
    stale = []
    for metric_file in own_files:
        if mapped is not None and os.path.realpath(metric_file.path) not in mapped:
            # prometheus_client keeps every file it writes mapped, so a file
            # that this process has not mapped was written by another one.
            stale.append(metric_file)
        elif not metric_file.is_live_gauge and started_at is not None:
            # Already mapped, so already read back and in use: removing it
            # would hide this process's values. It can only be reported.
            try:
                modified_at = os.stat(metric_file.path).st_mtime
            except FileNotFoundError:
                continue
            if modified_at < started_at - _START_TIME_MARGIN:
                stale.append(metric_file)
    return stale


def _mapped_paths() -> set[str] | None:
    """Return the paths of the files this process has mapped, or ``None`` without ``/proc``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.readlines()
    except OSError:
        return None
    paths = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.add(fields[5].rstrip("\n"))
    return paths


def _process_start_time() -> float | None:
    """Return when this process started, in seconds since the epoch, or ``None`` without ``/proc``."""
    try:
        with open("/proc/self/stat", "rb") as stat_file:
            stat = stat_file.read()
        # After the command name, the fields start at field 3 (the state),
        # so field 22, the start time in clock ticks since boot, is index 19.
        start_ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - (since_boot - start_ticks / ticks_per_second)


def sweep_interval() -> float:
    """Return the sweep interval in seconds set in the environment, or the default."""
    raw = os.environ.get(SWEEP_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_SWEEP_INTERVAL
    try:
        interval = float(raw)
    except ValueError:
        interval = math.nan
    if not math.isfinite(interval) or interval < 0:
        logger.warning(
            "%s=%r is invalid: expected a number of seconds, 0 or more "
            "(0 turns the periodic sweep off). Using the default, %s s.",
            SWEEP_INTERVAL_ENV,
            raw,
            DEFAULT_SWEEP_INTERVAL,
        )
        return DEFAULT_SWEEP_INTERVAL
    return interval


class Sweeper(threading.Thread):
    """Daemon thread that runs ``remove_dead_live_gauges`` every ``interval`` seconds."""

    def __init__(self, directory: str, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"Sweep interval must be a positive number of seconds, got {interval!r}.")
        super().__init__(name="channels_ws_metrics-sweeper", daemon=True)
        self.directory = directory
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        failing = False
        while not self._stopped.wait(self.interval):
            try:
                remove_dead_live_gauges(self.directory)
            except Exception as exc:
                # Logged once per run of failures: the sweep repeats every
                # few seconds and the cause (a removed or unreadable
                # directory) usually stays.
                if not failing:
                    logger.warning(
                        "Sweeping %s for live-gauge files of dead processes failed: %s: %s. "
                        "Retrying every %s s; the next success is logged.",
                        self.directory,
                        type(exc).__name__,
                        exc,
                        self.interval,
                        exc_info=exc,
                    )
                failing = True
                continue
            if failing:
                logger.info("Sweeping %s for live-gauge files of dead processes works again.", self.directory)
                failing = False

    def stop(self) -> None:
        """Ask the thread to end; it ends within ``interval`` seconds, or at once while waiting."""
        self._stopped.set()


_lock = threading.Lock()
# Process id that ran start_housekeeping(), so that a forked child, which
# inherits the module state but not the thread, runs it again.
_started_in_pid: int | None = None
_sweeper: Sweeper | None = None


def start_housekeeping() -> Sweeper | None:
    """Check the multiprocess directory at start-up and start the periodic sweep.

    Does nothing unless ``PROMETHEUS_MULTIPROC_DIR`` is set, and runs once
    per process. Returns the sweeper thread, or ``None`` when none runs.
    """
    global _started_in_pid, _sweeper
    directory = multiprocess_directory()
    if directory is None:
        return None

    with _lock:
        if _started_in_pid == os.getpid():
            return _sweeper
        _started_in_pid = os.getpid()
        _sweeper = None

        if not directory or not os.path.isdir(directory):
            logger.warning(
                "%s=%r is not a directory, so prometheus_client cannot write metrics "
                "and /metrics fails. Create the directory, empty, before the server starts.",
                DIRECTORY_ENV,
                directory,
            )
            return None
        try:
            check_directory_at_startup(directory)
        except OSError as exc:
            logger.warning(
                "Checking %s for files of dead processes failed: %s: %s",
                directory,
                type(exc).__name__,
                exc,
            )

        interval = sweep_interval()
        if interval == 0:
            return None
        _sweeper = Sweeper(directory, interval)
        _sweeper.start()
        return _sweeper
