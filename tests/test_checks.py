import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test.utils import override_settings

from channels_ws_metrics import WebSocketMetricsMiddleware, checks, conf
from channels_ws_metrics.conf import (
    E_BUCKETS_VALUES,
    E_CLOSE_CODE_RANGE,
    E_INVALID_NAMESPACE,
    E_LABEL_IMPORT,
    E_LABEL_NAME_INVALID,
    E_LABEL_NAME_RESERVED,
    E_LABEL_NOT_CALLABLE,
    E_MAX_LABEL_VALUES,
    E_NOT_A_DICT,
    E_SKIP_PATH_REGEX,
    E_UNKNOWN_KEY,
    E_WRONG_TYPE,
)

from .asgi_apps import router

TENANT = "tests.label_functions.tenant"

# One invalid value for each error id.
ERROR_CASES = {
    E_NOT_A_DICT: ["NAMESPACE"],
    E_UNKNOWN_KEY: {"NAMESAPCE": "x"},
    E_WRONG_TYPE: {"MESSAGE_METRICS": "yes"},
    E_BUCKETS_VALUES: {"HANDSHAKE_DURATION_BUCKETS": [2, 1]},
    E_INVALID_NAMESPACE: {"NAMESPACE": "1bad"},
    E_CLOSE_CODE_RANGE: {"CLOSE_CODES": [4001, 1000]},
    E_SKIP_PATH_REGEX: {"SKIP_PATHS": ["/ws/(health"]},
    E_LABEL_IMPORT: {"EXTRA_LABELS": {"tenant": "tests.label_functions.missing"}},
    E_LABEL_NOT_CALLABLE: {"EXTRA_LABELS": {"tenant": "tests.label_functions.NOT_CALLABLE"}},
    E_LABEL_NAME_INVALID: {"EXTRA_LABELS": {"ten-ant": TENANT}},
    E_LABEL_NAME_RESERVED: {"EXTRA_LABELS": {"route": TENANT}},
    E_MAX_LABEL_VALUES: {"MAX_LABEL_VALUES": 0},
}


def errors_for(value, **extra):
    with override_settings(CHANNELS_WS_METRICS=value, **extra):
        return checks.check_settings()


def ids_for(value, **extra):
    return [error.id for error in errors_for(value, **extra)]


def test_defaults_pass():
    assert ids_for({}) == []


def test_checks_are_bound():
    ids = {value for name, value in vars(conf).items() if name.startswith("E_")}

    assert set(ERROR_CASES) == ids
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("check_id", sorted(ERROR_CASES))
def test_check_reports_its_id(check_id):
    assert ids_for(ERROR_CASES[check_id]) == [check_id]


def test_check_every_key_has_a_valid_example():
    valid = {
        "NAMESPACE": "shop",
        "CONNECTION_DURATION_BUCKETS": [1, 60],
        "HANDSHAKE_DURATION_BUCKETS": (0.01, 0.1),
        "MESSAGE_METRICS": False,
        "MESSAGE_SIZE_HISTOGRAM": True,
        "MESSAGE_SIZE_BUCKETS": [128, 1024],
        "CLOSE_CODES": [3000, 4999],
        "SKIP_PATHS": [r"/ws/health/"],
        "EXTRA_LABELS": {"tenant": TENANT},
        "MAX_LABEL_VALUES": 1,
    }

    assert set(valid) == set(conf.KNOWN_KEYS)
    assert ids_for(valid) == []


def test_check_not_a_dict_shows_value():
    (error,) = errors_for(["NAMESPACE"])

    assert error.msg == "CHANNELS_WS_METRICS must be a dict, got list ['NAMESPACE']."


def test_check_unknown_key_suggests_closest():
    (error,) = errors_for({"NAMESAPCE": "shop"})

    assert error.msg == "CHANNELS_WS_METRICS has an unknown key 'NAMESAPCE'."
    assert error.hint == "Did you mean 'NAMESPACE'?"


def test_check_unknown_key_lists_keys_without_close_match():
    (error,) = errors_for({"ZZZ": 1})

    assert error.hint.startswith("Valid keys are: NAMESPACE, CONNECTION_DURATION_BUCKETS, ")


