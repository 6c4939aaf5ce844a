import asyncio
import threading

import pytest

from channels_ws_metrics.labels import ERROR_VALUE, MAX_VALUE_LENGTH, OTHER_VALUE, ExtraLabels, LabelThreads

pytestmark = pytest.mark.asyncio

SCOPE = {"type": "websocket", "path": "/ws/echo/"}


def labels_of(*functions, max_values=50, threads=None, failures=None):
    def on_failure(name, exc):
        if failures is not None:
            failures.append((name, type(exc).__name__, str(exc)))

    pairs = tuple((f"label{index}", function) for index, function in enumerate(functions))
    return ExtraLabels(pairs, max_values, on_failure=on_failure, threads=threads or LabelThreads())


async def test_extra_labels_return_values_in_order():
    async def region(scope):
        return "eu"

    labels = labels_of(lambda scope: scope["path"], region)

    assert await labels.values(SCOPE) == ("/ws/echo/", "eu")


async def test_extra_labels_accept_object_with_async_call():
    class Tenant:
        async def __call__(self, scope):
            return "acme"

    assert await labels_of(Tenant()).values(SCOPE) == ("acme",)


async def test_extra_labels_reject_lone_surrogate():
    failures = []

    values = await labels_of(lambda scope: "bad\ud800", failures=failures).values(SCOPE)

    assert values == (ERROR_VALUE,)
    assert failures == [("label0", "ValueError", "returned 'bad\\ud800', which is not encodable as UTF-8")]


async def test_extra_labels_reject_long_value():
    failures = []

    values = await labels_of(lambda scope: "x" * (MAX_VALUE_LENGTH + 1), failures=failures).values(SCOPE)

    assert values == (ERROR_VALUE,)
    assert failures[0][2] == f"returned a str of {MAX_VALUE_LENGTH + 1} characters; the limit is {MAX_VALUE_LENGTH}"


async def test_extra_labels_accept_value_at_length_limit():
    value = "é" * MAX_VALUE_LENGTH

    assert await labels_of(lambda scope: value).values(SCOPE) == (value,)


async def test_extra_labels_give_callable_a_read_only_scope():
    failures = []
    scope = dict(SCOPE)

    def mutate(view):
        view["path"] = "/changed/"
        return "x"

    values = await labels_of(mutate, failures=failures).values(scope)

    assert values == (ERROR_VALUE,)
    assert scope["path"] == "/ws/echo/"
    assert failures[0][1] == "TypeError"


async def test_extra_labels_cap_distinct_values():
    values = iter(["a", "b", "c", "a"])
    labels = labels_of(lambda scope: next(values), max_values=2)

    results = [await labels.values(SCOPE) for _ in range(4)]

    assert results == [("a",), ("b",), (OTHER_VALUE,), ("a",)]


async def test_label_threads_refuse_work_when_all_are_busy():
    release = threading.Event()
    threads = LabelThreads(size=1)
    failures = []
    labels = labels_of(lambda scope: release.wait(30) and "late", threads=threads, failures=failures)

    try:
        first = await labels.values(SCOPE)
        second = await labels.values(SCOPE)
        queued = threads._jobs.qsize()
    finally:
        release.set()

    assert first == (ERROR_VALUE,)
    assert second == (ERROR_VALUE,)
    assert queued == 0
    assert [failure[1] for failure in failures] == ["TimeoutError", "RuntimeError"]
    assert failures[1][2] == "not run: all 1 label threads are busy with earlier calls"


async def test_label_threads_recover_after_hung_call_returns():
    release = threading.Event()
    threads = LabelThreads(size=1)
    calls = []

    def blocking(scope):
        calls.append(scope["path"])
        if len(calls) == 1:
            release.wait(30)
        return "done"

    labels = labels_of(blocking, threads=threads)
    assert await labels.values(SCOPE) == (ERROR_VALUE,)
    release.set()
    for _ in range(100):  # bounded: the thread returns as soon as it is released
        if threads._busy == 0:
            break
        await asyncio.sleep(0.01)

    assert await labels.values(SCOPE) == ("done",)


async def test_label_threads_are_daemons():
    threads = LabelThreads(size=2)

    await labels_of(lambda scope: "x", threads=threads).values(SCOPE)

    names = [thread for thread in threading.enumerate() if thread.name.startswith("channels-ws-metrics-labels")]
    assert names
    assert all(thread.daemon for thread in names)


async def test_extra_labels_do_not_wait_for_callable_ignoring_cancellation():
    finished = asyncio.Event()
    failures = []

    async def stubborn(scope):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await finished.wait()  # keeps running after the cancellation
        return "late"

    values = await asyncio.wait_for(labels_of(stubborn, failures=failures).values(SCOPE), timeout=5)
    finished.set()
    await asyncio.sleep(0)

    assert values == (ERROR_VALUE,)
    assert failures[0][1] == "TimeoutError"
