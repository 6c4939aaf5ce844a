"""The guarded metrics view, driven through Django's test client."""

import base64
import logging
import subprocess
import sys
import textwrap

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django_prometheus import exports
from prometheus_client import CONTENT_TYPE_LATEST

from channels_ws_metrics import views
from channels_ws_metrics.export import RejectionLog

pytestmark = pytest.mark.urls("tests.export_urls")

TOKEN = "s3cret-token-value"
PASSWORD = "s3cret-password-value"
LOOPBACK = {"ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128"]}
BEARER = {"BEARER_TOKEN_ENV": "TEST_METRICS_TOKEN"}
BASIC = {"BASIC_AUTH_USERNAME": "prometheus", "BASIC_AUTH_PASSWORD_ENV": "TEST_METRICS_PASSWORD"}
PROXY = {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "TRUSTED_PROXIES": ["10.0.0.0/8"]}
FAMILY = b"django_websocket_connections_active"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_rejection_log(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(views, "log_rejection", RejectionLog(clock=clock))
    return clock


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    monkeypatch.setenv("TEST_METRICS_TOKEN", TOKEN)
    monkeypatch.setenv("TEST_METRICS_PASSWORD", PASSWORD)


@pytest.fixture
def export(settings):
    """Set CHANNELS_WS_METRICS['EXPORT'] to the given rules."""

    def configure(**rules):
        settings.CHANNELS_WS_METRICS = {"EXPORT": rules}

    return configure


def basic(username, password):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def get(client, remote_addr="127.0.0.1", **headers):
    return client.get("/metrics", REMOTE_ADDR=remote_addr, headers=headers)


def own_messages(caplog):
    # django.request also logs every 4xx response, so keep only this app's records.
    return [record.getMessage() for record in caplog.records if record.name == "channels_ws_metrics"]


# -- networks -----------------------------------------------------------------


def test_metrics_network_admits_client(client, export):
    export(**LOOPBACK)

    response = get(client, "127.0.0.1")

    assert response.status_code == 200
    assert FAMILY in response.content


def test_metrics_network_rejects_client(client, export):
    export(**LOOPBACK)

    response = get(client, "192.0.2.7")

    assert response.status_code == 403
    assert b"django_websocket" not in response.content
    assert response.content == b"client address not allowed\n"
    assert response["Content-Type"] == "text/plain; charset=utf-8"


def test_metrics_network_admits_ipv6(client, export):
    export(ALLOWED_NETWORKS=["2001:db8::/32"])

    response = get(client, "2001:db8::17")

    assert response.status_code == 200


def test_metrics_network_rejects_ipv6(client, export):
    export(ALLOWED_NETWORKS=["2001:db8::/32"])

    response = get(client, "2001:db9::17")

    assert response.status_code == 403


def test_metrics_network_admits_ipv4_mapped_ipv6(client, export):
    export(ALLOWED_NETWORKS=["127.0.0.0/8"])

    response = get(client, "::ffff:127.0.0.1")

    assert response.status_code == 200


def test_metrics_network_rejects_missing_remote_addr(client, export):
    export(**LOOPBACK)

    response = get(client, "")

    assert response.status_code == 403


# -- X-Forwarded-For ----------------------------------------------------------


def test_metrics_forwarded_for_ignored_from_untrusted_peer(client, export):
    export(**PROXY)

    response = get(client, "192.0.2.7", **{"X-Forwarded-For": "127.0.0.1"})

    assert response.status_code == 403


def test_metrics_forwarded_for_ignored_without_trusted_proxies(client, export):
    export(**LOOPBACK)

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "127.0.0.1"})

    assert response.status_code == 403


def test_metrics_forwarded_for_honoured_from_trusted_proxy(client, export):
    export(**PROXY)

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "127.0.0.1"})

    assert response.status_code == 200


def test_metrics_forwarded_for_skips_trusted_hops(client, export):
    export(**PROXY)

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "127.0.0.1, 10.9.9.9"})

    assert response.status_code == 200


def test_metrics_forwarded_for_uses_rightmost_untrusted(client, export):
    # The client wrote 127.0.0.1 itself, and the proxy appended the real peer 192.0.2.7.
    export(**PROXY)

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "127.0.0.1, 192.0.2.7"})

    assert response.status_code == 403