def test_check_reports_every_mistake():
    assert ids_for({"NAMESAPCE": "x", "MAX_LABEL_VALUES": 0, "CLOSE_CODES": [5000]}) == [
        E_UNKNOWN_KEY,
        E_MAX_LABEL_VALUES,
        E_CLOSE_CODE_RANGE,
    ]


@pytest.mark.parametrize("value", ["1abc", "with-dash", "a:b"])
def test_check_namespace_invalid(value):
    assert ids_for({"NAMESPACE": value}) == [E_INVALID_NAMESPACE]


def test_check_namespace_wrong_type():
    (error,) = errors_for({"NAMESPACE": 3})

    assert error.id == E_WRONG_TYPE
    assert error.msg == "CHANNELS_WS_METRICS['NAMESPACE'] must be a string, got int 3."


def test_check_prometheus_namespace_names_that_setting():
    (error,) = errors_for({}, PROMETHEUS_METRIC_NAMESPACE="bad-name")

    assert error.id == E_INVALID_NAMESPACE
    assert error.msg == "PROMETHEUS_METRIC_NAMESPACE is not a valid Prometheus metric name prefix: 'bad-name'."


@pytest.mark.parametrize("key", ["CONNECTION_DURATION_BUCKETS", "HANDSHAKE_DURATION_BUCKETS", "MESSAGE_SIZE_BUCKETS"])
@pytest.mark.parametrize("value", [[], "1,2", 5, [1, "2"], [True], [float("nan")], {1: 2}])
def test_check_buckets_wrong_type(key, value):
    assert ids_for({key: value}) == [E_WRONG_TYPE]


@pytest.mark.parametrize("value", [[2, 1], [1, 1], [0, 1], [-1, 1]])
def test_check_buckets_not_increasing(value):
    assert ids_for({"CONNECTION_DURATION_BUCKETS": value}) == [E_BUCKETS_VALUES]


def test_check_buckets_hint_shows_sorted_bounds():
    (error,) = errors_for({"HANDSHAKE_DURATION_BUCKETS": [5, 1, 1, 0]})

    assert error.msg == (
        "CHANNELS_WS_METRICS['HANDSHAKE_DURATION_BUCKETS'] must be positive and "
        "strictly increasing, got [5, 1, 1, 0]."
    )
    assert error.hint == "Sort the bounds and drop duplicates and values <= 0: [1, 5]."


@pytest.mark.parametrize("key", ["MESSAGE_METRICS", "MESSAGE_SIZE_HISTOGRAM"])
@pytest.mark.parametrize("value", [1, "True", None])
def test_check_flag_wrong_type(key, value):
    assert ids_for({key: value}) == [E_WRONG_TYPE]


@pytest.mark.parametrize("value", [4001, ["4001"], [True], "4001"])
def test_check_close_codes_wrong_type(value):
    assert ids_for({"CLOSE_CODES": value}) == [E_WRONG_TYPE]


def test_check_close_codes_out_of_range_lists_them():
    (error,) = errors_for({"CLOSE_CODES": [1000, 4001, 5000]})

    assert error.msg == "CHANNELS_WS_METRICS['CLOSE_CODES'] contains codes outside 3000-4999: [1000, 5000]."


@pytest.mark.parametrize("value", [r"/ws/health/", [1], None])
def test_check_skip_paths_wrong_type(value):
    assert ids_for({"SKIP_PATHS": value}) == [E_WRONG_TYPE]


def test_check_skip_paths_bad_regex_shows_pattern():
    (error,) = errors_for({"SKIP_PATHS": ["/ok/", "/ws/(health"]})

    assert error.id == E_SKIP_PATH_REGEX
    assert "'/ws/(health'" in error.msg
    assert "missing ), unterminated subpattern" in error.msg


@pytest.mark.parametrize("value", [["tenant"], "tenant", None])
def test_check_extra_labels_wrong_type(value):
    assert ids_for({"EXTRA_LABELS": value}) == [E_WRONG_TYPE]


