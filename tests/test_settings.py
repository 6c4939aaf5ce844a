"""Each CHANNELS_WS_METRICS key changes what the real /metrics view exports."""

import logging

import pytest
from channels.testing import WebsocketCommunicator

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.labels import ERROR_VALUE, OTHER_VALUE
from channels_ws_metrics.ratelimit import report_failure

from .asgi_apps import router

pytestmark = pytest.mark.asyncio

ECHO = {"route": "ws/echo/"}
MESSAGE_FAMILIES = (
    "django_websocket_messages_received",
    "django_websocket_messages_sent",
    "django_websocket_received_bytes",
    "django_websocket_sent_bytes",
)


@pytest.fixture(autouse=True)
def fresh_failure_log(monkeypatch):
    monkeypatch.setattr(report_failure, "_last_logged", {})


async def echo_session(path="/ws/echo/", messages=("hi",), close_code=1000):
    """Connect to a fresh default middleware, echo ``messages``, close."""
    communicator = WebsocketCommunicator(WebSocketMetricsMiddleware(router()), path)
    connected, _ = await communicator.connect()
    assert connected
    for message in messages:
        if isinstance(message, bytes):
            await communicator.send_to(bytes_data=message)
        else:
            await communicator.send_to(text_data=message)
        assert await communicator.receive_from() == message
    await communicator.disconnect(code=close_code)


async def test_settings_namespace_prefixes_families(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"NAMESPACE": "shop"}

    await echo_session()

    exposition = scrape()
    assert exposition("shop_django_websocket_connections_total", **ECHO) == 1.0
    assert exposition("django_websocket_connections_total", **ECHO) == 0.0
    assert "django_websocket_connections" not in exposition.types


async def test_settings_namespace_defaults_to_django_prometheus(settings, scrape):
    settings.PROMETHEUS_METRIC_NAMESPACE = "site"

    await echo_session()

    assert scrape()("site_django_websocket_connections_total", **ECHO) == 1.0


async def test_settings_connection_duration_buckets(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"CONNECTION_DURATION_BUCKETS": [7, 70]}

    await echo_session()

    buckets = {labels["le"] for labels in scrape().series("django_websocket_connection_duration_seconds_bucket")}
    assert buckets == {"7.0", "70.0", "+Inf"}


async def test_settings_handshake_duration_buckets(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"HANDSHAKE_DURATION_BUCKETS": [30]}

    await echo_session()

    exposition = scrape()
    bucket = "django_websocket_handshake_duration_seconds_bucket"
    assert {labels["le"] for labels in exposition.series(bucket)} == {"30.0", "+Inf"}
    assert exposition(bucket, le="30.0", outcome="accepted", **ECHO) == 1.0


async def test_settings_message_metrics_off_drops_families(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"MESSAGE_METRICS": False}

    await echo_session(messages=("one", "two"))

    exposition = scrape()
    for family in MESSAGE_FAMILIES:
        assert family not in exposition.types
    assert exposition("django_websocket_connections_total", **ECHO) == 1.0
    assert exposition("django_websocket_connections_closed_total", code="1000", initiator="client", **ECHO) == 1.0


async def test_settings_message_size_histogram(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"MESSAGE_SIZE_HISTOGRAM": True}

    await echo_session(messages=("x" * 100, b"\x00" * 10))

    exposition = scrape()
    bucket = "django_websocket_message_size_bytes_bucket"
    assert exposition.types["django_websocket_message_size_bytes"] == "histogram"
    for direction in ("received", "sent"):
        assert exposition(bucket, le="64.0", direction=direction, **ECHO) == 1.0
        assert exposition(bucket, le="256.0", direction=direction, **ECHO) == 2.0
        assert exposition("django_websocket_message_size_bytes_sum", direction=direction, **ECHO) == 110.0
    assert exposition("django_websocket_received_bytes_total", **ECHO) == 110.0


async def test_settings_message_size_histogram_is_off_by_default(scrape):
    assert "django_websocket_message_size_bytes" not in scrape().types


async def test_settings_message_size_histogram_without_counters(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"MESSAGE_METRICS": False, "MESSAGE_SIZE_HISTOGRAM": True}

    await echo_session(messages=("abc",))

    exposition = scrape()
    assert exposition("django_websocket_message_size_bytes_count", direction="received", **ECHO) == 1.0
    assert "django_websocket_messages_received" not in exposition.types


async def test_settings_message_size_buckets(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"MESSAGE_SIZE_HISTOGRAM": True, "MESSAGE_SIZE_BUCKETS": [2, 8]}

    await echo_session(messages=("abcd",))

    exposition = scrape()
    bucket = "django_websocket_message_size_bytes_bucket"
    assert {labels["le"] for labels in exposition.series(bucket)} == {"2.0", "8.0", "+Inf"}
    assert exposition(bucket, le="2.0", direction="sent", **ECHO) == 0.0
    assert exposition(bucket, le="8.0", direction="sent", **ECHO) == 1.0


