"""A ``/metrics`` view that serves django-prometheus's exposition only to admitted clients.

Route it in place of ``django_prometheus.urls``::

    path("metrics", channels_ws_metrics.views.metrics)

The rules come from ``CHANNELS_WS_METRICS['EXPORT']``, which the EXPORT
section of docs/configuration.md describes.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django_prometheus import exports

from . import conf
from .export import (
    ClientAddress,
    Credentials,
    ExportRules,
    RejectionLog,
    check_credentials,
    client_address,
    in_networks,
    read_secrets,
)

ALLOWED_METHODS = ("GET", "HEAD")

#: Rate-limits the rejection records. Tests replace it with a fresh instance.
log_rejection = RejectionLog()


# The view changes nothing and serves only GET and HEAD. Without the exemption,
# CsrfViewMiddleware would reject a POST with its own 403 page before the 405.
@csrf_exempt
def metrics(request: HttpRequest) -> HttpResponse:
    """Return django-prometheus's exposition if the request passes every ``EXPORT`` rule.

    Rejects other methods with 405, a client outside ``ALLOWED_NETWORKS``
    with 403, and a request without one valid configured credential with
    401 and a ``WWW-Authenticate`` challenge. Without ``EXPORT``, or when
    a configured secret variable is unset or empty, rejects every request
    with 403. Invalid settings raise ``ImproperlyConfigured``.
    """
    rules = conf.get_settings().export
    client = client_address(rules or ExportRules(), request.META)

    if request.method not in ALLOWED_METHODS:
        _log(logging.WARNING, "method", client, "method %s is not allowed", request.method)
        response = _rejection(405, "method not allowed")
        response["Allow"] = ", ".join(ALLOWED_METHODS)
        return response

    if rules is None:
        _log(
            logging.ERROR,
            "not configured",
            client,
            "CHANNELS_WS_METRICS['EXPORT'] is not set, so the guarded view rejects every request",
        )
        return _rejection(403, "metrics export is not configured")

    if rules.allowed_networks is not None and (
        client.address is None or not in_networks(client.address, rules.allowed_networks)
    ):
        _log(logging.WARNING, "network", client, "client address is not in ALLOWED_NETWORKS")
        return _rejection(403, "client address not allowed")

    if rules.requires_credentials:
        secrets, missing = read_secrets(rules)
        if missing:
            for name in missing:
                _log(
                    logging.ERROR,
                    f"unset {name}",
                    client,
                    "the environment variable %s named in CHANNELS_WS_METRICS['EXPORT'] is unset or empty",
                    name,
                )
            return _rejection(403, "metrics credentials are not configured on the server")

        outcome = check_credentials(rules, request.META.get("HTTP_AUTHORIZATION"), secrets)
        if outcome != Credentials.VALID:
            _log(logging.WARNING, outcome, client, "%s", outcome)
            response = _rejection(401, outcome)
            response["WWW-Authenticate"] = rules.challenge()
            return response

    # Looked up on the module at call time, so the registry choice (multiprocess
    # or not) stays django-prometheus's and tests can wrap the view.
    return exports.ExportToDjangoView(request)


def _rejection(status: int, reason: str) -> HttpResponse:
    # A short reason and nothing else: no metric data, no setting values.
    return HttpResponse(f"{reason}\n", status=status, content_type="text/plain; charset=utf-8")


def _log(level: int, kind: str, client: ClientAddress, reason: str, *args: object) -> None:
    # The client address is logged, the Authorization header and the secrets never are.
    message = "channels_ws_metrics: rejected a metrics request from %s: " + reason
    log_rejection(level, kind, message, client.describe(), *args)
