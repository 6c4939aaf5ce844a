import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test.utils import override_settings

from channels_ws_metrics import WebSocketMetricsMiddleware, checks, conf
from channels_ws_metrics.conf import (
    E_BUCKETS_VALUES,
    E_CLOSE_CODE_RANGE,
    E_EXPORT_BASIC_AUTH_INCOMPLETE,
    E_EXPORT_INVALID_ENV_NAME,
    E_EXPORT_INVALID_NETWORK,
    E_EXPORT_NO_RULE,
    E_EXPORT_PLAINTEXT_SECRET,
    E_INVALID_NAMESPACE,
    E_LABEL_IMPORT,
    E_LABEL_NAME_INVALID,
    E_LABEL_NAME_RESERVED,
    E_LABEL_NOT_CALLABLE,
    E_MAX_LABEL_VALUES,
    E_MESSAGE_FLUSH_INTERVAL,
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
    E_EXPORT_PLAINTEXT_SECRET: {"EXPORT": {"BEARER_TOKEN_ENV": "METRICS_TOKEN", "BEARER_TOKEN": "s3cret"}},
    E_EXPORT_INVALID_NETWORK: {"EXPORT": {"ALLOWED_NETWORKS": ["10.0.0.0/33"]}},
    E_EXPORT_INVALID_ENV_NAME: {"EXPORT": {"BEARER_TOKEN_ENV": "not a name"}},
    E_EXPORT_BASIC_AUTH_INCOMPLETE: {"EXPORT": {"BASIC_AUTH_USERNAME": "prometheus"}},
    E_EXPORT_NO_RULE: {"EXPORT": {}},
    E_MESSAGE_FLUSH_INTERVAL: {"MESSAGE_FLUSH_INTERVAL": 0},
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
        "MESSAGE_FLUSH_INTERVAL": 0.25,
        "MESSAGE_SIZE_HISTOGRAM": True,
        "MESSAGE_SIZE_BUCKETS": [128, 1024],
        "CLOSE_CODES": [3000, 4999],
        "SKIP_PATHS": [r"/ws/health/"],
        "EXTRA_LABELS": {"tenant": TENANT},
        "MAX_LABEL_VALUES": 1,
        "EXPORT": {
            "ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128", "192.0.2.7"],
            "TRUSTED_PROXIES": ("10.0.0.0/8", "fd00::/8"),
            "BEARER_TOKEN_ENV": "METRICS_TOKEN",
            "BASIC_AUTH_USERNAME": "prometheus",
            "BASIC_AUTH_PASSWORD_ENV": "METRICS_PASSWORD",
        },
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


@pytest.mark.parametrize("value", [[2, 1], [1, 1], [0, 1], [-1, 1], [float("inf")], [1, float("inf")]])
def test_check_buckets_not_increasing(value):
    assert ids_for({"CONNECTION_DURATION_BUCKETS": value}) == [E_BUCKETS_VALUES]


def test_check_buckets_hint_shows_sorted_bounds():
    (error,) = errors_for({"HANDSHAKE_DURATION_BUCKETS": [5, 1, 1, 0]})

    assert error.msg == (
        "CHANNELS_WS_METRICS['HANDSHAKE_DURATION_BUCKETS'] must be finite, positive and "
        "strictly increasing, got [5, 1, 1, 0]."
    )
    assert error.hint == (
        "Sort the bounds and drop duplicates, values <= 0 and infinities (+Inf is added for you): [1, 5]."
    )


@pytest.mark.parametrize("key", ["MESSAGE_METRICS", "MESSAGE_SIZE_HISTOGRAM"])
@pytest.mark.parametrize("value", [1, "True", None])
def test_check_flag_wrong_type(key, value):
    assert ids_for({key: value}) == [E_WRONG_TYPE]


# An int too large for a float is no number of seconds either.
@pytest.mark.parametrize("value", ["1", None, True, float("nan"), [1], pytest.param(10**400, id="10**400")])
def test_check_message_flush_interval_wrong_type(value):
    assert ids_for({"MESSAGE_FLUSH_INTERVAL": value}) == [E_WRONG_TYPE]


