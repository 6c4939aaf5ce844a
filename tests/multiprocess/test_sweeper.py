"""The dead-process sweep and the start-up check, on a directory of fake metric files."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from channels_ws_metrics import multiprocess
from channels_ws_metrics.multiprocess import (
    DEFAULT_SWEEP_INTERVAL,
    DIRECTORY_ENV,
    SWEEP_INTERVAL_ENV,
    Sweeper,
    check_directory_at_startup,
    is_process_running,
    list_metric_files,
    remove_dead_live_gauges,
    start_housekeeping,
    sweep_interval,
)

LIVE_GAUGE_KINDS = ("gauge_livesum", "gauge_liveall", "gauge_livemin", "gauge_livemax", "gauge_livemostrecent")
KEPT_KINDS = ("counter", "histogram", "summary", "gauge_all", "gauge_sum", "gauge_max", "gauge_mostrecent")

# A bound on every wait for the sweeper thread, in seconds.
THREAD_TIMEOUT = 5.0


@pytest.fixture
def live_pid() -> int:
    """Return the id of a running process other than this one."""
    return os.getppid()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "multiproc"
    path.mkdir()
    return path


@pytest.fixture
def fresh_housekeeping(monkeypatch: pytest.MonkeyPatch):
    """Let start_housekeeping() run again in this process, and stop its thread afterwards."""
    monkeypatch.setattr(multiprocess, "_started_in_pid", None)
    monkeypatch.setattr(multiprocess, "_sweeper", None)
    yield
    sweeper = multiprocess._sweeper
    if sweeper is not None:
        sweeper.stop()
        sweeper.join(THREAD_TIMEOUT)


def make_file(directory: Path, kind: str, pid: int) -> Path:
    path = directory / f"{kind}_{pid}.db"
    path.write_bytes(b"\0" * 16)
    return path


def names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


# -- is_process_running --------------------------------------------------------


def test_is_process_running_own_pid():
    assert is_process_running(os.getpid())


def test_is_process_running_dead_pid(dead_pid):
    assert not is_process_running(dead_pid)


@pytest.mark.parametrize("pid", [0, -1])
def test_is_process_running_rejects_non_positive_pid(pid):
    # os.kill(0, 0) and os.kill(-1, 0) would address process groups.
    assert not is_process_running(pid)


def test_is_process_running_permission_error_means_running(monkeypatch):
    def kill(pid, signal_number):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)

    assert is_process_running(123456)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="zombie detection reads /proc")
def test_is_process_running_zombie_is_not_running():
    process = subprocess.Popen(["true"])
    try:
        # Wait for the exit without reaping, so the child stays a zombie.
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)

        assert not is_process_running(process.pid)
    finally:
        process.wait(timeout=10)


# -- list_metric_files ---------------------------------------------------------


def test_list_metric_files_parses_kind_and_pid(directory):
    make_file(directory, "gauge_livesum", 42)
    make_file(directory, "counter", 43)

    files = sorted(list_metric_files(str(directory)), key=lambda f: f.pid)

    assert [(f.kind, f.pid, f.is_live_gauge) for f in files] == [
        ("gauge_livesum", 42, True),
        ("counter", 43, False),
    ]


def test_list_metric_files_ignores_other_names(directory):
    for name in ("README", "gauge_livesum_abc.db", "gauge_livesum_12.db.tmp", "notes.db", "x_1_2_3.db"):
        (directory / name).write_text("")

    assert list_metric_files(str(directory)) == []


# -- remove_dead_live_gauges ---------------------------------------------------


@pytest.mark.parametrize("kind", LIVE_GAUGE_KINDS)
def test_sweep_removes_live_gauge_of_dead_pid(directory, dead_pid, kind):
    path = make_file(directory, kind, dead_pid)

    removed = remove_dead_live_gauges(str(directory))

    assert removed == [str(path)]
    assert not path.exists()


@pytest.mark.parametrize("kind", KEPT_KINDS)
def test_sweep_keeps_other_files_of_dead_pid(directory, dead_pid, kind):
    path = make_file(directory, kind, dead_pid)

    removed = remove_dead_live_gauges(str(directory))

    assert removed == []
    assert path.exists()


def test_sweep_keeps_live_gauge_of_running_pid(directory, live_pid):
    path = make_file(directory, "gauge_livesum", live_pid)

    assert remove_dead_live_gauges(str(directory)) == []
    assert path.exists()


def test_sweep_keeps_own_live_gauge(directory, monkeypatch):
    path = make_file(directory, "gauge_livesum", os.getpid())
    # Even if the liveness check returned False, this process's file stays.
    monkeypatch.setattr(multiprocess, "is_process_running", lambda pid: False)

    assert remove_dead_live_gauges(str(directory)) == []
    assert path.exists()


def test_sweep_mixed_directory(directory, dead_pid, live_pid):
    make_file(directory, "gauge_livesum", dead_pid)
    make_file(directory, "gauge_liveall", dead_pid)
    make_file(directory, "counter", dead_pid)
    make_file(directory, "histogram", dead_pid)
    make_file(directory, "gauge_all", dead_pid)
    make_file(directory, "gauge_livesum", live_pid)
    make_file(directory, "counter", live_pid)

    remove_dead_live_gauges(str(directory))

    assert names(directory) == {
        f"counter_{dead_pid}.db",
        f"histogram_{dead_pid}.db",
        f"gauge_all_{dead_pid}.db",
        f"gauge_livesum_{live_pid}.db",
        f"counter_{live_pid}.db",
    }


def test_sweep_tolerates_file_removed_concurrently(directory, dead_pid, monkeypatch):
    path = make_file(directory, "gauge_livesum", dead_pid)

    def removed_by_another_worker(pid):
        path.unlink()
        return False

    monkeypatch.setattr(multiprocess, "is_process_running", removed_by_another_worker)

    assert remove_dead_live_gauges(str(directory)) == []


def test_sweep_checks_each_pid_once(directory, dead_pid, monkeypatch):
    for kind in LIVE_GAUGE_KINDS:
        make_file(directory, kind, dead_pid)
    checked = []
    monkeypatch.setattr(multiprocess, "is_process_running", lambda pid: checked.append(pid) or False)

    remove_dead_live_gauges(str(directory))

    assert checked == [dead_pid]


def test_sweep_logs_removed_files(directory, dead_pid, caplog):
    make_file(directory, "gauge_livesum", dead_pid)

    with caplog.at_level(logging.INFO, logger="channels_ws_metrics"):
        remove_dead_live_gauges(str(directory))

    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert f"gauge_livesum_{dead_pid}.db" in record.getMessage()


def test_sweep_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        remove_dead_live_gauges(str(tmp_path / "missing"))


# -- check_directory_at_startup ------------------------------------------------


def test_startup_empty_directory_logs_nothing(directory, caplog):
    with caplog.at_level(logging.INFO, logger="channels_ws_metrics"):
        check_directory_at_startup(str(directory))

    assert caplog.records == []


def test_startup_warns_about_earlier_run(directory, dead_pid, caplog):
    make_file(directory, "gauge_livesum", dead_pid)
    make_file(directory, "counter", dead_pid)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        check_directory_at_startup(str(directory))

    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert record.name == "channels_ws_metrics"
    assert f"{DIRECTORY_ENV}={directory}" in message
    assert f"counter_{dead_pid}.db" in message
    assert f"rm -f {directory / '*.db'}" in message


def test_startup_removes_dead_live_gauge_and_keeps_counter(directory, dead_pid):
    make_file(directory, "gauge_livesum", dead_pid)
    make_file(directory, "counter", dead_pid)

    check_directory_at_startup(str(directory))

    assert names(directory) == {f"counter_{dead_pid}.db"}


def test_startup_beside_running_worker_does_not_warn(directory, dead_pid, live_pid, caplog):
    # A replacement for a crashed worker: the crashed worker's files and a
    # running sibling's files are both there.
    make_file(directory, "gauge_livesum", dead_pid)
    make_file(directory, "counter", dead_pid)
    make_file(directory, "counter", live_pid)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        check_directory_at_startup(str(directory))

    assert caplog.records == []
    assert names(directory) == {f"counter_{dead_pid}.db", f"counter_{live_pid}.db"}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_startup_removes_stale_own_gauge(directory, caplog):
    path = make_file(directory, "gauge_livesum", os.getpid())

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        check_directory_at_startup(str(directory))

    assert not path.exists()
    (record,) = caplog.records
    assert path.name in record.getMessage()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_startup_keeps_mapped_own_gauge(directory, caplog):
    path = directory / f"gauge_livesum_{os.getpid()}.db"
    # prometheus_client's own file class maps the file, as a live gauge
    # created in this process before start-up would.
    mapped = MmapedDict(str(path))
    try:
        with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
            check_directory_at_startup(str(directory))
    finally:
        mapped.close()

    assert path.exists()
    assert caplog.records == []


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc/self/stat")
def test_startup_reports_old_own_counter(directory, caplog):
    path = directory / f"counter_{os.getpid()}.db"
    mapped = MmapedDict(str(path))
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    try:
        with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
            check_directory_at_startup(str(directory))
    finally:
        mapped.close()

    assert path.exists()
    (record,) = caplog.records
    assert path.name in record.getMessage()


def test_process_start_time_is_in_the_past():
    started_at = multiprocess._process_start_time()
    if started_at is None:
        pytest.skip("needs /proc/self/stat")

    assert started_at <= time.time()
    # The test session started it, so well within a day.
    assert started_at > time.time() - 86400


# -- sweep_interval ------------------------------------------------------------


def test_sweep_interval_default(monkeypatch):
    monkeypatch.delenv(SWEEP_INTERVAL_ENV, raising=False)

    assert sweep_interval() == DEFAULT_SWEEP_INTERVAL


@pytest.mark.parametrize(("raw", "expected"), [("2.5", 2.5), ("0", 0.0), (" 1 ", 1.0), ("", DEFAULT_SWEEP_INTERVAL)])
def test_sweep_interval_from_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, raw)

    assert sweep_interval() == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "inf", "nan"])
def test_sweep_interval_invalid_falls_back_with_warning(monkeypatch, caplog, raw):
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, raw)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        interval = sweep_interval()

    assert interval == DEFAULT_SWEEP_INTERVAL
    (record,) = caplog.records
    assert SWEEP_INTERVAL_ENV in record.getMessage()
    assert repr(raw) in record.getMessage()


# -- Sweeper -------------------------------------------------------------------


@pytest.mark.parametrize("interval", [0, -1.0])
def test_sweeper_rejects_non_positive_interval(directory, interval):
    with pytest.raises(ValueError, match="positive"):
        Sweeper(str(directory), interval)


def wait_until(condition, timeout: float = THREAD_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def test_sweeper_removes_files_of_later_deaths(directory, dead_pid):
    sweeper = Sweeper(str(directory), 0.02)
    sweeper.start()
    try:
        path = make_file(directory, "gauge_livesum", dead_pid)

        assert wait_until(lambda: not path.exists())
    finally:
        sweeper.stop()
        sweeper.join(THREAD_TIMEOUT)

    assert not sweeper.is_alive()


def test_sweeper_logs_failure_once_and_recovery(tmp_path, caplog):
    directory = tmp_path / "created-later"
    sweeper = Sweeper(str(directory), 0.01)

    with caplog.at_level(logging.INFO, logger="channels_ws_metrics"):
        sweeper.start()
        try:
            # Several sweeps fail while the directory is missing.
            time.sleep(0.2)
            directory.mkdir()
            assert wait_until(lambda: any("works again" in r.getMessage() for r in caplog.records))
        finally:
            sweeper.stop()
            sweeper.join(THREAD_TIMEOUT)

    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert "FileNotFoundError" in failures[0].getMessage()


# -- start_housekeeping --------------------------------------------------------


def test_housekeeping_without_directory_does_nothing(monkeypatch, fresh_housekeeping):
    monkeypatch.delenv(DIRECTORY_ENV, raising=False)
    monkeypatch.delenv(DIRECTORY_ENV.lower(), raising=False)

    assert start_housekeeping() is None


def test_housekeeping_starts_one_sweeper_per_process(monkeypatch, directory, fresh_housekeeping):
    monkeypatch.setenv(DIRECTORY_ENV, str(directory))
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, "30")

    first = start_housekeeping()
    second = start_housekeeping()

    assert first is not None
    assert first.is_alive()
    assert first.interval == 30.0
    assert first.daemon
    assert second is first


def test_housekeeping_interval_zero_sweeps_only_at_startup(monkeypatch, directory, dead_pid, fresh_housekeeping):
    path = make_file(directory, "gauge_livesum", dead_pid)
    monkeypatch.setenv(DIRECTORY_ENV, str(directory))
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, "0")

    assert start_housekeeping() is None
    assert not path.exists()


def test_housekeeping_reads_deprecated_lowercase_variable(monkeypatch, directory, dead_pid, fresh_housekeeping):
    path = make_file(directory, "gauge_livesum", dead_pid)
    monkeypatch.delenv(DIRECTORY_ENV, raising=False)
    monkeypatch.setenv(DIRECTORY_ENV.lower(), str(directory))
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, "0")

    start_housekeeping()

    assert not path.exists()


@pytest.mark.parametrize("name", ["missing", ""])
def test_housekeeping_warns_when_not_a_directory(monkeypatch, tmp_path, caplog, fresh_housekeeping, name):
    # An empty value still turns multiprocess mode on in prometheus_client.
    value = str(tmp_path / name) if name else ""
    monkeypatch.setenv(DIRECTORY_ENV, value)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        assert start_housekeeping() is None

    (record,) = caplog.records
    assert f"{DIRECTORY_ENV}={value!r} is not a directory" in record.getMessage()


def test_housekeeping_prefers_uppercase_variable(monkeypatch, directory, dead_pid, fresh_housekeeping):
    path = make_file(directory, "gauge_livesum", dead_pid)
    monkeypatch.setenv(DIRECTORY_ENV, str(directory))
    monkeypatch.setenv(DIRECTORY_ENV.lower(), str(directory / "elsewhere"))
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, "0")

    start_housekeeping()

    assert not path.exists()
