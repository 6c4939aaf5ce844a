import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test.utils import override_settings

from channels_ws_metrics import WebSocketMetricsMiddleware, checks, conf
from channels_ws_metrics.conf import (
    E_BUCKETS_TYPE,
    E_BUCKETS_VALUES,
    E_INVALID_NAMESPACE,
    E_NOT_A_DICT,
    E_UNKNOWN_KEY,
)

from .asgi_apps import router


def check_ids(value, **extra):
    with override_settings(CHANNELS_WS_METRICS=value, **extra):
        return [message.id for message in checks.check_settings()]


def test_defaults_pass():
    assert check_ids({}) == []


def test_checks_are_bound():
    # Every id constant of conf is produced by at least one case here.
    cases = {
        E_NOT_A_DICT: [],
        E_UNKNOWN_KEY: {"NAMESAPCE": "x"},
        E_INVALID_NAMESPACE: {"NAMESPACE": "1bad"},
        E_BUCKETS_TYPE: {"CONNECTION_DURATION_BUCKETS": "1,2"},
        E_BUCKETS_VALUES: {"HANDSHAKE_DURATION_BUCKETS": [2, 1]},
    }
    ids = {value for name, value in vars(conf).items() if name.startswith("E_")}

    assert set(cases) == ids
    for check_id, value in cases.items():
        assert check_ids(value) == [check_id]


def test_check_not_a_dict_shows_value():
    with override_settings(CHANNELS_WS_METRICS=["NAMESPACE"]):
        (error,) = checks.check_settings()

    assert error.id == E_NOT_A_DICT
    assert "list" in error.msg
    assert "['NAMESPACE']" in error.msg


def test_check_unknown_key_suggests_closest():
    with override_settings(CHANNELS_WS_METRICS={"NAMESAPCE": "shop"}):
        (error,) = checks.check_settings()

    assert error.msg == "CHANNELS_WS_METRICS has an unknown key 'NAMESAPCE'."
    assert error.hint == "Did you mean 'NAMESPACE'?"


def test_check_unknown_key_lists_keys_without_close_match():
    with override_settings(CHANNELS_WS_METRICS={"ZZZ": 1}):
        (error,) = checks.check_settings()

    assert error.hint.startswith("Valid keys are: NAMESPACE, ")


@pytest.mark.parametrize("value", ["1abc", "with-dash", "a:b", 3, None])
def test_check_invalid_namespace(value):
    assert check_ids({"NAMESPACE": value}) == [E_INVALID_NAMESPACE]


def test_check_invalid_prometheus_namespace_names_that_setting():
    with override_settings(CHANNELS_WS_METRICS={}, PROMETHEUS_METRIC_NAMESPACE="bad-name"):
        (error,) = checks.check_settings()

    assert error.id == E_INVALID_NAMESPACE
    assert error.msg.startswith("PROMETHEUS_METRIC_NAMESPACE ")


@pytest.mark.parametrize("value", [[], "1,2", 5, [1, "2"], [True], [float("nan")], {1: 2}])
def test_check_buckets_type(value):
    assert check_ids({"CONNECTION_DURATION_BUCKETS": value}) == [E_BUCKETS_TYPE]


@pytest.mark.parametrize("value", [[2, 1], [1, 1], [0, 1], [-1, 1]])
def test_check_buckets_values(value):
    assert check_ids({"HANDSHAKE_DURATION_BUCKETS": value}) == [E_BUCKETS_VALUES]


def test_check_buckets_values_hint_shows_sorted_bounds():
    with override_settings(CHANNELS_WS_METRICS={"HANDSHAKE_DURATION_BUCKETS": [5, 1, 1, 0]}):
        (error,) = checks.check_settings()

    assert error.msg == (
        "CHANNELS_WS_METRICS['HANDSHAKE_DURATION_BUCKETS'] must be positive and "
        "strictly increasing, got [5, 1, 1, 0]."
    )
    assert error.hint.endswith("[1, 5].")


def test_check_django_prometheus_missing_warns():
    with override_settings(INSTALLED_APPS=["channels", "channels_ws_metrics"]):
        (warning,) = checks.check_django_prometheus_installed()

    assert warning.id == checks.W_NO_DJANGO_PROMETHEUS


def test_check_django_prometheus_installed_passes():
    assert checks.check_django_prometheus_installed() == []


def test_middleware_raises_improperly_configured_on_bad_settings():
    with override_settings(CHANNELS_WS_METRICS={"NAMESAPCE": "shop"}):
        with pytest.raises(ImproperlyConfigured) as raised:
            WebSocketMetricsMiddleware(router())

    assert str(raised.value) == (
        "CHANNELS_WS_METRICS has an unknown key 'NAMESAPCE'. "
        "Did you mean 'NAMESPACE'? (channels_ws_metrics.E002)"
    )