async def test_settings_close_codes_kept_verbatim(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"CLOSE_CODES": [4001]}

    await echo_session(close_code=4001)
    await echo_session(close_code=4002)

    exposition = scrape()
    closed = "django_websocket_connections_closed_total"
    assert exposition(closed, code="4001", initiator="client", **ECHO) == 1.0
    assert exposition(closed, code="4xxx", initiator="client", **ECHO) == 1.0


async def test_settings_skip_paths_leave_connection_uninstrumented(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"SKIP_PATHS": [r"/ws/echo/"]}

    await echo_session()
    await echo_session(path="/ws/chat/lobby/")

    exposition = scrape()
    assert [labels["route"] for labels in exposition.series("django_websocket_connections_total")] == [
        "ws/chat/<str:room_name>/"
    ]


async def test_settings_skip_paths_need_full_match(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"SKIP_PATHS": [r"/ws/ech"]}

    await echo_session()

    assert scrape()("django_websocket_connections_total", **ECHO) == 1.0


async def test_settings_extra_labels_on_every_family(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"EXTRA_LABELS": {"tenant": "tests.label_functions.tenant"}}

    await echo_session(path="/ws/echo/?tenant=acme")

    exposition = scrape()
    labels = {"tenant": "acme", **ECHO}
    assert exposition("django_websocket_connections_total", **labels) == 1.0
    assert exposition("django_websocket_handshakes_total", outcome="accepted", **labels) == 1.0
    assert exposition("django_websocket_messages_received_total", **labels) == 1.0
    assert exposition("django_websocket_connections_closed_total", code="1000", initiator="client", **labels) == 1.0
    for name in ("django_websocket_connections_active", "django_websocket_connection_duration_seconds_count"):
        assert exposition.series(name) == [labels]


async def test_settings_extra_labels_keep_order(settings, scrape):
    settings.CHANNELS_WS_METRICS = {
        "EXTRA_LABELS": {"region": "tests.label_functions.fixed", "tenant": "tests.label_functions.async_tenant"}
    }

    await echo_session(path="/ws/echo/?tenant=acme")

    assert scrape()("django_websocket_connections_total", region="eu", tenant="acme", **ECHO) == 1.0


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("raises", "LookupError: no tenant"),
        ("returns_int", "TypeError: returned int 7, expected str"),
        ("slow", "TimeoutError: no value within 0.1 s"),
    ],
)
async def test_settings_extra_label_failure_gives_error_value(settings, scrape, caplog, function, message):
    settings.CHANNELS_WS_METRICS = {"EXTRA_LABELS": {"tenant": f"tests.label_functions.{function}"}}

    with caplog.at_level(logging.ERROR, logger="channels_ws_metrics"):
        await echo_session()
        await echo_session()

    exposition = scrape()
    assert exposition("django_websocket_connections_total", tenant=ERROR_VALUE, **ECHO) == 2.0
    assert exposition("django_websocket_messages_sent_total", tenant=ERROR_VALUE, **ECHO) == 2.0
    (record,) = caplog.records
    assert record.getMessage().startswith(f"channels_ws_metrics: EXTRA_LABELS['tenant'] callable failed: {message}")


async def test_settings_max_label_values_caps_distinct_values(settings, scrape):
    settings.CHANNELS_WS_METRICS = {"EXTRA_LABELS": {"tenant": "tests.label_functions.tenant"}, "MAX_LABEL_VALUES": 2}

    for tenant in ("a", "b", "c", "d", "a"):
        await echo_session(path=f"/ws/echo/?tenant={tenant}")

    exposition = scrape()
    total = "django_websocket_connections_total"
    assert {labels["tenant"] for labels in exposition.series(total)} == {"a", "b", OTHER_VALUE}
    assert exposition(total, tenant="a", **ECHO) == 2.0
    assert exposition(total, tenant="b", **ECHO) == 1.0
    assert exposition(total, tenant=OTHER_VALUE, **ECHO) == 2.0


async def test_settings_skip_paths_run_raising_app_once(settings):
    settings.CHANNELS_WS_METRICS = {"SKIP_PATHS": [r"/ws/raise-before/"]}
    calls = []

    class Counting:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            calls.append(scope["path"])
            return await self.app(scope, receive, send)

    communicator = WebsocketCommunicator(WebSocketMetricsMiddleware(Counting(router())), "/ws/raise-before/")
    with pytest.raises(RuntimeError, match="connect failed"):
        await communicator.connect(timeout=0.1)

    assert calls == ["/ws/raise-before/"]