@pytest.mark.parametrize("value", [0, -1, 0.0, 0.009, 1e-9, 3600.5, 1e10, float("inf")])
def test_check_message_flush_interval_out_of_range(value):
    assert ids_for({"MESSAGE_FLUSH_INTERVAL": value}) == [E_MESSAGE_FLUSH_INTERVAL]


@pytest.mark.parametrize("value", [0.01, 1, 3600])
def test_check_message_flush_interval_bounds_allowed(value):
    assert ids_for({"MESSAGE_FLUSH_INTERVAL": value}) == []


def test_check_message_flush_interval_message():
    (error,) = errors_for({"MESSAGE_FLUSH_INTERVAL": -2})

    assert error.msg == "CHANNELS_WS_METRICS['MESSAGE_FLUSH_INTERVAL'] must be between 0.01 and 3600.0 seconds, got -2."
    assert error.hint == (
        "Set it to how far behind, in seconds, the message and byte counters may be in multiprocess mode (default 1.0)."
    )


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


@pytest.mark.parametrize(
    "rules",
    [
        {"ALLOWED_NETWORKS": ["127.0.0.0/8"]},
        {"BEARER_TOKEN_ENV": "METRICS_TOKEN"},
        {"BASIC_AUTH_USERNAME": "prometheus", "BASIC_AUTH_PASSWORD_ENV": "METRICS_PASSWORD"},
    ],
)
def test_check_export_single_rule_passes(rules):
    assert ids_for({"EXPORT": rules}) == []


@pytest.mark.parametrize("value", [None, ["127.0.0.0/8"], "127.0.0.0/8"])
def test_check_export_wrong_type(value):
    (error,) = errors_for({"EXPORT": value})

    assert error.id == E_WRONG_TYPE
    assert error.msg == f"CHANNELS_WS_METRICS['EXPORT'] must be a dict of export rules, got {type(value).__name__} {value!r}."


@pytest.mark.parametrize("key", ["BEARER_TOKEN", "TOKEN", "PASSWORD", "BASIC_AUTH_PASSWORD", "password"])
def test_check_export_plaintext_secret_hides_value(key):
    (error,) = errors_for({"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"], key: "hunter2-secret"}})

    assert error.id == E_EXPORT_PLAINTEXT_SECRET
    assert f"CHANNELS_WS_METRICS['EXPORT'] has the key {key!r}" in error.msg
    assert "hunter2-secret" not in error.msg
    assert "hunter2-secret" not in error.hint
    assert "_ENV']" in error.hint


def test_check_export_plaintext_token_hint_names_env_key():
    (error,) = errors_for({"EXPORT": {"BEARER_TOKEN": "x"}})

    assert "CHANNELS_WS_METRICS['EXPORT']['BEARER_TOKEN_ENV']" in error.hint


def test_check_export_plaintext_password_hint_names_env_key():
    (error,) = errors_for({"EXPORT": {"BASIC_AUTH_PASSWORD": "x"}})

    assert error.id == E_EXPORT_PLAINTEXT_SECRET
    assert "CHANNELS_WS_METRICS['EXPORT']['BASIC_AUTH_PASSWORD_ENV']" in error.hint


def test_check_export_plaintext_password_also_reports_incomplete_pair():
    assert ids_for({"EXPORT": {"BASIC_AUTH_USERNAME": "prometheus", "PASSWORD": "x"}}) == [
        E_EXPORT_PLAINTEXT_SECRET,
        E_EXPORT_BASIC_AUTH_INCOMPLETE,
    ]


def test_check_export_unknown_key_suggests_closest():
    (error,) = errors_for({"EXPORT": {"ALOWED_NETWORKS": ["127.0.0.0/8"]}})

    assert error.id == E_UNKNOWN_KEY
    assert error.msg == "CHANNELS_WS_METRICS['EXPORT'] has an unknown key 'ALOWED_NETWORKS'."
    assert error.hint == "Did you mean 'ALLOWED_NETWORKS'?"