def test_metrics_forwarded_for_all_trusted_uses_leftmost(client, export):
    export(ALLOWED_NETWORKS=["10.1.0.0/16"], TRUSTED_PROXIES=["10.0.0.0/8"])

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "10.1.0.5, 10.2.0.1"})

    assert response.status_code == 200


def test_metrics_forwarded_for_absent_from_proxy_rejected(client, export):
    # A proxy that omits the header must not make every client look like the proxy.
    export(ALLOWED_NETWORKS=["10.0.0.0/8"], TRUSTED_PROXIES=["10.0.0.0/8"])

    response = get(client, "10.0.0.2")

    assert response.status_code == 403


def test_metrics_forwarded_for_absent_from_proxy_allows_credentials(client, export):
    export(TRUSTED_PROXIES=["10.0.0.0/8"], **BEARER)

    response = get(client, "10.0.0.2", Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 200


def test_metrics_forwarded_for_bad_left_entry_ignored(client, export):
    export(**PROXY)

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "unknown, 127.0.0.1"})

    assert response.status_code == 200


def test_metrics_forwarded_for_invalid_entry_rejected(client, export):
    export(**PROXY)

    response = get(client, "10.0.0.2", **{"X-Forwarded-For": "127.0.0.1, unknown"})

    assert response.status_code == 403


# -- bearer token ---------------------------------------------------------------


def test_metrics_bearer_admits_valid_token(client, export):
    export(**BEARER)

    response = get(client, "192.0.2.7", Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert FAMILY in response.content


def test_metrics_bearer_scheme_is_case_insensitive(client, export):
    export(**BEARER)

    response = get(client, Authorization=f"bearer {TOKEN}")

    assert response.status_code == 200


def test_metrics_bearer_rejects_wrong_token(client, export):
    export(**BEARER)

    response = get(client, Authorization=f"Bearer {TOKEN}x")

    assert response.status_code == 401
    assert response.content == b"invalid credentials\n"
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


def test_metrics_bearer_rejects_token_prefix(client, export):
    export(**BEARER)

    response = get(client, Authorization=f"Bearer {TOKEN[:-1]}")

    assert response.status_code == 401


def test_metrics_bearer_missing_gets_challenge(client, export):
    export(**BEARER)

    response = get(client)

    assert response.status_code == 401
    assert response.content == b"credentials required\n"
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


# -- basic authentication -------------------------------------------------------


def test_metrics_basic_admits_valid_credentials(client, export):
    export(**BASIC)

    response = get(client, Authorization=basic("prometheus", PASSWORD))

    assert response.status_code == 200
    assert FAMILY in response.content


def test_metrics_basic_admits_password_with_colon(client, export, monkeypatch):
    monkeypatch.setenv("TEST_METRICS_PASSWORD", "a:b")
    export(**BASIC)

    response = get(client, Authorization=basic("prometheus", "a:b"))

    assert response.status_code == 200


def test_metrics_basic_rejects_wrong_password(client, export):
    export(**BASIC)

    response = get(client, Authorization=basic("prometheus", "guess"))

    assert response.status_code == 401
    assert response.content == b"invalid credentials\n"


def test_metrics_basic_rejects_wrong_username(client, export):
    export(**BASIC)

    response = get(client, Authorization=basic("admin", PASSWORD))

    assert response.status_code == 401
    assert response.content == b"invalid credentials\n"


def test_metrics_basic_missing_gets_challenge(client, export):
    export(**BASIC)

    response = get(client)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="metrics", charset="UTF-8"'


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic \u00e9",
        "Bearer",
        "Bearer    ",
    ],
)
def test_metrics_authorization_malformed_rejected(client, export, header):
    export(**BEARER, **BASIC)

    response = get(client, Authorization=header)

    assert response.status_code == 401
    assert response.content == b"malformed Authorization header\n"


@pytest.mark.parametrize("header", ["Digest username=x", f"Token {TOKEN}", "garbage"])
def test_metrics_authorization_unknown_scheme_rejected(client, export, header):
    export(**BEARER, **BASIC)

    response = get(client, Authorization=header)

    assert response.status_code == 401
    assert response.content == b"unsupported authorization scheme\n"


