"""Callables that tests name in CHANNELS_WS_METRICS['EXTRA_LABELS']."""

import time
from urllib.parse import parse_qs

NOT_CALLABLE = 42


def tenant(scope):
    """Return the ``tenant`` query parameter, or "none"."""
    values = parse_qs(scope.get("query_string", b"").decode()).get("tenant")
    return values[0] if values else "none"


async def async_tenant(scope):
    return tenant(scope)


def fixed(scope):
    return "eu"


def raises(scope):
    raise LookupError("no tenant")


def returns_int(scope):
    return 7


def slow(scope):
    # Longer than the label call timeout, shorter than a test's patience.
    time.sleep(0.5)
    return "late"