def test_check_export_unknown_key_lists_keys():
    (error,) = errors_for({"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "ZZZ": 1}})

    assert error.hint == (
        "Valid keys are: ALLOWED_NETWORKS, TRUSTED_PROXIES, BEARER_TOKEN_ENV, "
        "BASIC_AUTH_USERNAME, BASIC_AUTH_PASSWORD_ENV."
    )


@pytest.mark.parametrize("key", ["ALLOWED_NETWORKS", "TRUSTED_PROXIES"])
@pytest.mark.parametrize("value", ["127.0.0.0/8", [1], None, {"127.0.0.0/8": True}])
def test_check_export_networks_wrong_type(key, value):
    rules = {"BEARER_TOKEN_ENV": "METRICS_TOKEN", key: value}

    assert ids_for({"EXPORT": rules}) == [E_WRONG_TYPE]


def test_check_export_allowed_networks_empty():
    (error,) = errors_for({"EXPORT": {"ALLOWED_NETWORKS": []}})

    assert error.id == E_WRONG_TYPE
    assert error.msg == (
        "CHANNELS_WS_METRICS['EXPORT']['ALLOWED_NETWORKS'] must be a non-empty list or tuple "
        "of strings, got list []."
    )


def test_check_export_trusted_proxies_may_be_empty():
    assert ids_for({"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "TRUSTED_PROXIES": []}}) == []


@pytest.mark.parametrize("network", ["10.0.0.0/33", "10.1.2.3/8", "localhost", "::1/129", "fe80::1/10", ""])
def test_check_export_invalid_network(network):
    assert ids_for({"EXPORT": {"ALLOWED_NETWORKS": [network]}}) == [E_EXPORT_INVALID_NETWORK]


def test_check_export_invalid_network_shows_value():
    (error,) = errors_for({"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "TRUSTED_PROXIES": ["10.1.2.3/8"]}})

    assert error.msg == (
        "CHANNELS_WS_METRICS['EXPORT']['TRUSTED_PROXIES'] contains '10.1.2.3/8', which is not "
        "a valid IP network: 10.1.2.3/8 has host bits set."
    )
    assert "CIDR" in error.hint


def test_check_export_invalid_networks_each_reported():
    rules = {"ALLOWED_NETWORKS": ["bad", "127.0.0.0/8", "worse"]}

    assert ids_for({"EXPORT": rules}) == [E_EXPORT_INVALID_NETWORK, E_EXPORT_INVALID_NETWORK]


@pytest.mark.parametrize("key", ["BEARER_TOKEN_ENV", "BASIC_AUTH_PASSWORD_ENV"])
def test_check_export_env_name_invalid_hides_value(key):
    rules = {"BASIC_AUTH_USERNAME": "prometheus", "BASIC_AUTH_PASSWORD_ENV": "METRICS_PASSWORD"}
    rules[key] = "pa$$w0rd!"

    (error,) = errors_for({"EXPORT": rules})

    assert error.id == E_EXPORT_INVALID_ENV_NAME
    assert error.msg == (
        f"CHANNELS_WS_METRICS['EXPORT'][{key!r}] is not a valid environment variable name (value not shown)."
    )
    assert "pa$$w0rd!" not in error.hint


def test_check_export_env_name_wrong_type_hides_value():
    (error,) = errors_for({"EXPORT": {"BEARER_TOKEN_ENV": 12345678}})

    assert error.id == E_WRONG_TYPE
    assert "12345678" not in error.msg
    assert "got int (value not shown)" in error.msg


@pytest.mark.parametrize("value", ["", "prom:etheus", None, 7])
def test_check_export_username_invalid(value):
    rules = {"BASIC_AUTH_USERNAME": value, "BASIC_AUTH_PASSWORD_ENV": "METRICS_PASSWORD"}

    assert ids_for({"EXPORT": rules}) == [E_WRONG_TYPE]


def test_check_export_username_without_password_env():
    (error,) = errors_for({"EXPORT": {"BASIC_AUTH_USERNAME": "prometheus"}})

    assert error.msg == (
        "CHANNELS_WS_METRICS['EXPORT']['BASIC_AUTH_USERNAME'] = 'prometheus' is set without "
        "BASIC_AUTH_PASSWORD_ENV."
    )


def test_check_export_password_env_without_username():
    (error,) = errors_for({"EXPORT": {"BASIC_AUTH_PASSWORD_ENV": "METRICS_PASSWORD"}})

    assert error.id == E_EXPORT_BASIC_AUTH_INCOMPLETE
    assert error.msg == (
        "CHANNELS_WS_METRICS['EXPORT']['BASIC_AUTH_PASSWORD_ENV'] is set without BASIC_AUTH_USERNAME."
    )


def test_check_export_trusted_proxies_alone_is_no_rule():
    (error,) = errors_for({"EXPORT": {"TRUSTED_PROXIES": ["10.0.0.0/8"]}})

    assert error.id == E_EXPORT_NO_RULE
    assert error.msg == (
        "CHANNELS_WS_METRICS['EXPORT'] sets no rule, got {'TRUSTED_PROXIES': ['10.0.0.0/8']}. "
        "The guarded view would admit no request."
    )


def test_check_export_misspelled_rule_only_unknown():
    assert ids_for({"EXPORT": {"BEARER_TOKEN_EN": "METRICS_TOKEN"}}) == [E_UNKNOWN_KEY]


def test_check_export_routed_without_export_warns():
    with override_settings(ROOT_URLCONF="tests.export_urls", CHANNELS_WS_METRICS={}):
        (warning,) = checks.check_export_routing()

    assert warning.id == checks.W_EXPORT_MISSING
    assert "routed at 'metrics'" in warning.msg


def test_check_export_routed_with_export_passes():
    export = {"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}}

    with override_settings(ROOT_URLCONF="tests.export_urls", CHANNELS_WS_METRICS=export):
        assert checks.check_export_routing() == []


def test_check_export_unguarded_view_routed_warns():
    # The example project still routes django_prometheus.urls.
    export = {"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}}

    with override_settings(CHANNELS_WS_METRICS=export):
        (warning,) = checks.check_export_routing()

    assert warning.id == checks.W_UNGUARDED_EXPORT_ROUTED
    assert "ExportToDjangoView is routed at 'metrics'" in warning.msg


def test_check_export_unguarded_view_alone_passes():
    assert checks.check_export_routing() == []


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


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ((4, 2, 29, "final", 0), True),
        ((4, 2, 30, "final", 0), False),
        ((5, 0, 14, "final", 0), True),
        ((5, 2, 12, "final", 0), True),
        ((5, 2, 13, "final", 0), False),
        ((6, 0, 3, "final", 0), True),
        ((6, 0, 4, "final", 0), False),
        ((6, 1, 0, "final", 0), False),
    ],
)
def test_check_header_spoofing_versions(version, affected):
    assert checks._merges_underscore_headers(version) is affected


def test_check_header_spoofing_warns_with_trusted_proxies(settings, monkeypatch):
    monkeypatch.setattr("django.VERSION", (5, 2, 12, "final", 0))
    settings.CHANNELS_WS_METRICS = {"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "TRUSTED_PROXIES": ["10.0.0.0/8"]}}

    (warning,) = checks.check_header_spoofing()

    assert warning.id == checks.W_HEADER_SPOOFING_DJANGO
    assert "CVE-2026-3902" in warning.msg


def test_check_header_spoofing_silent_without_trusted_proxies(settings, monkeypatch):
    monkeypatch.setattr("django.VERSION", (5, 2, 12, "final", 0))
    settings.CHANNELS_WS_METRICS = {"EXPORT": {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}}

    assert checks.check_header_spoofing() == []
