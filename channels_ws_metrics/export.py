"""The rules of ``CHANNELS_WS_METRICS['EXPORT']`` and how a request is judged by them.

``conf`` validates the setting and builds an ``ExportRules`` from it, and
``views.metrics`` applies the rules to each request. Nothing here reads
Django settings, so the rules can be tested without them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .ratelimit import RateLimiter, suppressed_note

logger = logging.getLogger("channels_ws_metrics")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Realm sent in ``WWW-Authenticate`` challenges.
REALM = "metrics"


@dataclass(frozen=True)
class ExportRules:
    """Validated ``EXPORT`` rules. A rule set to ``None`` is not applied."""

    allowed_networks: tuple[IPNetwork, ...] | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    bearer_token_env: str | None = None
    basic_auth_username: str | None = None
    basic_auth_password_env: str | None = None

    @classmethod
    def from_setting(cls, raw: Mapping[str, Any]) -> ExportRules:
        """Build the rules from an ``EXPORT`` value that ``conf.validate()`` accepted."""
        allowed = raw.get("ALLOWED_NETWORKS")
        return cls(
            allowed_networks=None if allowed is None else parse_networks(allowed),
            trusted_proxies=parse_networks(raw.get("TRUSTED_PROXIES", ())),
            bearer_token_env=raw.get("BEARER_TOKEN_ENV"),
            basic_auth_username=raw.get("BASIC_AUTH_USERNAME"),
            basic_auth_password_env=raw.get("BASIC_AUTH_PASSWORD_ENV"),
        )

    @property
    def requires_credentials(self) -> bool:
        return self.bearer_token_env is not None or self.basic_auth_username is not None

    @property
    def secret_envs(self) -> tuple[str, ...]:
        """Names of the environment variables that hold the configured secrets."""
        names = (self.bearer_token_env, self.basic_auth_password_env)
        return tuple(name for name in names if name is not None)

    def challenge(self) -> str:
        """Return the ``WWW-Authenticate`` value naming every configured scheme."""
        schemes = []
        if self.bearer_token_env is not None:
            schemes.append(f'Bearer realm="{REALM}"')
        if self.basic_auth_username is not None:
            schemes.append(f'Basic realm="{REALM}", charset="UTF-8"')
        return ", ".join(schemes)


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    # strict=True rejects host bits, so '10.1.2.3/8' is a mistake rather than
    # a silent '10.0.0.0/8'.
    return tuple(ipaddress.ip_network(value, strict=True) for value in values)


def parse_address(value: str) -> IPAddress | None:
    """Return the address in ``value``, or ``None`` when it is not an IP address.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.7``), which dual-stack
    servers report for IPv4 clients, becomes the IPv4 address, so IPv4
    networks match it.
    """
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    # An IPv4 address is never "in" an IPv6 network: ipaddress compares
    # versions before bits and returns False.
    return any(address in network for network in networks)


@dataclass(frozen=True)
class ClientAddress:
    """The address a request is judged by, and how it was found."""

    #: ``None`` when no usable address was found. Network rules then reject the request.
    address: IPAddress | None
    #: ``REMOTE_ADDR`` as the server set it.
    peer: str
    #: Whether ``address`` was taken from ``X-Forwarded-For``.
    forwarded: bool = False
    #: Why ``address`` is ``None``, for the log.
    problem: str = ""

    def describe(self) -> str:
        """Describe the client for a log record."""
        if self.address is None:
            return f"an unknown client ({self.problem})"
        if self.forwarded:
            return f"{self.address} (via proxy {self.peer})"
        return str(self.address)


def client_address(rules: ExportRules, meta: Mapping[str, Any]) -> ClientAddress:
    """Return the client address of a request with WSGI/ASGI ``meta``.

    ``REMOTE_ADDR`` is the client unless it is inside ``TRUSTED_PROXIES``.
    Then ``X-Forwarded-For`` is read from the right, skipping addresses of
    trusted proxies, and the first other address is the client. Each proxy
    appends the address it received the request from, so entries left of
    that one were written by a host no rule vouches for. When every entry is
    a trusted proxy, the left-most one is the client.

    The address is unknown when a trusted proxy sends no ``X-Forwarded-For``,
    because a proxy that forgot to set it would otherwise make every client
    look like the proxy. It is also unknown when the search reaches an entry
    that is not an IP address (with a port, ``unknown``, an obfuscated name),
    because nothing left of that entry can be trusted either.
    """
    peer = str(meta.get("REMOTE_ADDR") or "")
    address = parse_address(peer)
    if address is None:
        return ClientAddress(None, peer, problem=f"REMOTE_ADDR {peer[:64]!r} is not an IP address")
    if not rules.trusted_proxies or not in_networks(address, rules.trusted_proxies):
        return ClientAddress(address, peer)

    # Servers join repeated headers with commas, so one split covers both forms.
    forwarded = [entry.strip() for entry in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [entry for entry in forwarded if entry]
    if not forwarded:
        problem = f"trusted proxy {peer} sent no X-Forwarded-For header"
        return ClientAddress(None, peer, forwarded=True, problem=problem)
    for entry in reversed(forwarded):
        hop = parse_address(entry)
        if hop is None:
            problem = f"X-Forwarded-For entry {entry[:64]!r} from proxy {peer} is not an IP address"
            return ClientAddress(None, peer, forwarded=True, problem=problem)
        address = hop
        if not in_networks(hop, rules.trusted_proxies):
            break
    return ClientAddress(address, peer, forwarded=True)


class Credentials:
    """Outcomes of ``check_credentials``. Each is also the reason sent to the client."""

    VALID = "valid credentials"
    MISSING = "credentials required"
    MALFORMED = "malformed Authorization header"
    UNSUPPORTED = "unsupported authorization scheme"
    INVALID = "invalid credentials"


def check_credentials(rules: ExportRules, header: str | None, secrets: Mapping[str, str]) -> str:
    """Check an ``Authorization`` header against the configured credentials.

    ``secrets`` maps each name in ``rules.secret_envs`` to its non-empty
    value. Returns one of the ``Credentials`` outcomes.
    """
    if not header:
        return Credentials.MISSING

    scheme, _, parameter = header.strip().partition(" ")
    parameter = parameter.strip()
    # Scheme names are case-insensitive (RFC 9110, section 11.1).
    scheme = scheme.lower()
    if scheme == "bearer" and rules.bearer_token_env is not None:
        if not parameter:
            return Credentials.MALFORMED
        expected = secrets[rules.bearer_token_env]
        return Credentials.VALID if _same_secret(parameter, expected) else Credentials.INVALID
    if (
        scheme == "basic"
        and rules.basic_auth_username is not None
        and rules.basic_auth_password_env is not None
    ):
        password = secrets[rules.basic_auth_password_env]
        return _check_basic(parameter, rules.basic_auth_username, password)
    return Credentials.UNSUPPORTED


def _check_basic(parameter: str, expected_username: str, expected_password: str) -> str:
    try:
        decoded = base64.b64decode(parameter.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        return Credentials.MALFORMED
    username, colon, password = decoded.partition(":")
    if not colon:
        return Credentials.MALFORMED

    # Both comparisons always run, so the time taken does not tell which part was wrong.
    username_ok = _same_secret(username, expected_username)
    password_ok = _same_secret(password, expected_password)
    return Credentials.VALID if username_ok & password_ok else Credentials.INVALID


def _same_secret(presented: str, expected: str) -> bool:
    # compare_digest takes time independent of the contents but may return
    # early on a length mismatch, so it compares fixed-size digests instead.
    # surrogateescape: os.environ keeps bytes that are not UTF-8 that way.
    presented_digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(presented_digest, expected_digest)


def read_secrets(
    rules: ExportRules, environ: Mapping[str, str] = os.environ
) -> tuple[dict[str, str], list[str]]:
    """Read the configured secrets from the environment at request time.

    Returns the values found and the names of the variables that are unset
    or empty. Reading on each request means that a variable missing in one
    worker's environment rejects the requests there instead of admitting them.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in rules.secret_envs:
        value = environ.get(name, "")
        if value:
            found[name] = value
        else:
            missing.append(name)
    return found, missing


class RejectionLog(RateLimiter):
    """Log a rejected request of each kind at most once per ``interval`` seconds.

    A scraper or a scanner retrying every few seconds shows up as one record
    a minute that states how many repeats it stands for. Kinds are chosen in
    this package or are configured variable names, never client data.
    """

    def __call__(self, level: int, kind: str, message: str, *args: Any) -> None:
        suppressed = self.admit(kind)
        if suppressed is None:
            return
        logger.log(level, message + ".%s", *args, suppressed_note(suppressed, "rejections"))