def test_metrics_authorization_unconfigured_scheme_rejected(client, export):
    export(**BEARER)

    response = get(client, Authorization=basic("prometheus", PASSWORD))

    assert response.status_code == 401
    assert response.content == b"unsupported authorization scheme\n"


def test_metrics_challenge_names_both_schemes(client, export):
    export(**BEARER, **BASIC)

    response = get(client)

    assert response["WWW-Authenticate"] == 'Bearer realm="metrics", Basic realm="metrics", charset="UTF-8"'


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", basic("prometheus", PASSWORD)])
def test_metrics_either_credential_admits(client, export, header):
    export(**BEARER, **BASIC)

    response = get(client, Authorization=header)

    assert response.status_code == 200


# -- rules together -------------------------------------------------------------


def test_metrics_network_and_token_token_missing(client, export):
    export(**LOOPBACK, **BEARER)

    response = get(client, "127.0.0.1")

    assert response.status_code == 401


def test_metrics_network_and_token_network_wrong(client, export):
    export(**LOOPBACK, **BEARER)

    response = get(client, "192.0.2.7", Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 403


def test_metrics_network_and_token_both_pass(client, export):
    export(**LOOPBACK, **BEARER)

    response = get(client, "::1", Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 200


# -- failing closed -------------------------------------------------------------


def test_metrics_without_export_rejects(client, settings, caplog):
    settings.CHANNELS_WS_METRICS = {}

    with caplog.at_level(logging.ERROR, logger="channels_ws_metrics"):
        response = get(client)

    assert response.status_code == 403
    assert response.content == b"metrics export is not configured\n"
    (message,) = own_messages(caplog)
    assert "CHANNELS_WS_METRICS['EXPORT'] is not set" in message


def test_metrics_without_setting_rejects(client, settings):
    del settings.CHANNELS_WS_METRICS

    response = get(client)

    assert response.status_code == 403


def test_metrics_invalid_settings_raise(client, settings):
    settings.CHANNELS_WS_METRICS = {"EXPORT": {}}

    with pytest.raises(ImproperlyConfigured) as raised:
        get(client)

    assert "channels_ws_metrics.E017" in str(raised.value)


@pytest.mark.parametrize("value", [None, ""])
def test_metrics_env_unset_rejects(client, export, monkeypatch, caplog, value):
    if value is None:
        monkeypatch.delenv("TEST_METRICS_TOKEN")
    else:
        monkeypatch.setenv("TEST_METRICS_TOKEN", value)
    export(**BEARER)

    with caplog.at_level(logging.ERROR, logger="channels_ws_metrics"):
        response = get(client, Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 403
    assert b"django_websocket" not in response.content
    (record,) = [record for record in caplog.records if record.name == "channels_ws_metrics"]
    assert record.levelno == logging.ERROR
    assert "TEST_METRICS_TOKEN" in record.getMessage()


def test_metrics_env_unset_rejects_other_credential(client, export, monkeypatch):
    monkeypatch.delenv("TEST_METRICS_PASSWORD")
    export(**BEARER, **BASIC)

    response = get(client, Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 403


def test_metrics_env_read_per_request(client, export, monkeypatch):
    export(**BEARER)
    monkeypatch.setenv("TEST_METRICS_TOKEN", "rotated-token")

    assert get(client, Authorization=f"Bearer {TOKEN}").status_code == 401
    assert get(client, Authorization="Bearer rotated-token").status_code == 200


# -- methods --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["post", "put", "delete", "options"])
def test_metrics_other_method_not_allowed(client, export, method):
    export(**LOOPBACK)

    response = getattr(client, method)("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert b"django_websocket" not in response.content


def test_metrics_post_with_csrf_checks_not_allowed(export):
    export(**LOOPBACK)

    response = Client(enforce_csrf_checks=True).post("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 405


def test_metrics_head_allowed(client, export):
    export(**LOOPBACK)

    response = client.head("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST


# -- logging --------------------------------------------------------------------


def test_metrics_rejection_log_names_client_not_secret(client, export, caplog):
    export(**BEARER, **BASIC)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        get(client, "192.0.2.7", Authorization=f"Bearer {TOKEN}-wrong")
        get(client, "192.0.2.8", Authorization=basic("prometheus", f"{PASSWORD}-wrong"))

    messages = own_messages(caplog)
    assert len(messages) == 1
    assert "192.0.2.7" in messages[0]
    assert "invalid credentials" in messages[0]
    for message in [record.getMessage() for record in caplog.records]:
        assert TOKEN not in message
        assert PASSWORD not in message
        assert "Bearer" not in message


def test_metrics_rejection_log_names_proxy(client, export, caplog):
    export(**PROXY)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        get(client, "10.0.0.2", **{"X-Forwarded-For": "192.0.2.7"})

    (message,) = own_messages(caplog)
    assert "from 192.0.2.7 (via proxy 10.0.0.2): client address is not in ALLOWED_NETWORKS" in message


def test_metrics_rejection_log_names_silent_proxy(client, export, caplog):
    export(**PROXY)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        get(client, "10.0.0.2")

    (message,) = own_messages(caplog)
    assert "from an unknown client (trusted proxy 10.0.0.2 sent no X-Forwarded-For header)" in message


def test_metrics_rejection_log_unmaps_ipv4_peer(client, export, caplog):
    export(**LOOPBACK)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        get(client, "::ffff:192.0.2.7")

    (message,) = own_messages(caplog)
    assert "from 192.0.2.7: client address" in message


def test_metrics_rejection_log_names_bad_remote_addr(client, export, caplog):
    export(**LOOPBACK)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        get(client, "not-an-address")

    (message,) = own_messages(caplog)
    assert "from an unknown client (REMOTE_ADDR 'not-an-address' is not an IP address)" in message


def test_metrics_rejection_log_is_rate_limited(client, export, caplog, fresh_rejection_log):
    export(**LOOPBACK)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        for _ in range(3):
            get(client, "192.0.2.7")
        fresh_rejection_log.now += 61
        get(client, "192.0.2.9")

    first, second = own_messages(caplog)
    assert "192.0.2.7" in first
    assert "not logged" not in first
    assert "192.0.2.9" in second
    assert second.endswith("ALLOWED_NETWORKS. 2 similar rejections were not logged since the last report.")


def test_metrics_rejection_log_separates_kinds(client, export, caplog):
    export(**LOOPBACK, **BEARER)

    with caplog.at_level(logging.WARNING, logger="channels_ws_metrics"):
        get(client, "192.0.2.7")
        get(client, "127.0.0.1")

    assert len(own_messages(caplog)) == 2


# -- the exposition -------------------------------------------------------------


def test_metrics_admitted_response_is_export_view_response(client, export, monkeypatch):
    real_view = exports.ExportToDjangoView
    returned = []

    def spy(request):
        response = real_view(request)
        returned.append(response)
        return response

    monkeypatch.setattr(exports, "ExportToDjangoView", spy)
    export(**LOOPBACK)

    response = get(client)

    (expected,) = returned
    assert response.content == expected.content
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert FAMILY in response.content


def test_metrics_multiprocess_mode_serves_files(client, export, monkeypatch, tmp_path):
    # A separate interpreter writes a counter file, as a worker in
    # multiprocess mode would. This process only reads the directory.
    writer = textwrap.dedent(
        """
        from prometheus_client import Counter
        Counter("django_websocket_connections", "", ["route"]).labels("ws/echo/").inc(3)
        """
    )
    subprocess.run(
        [sys.executable, "-c", writer],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": ""},
        check=True,
        timeout=60,
    )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    export(**LOOPBACK)

    response = get(client)

    assert response.status_code == 200
    assert b'django_websocket_connections_total{route="ws/echo/"} 3.0' in response.content


def test_metrics_bearer_rejects_when_secret_is_not_utf8(client, export, monkeypatch):
    export(**BEARER)
    # os.environ keeps bytes that are not UTF-8 as lone surrogates.
    monkeypatch.setenv("TEST_METRICS_TOKEN", "token\udcff")

    response = get(client, Authorization="Bearer tokenÿ")

    assert response.status_code == 401