def test_check_extra_labels_path_wrong_type():
    assert ids_for({"EXTRA_LABELS": {"tenant": len}}) == [E_WRONG_TYPE]


@pytest.mark.parametrize("name", ["ten-ant", "1st", "__name", "", 5])
def test_check_extra_labels_invalid_name(name):
    assert ids_for({"EXTRA_LABELS": {name: TENANT}}) == [E_LABEL_NAME_INVALID]


@pytest.mark.parametrize("name", ["route", "outcome", "code", "initiator", "exception_type", "direction", "le", "pid"])
def test_check_extra_labels_reserved_name(name):
    assert ids_for({"EXTRA_LABELS": {name: TENANT}}) == [E_LABEL_NAME_RESERVED]


def test_check_extra_labels_import_error_shows_path():
    (error,) = errors_for({"EXTRA_LABELS": {"tenant": "nowhere.module.tenant"}})

    assert error.msg.startswith("CHANNELS_WS_METRICS['EXTRA_LABELS']['tenant'] = 'nowhere.module.tenant' cannot be imported")


def test_check_extra_labels_not_callable_shows_value():
    (error,) = errors_for({"EXTRA_LABELS": {"tenant": "tests.label_functions.NOT_CALLABLE"}})

    assert error.msg == (
        "CHANNELS_WS_METRICS['EXTRA_LABELS']['tenant'] = 'tests.label_functions.NOT_CALLABLE' "
        "is not callable: it is int 42."
    )


@pytest.mark.parametrize("value", [0, -3])
def test_check_max_label_values_below_one(value):
    assert ids_for({"MAX_LABEL_VALUES": value}) == [E_MAX_LABEL_VALUES]


@pytest.mark.parametrize("value", ["50", 1.5, True])
def test_check_max_label_values_wrong_type(value):
    assert ids_for({"MAX_LABEL_VALUES": value}) == [E_WRONG_TYPE]


def test_check_django_prometheus_missing_warns():
    with override_settings(INSTALLED_APPS=["channels", "channels_ws_metrics"]):
        (warning,) = checks.check_django_prometheus_installed()

    assert warning.id == checks.W_NO_DJANGO_PROMETHEUS


def test_check_django_prometheus_installed_passes():
    assert checks.check_django_prometheus_installed() == []


def test_check_multiprocess_directory_missing_warns(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))

    (warning,) = checks.check_multiprocess_directory()

    assert warning.id == checks.W_MULTIPROC_DIR_UNUSABLE
    assert "does not exist" in warning.msg
    assert repr(str(tmp_path / "missing")) in warning.msg


def test_check_multiprocess_directory_read_only_warns(monkeypatch, tmp_path):
    # Stands in for a read-only directory: CI runs as root, which may write anywhere.
    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    (warning,) = checks.check_multiprocess_directory()

    assert "not writable" in warning.msg


def test_check_multiprocess_directory_file_warns(monkeypatch, tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))

    (warning,) = checks.check_multiprocess_directory()

    assert warning.id == checks.W_MULTIPROC_DIR_UNUSABLE


def test_check_multiprocess_directory_usable_passes(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    assert checks.check_multiprocess_directory() == []


def test_check_command_fails_on_bad_settings(settings, capsys):
    settings.CHANNELS_WS_METRICS = {"NAMESAPCE": "shop"}

    with pytest.raises(SystemCheckError) as raised:
        call_command("check")

    assert "channels_ws_metrics.E002" in str(raised.value)
    assert "HINT: Did you mean 'NAMESPACE'?" in str(raised.value)


def test_middleware_raises_improperly_configured_on_bad_settings(settings):
    settings.CHANNELS_WS_METRICS = {"NAMESAPCE": "shop"}

    with pytest.raises(ImproperlyConfigured) as raised:
        WebSocketMetricsMiddleware(router())

    assert str(raised.value) == (
        "channels_ws_metrics.E002: CHANNELS_WS_METRICS has an unknown key 'NAMESAPCE'. "
        "HINT: Did you mean 'NAMESPACE'?"
    )
