"""Rules that map a WebSocket close code to a bounded ``code`` label value."""

from __future__ import annotations

from collections.abc import Iterable

#: Code recorded when a ``websocket.disconnect`` carries no code (RFC 6455:
#: "no status code was actually present").
NO_STATUS_CODE = 1005

#: Code recorded when the application sends ``websocket.close`` without one,
#: which is the ASGI default.
DEFAULT_CLOSE_CODE = 1000

#: Code recorded when an exception escapes the application after accept.
INTERNAL_ERROR_CODE = 1011

# RFC 6455 and the IANA registry assign 1000-1015; they keep their own value.
_PROTOCOL_CODES = range(1000, 1016)


class CloseCodeLabels:
    """Map close codes to label values, keeping chosen application codes.

    Codes 1000-1015 are kept verbatim, other codes in 3000-3999 become
    ``3xxx``, other codes in 4000-4999 become ``4xxx``, and anything else,
    including values that are not integers, becomes ``other``. Codes in
    ``keep`` (3000-4999) are kept verbatim as well.
    """

    __slots__ = ("_labels",)

    def __init__(self, keep: Iterable[int] = ()) -> None:
        labels = {code: str(code) for code in _PROTOCOL_CODES}
        for code in keep:
            labels[code] = str(code)
        self._labels = labels

    def __call__(self, code: object) -> str:
        try:
            label = self._labels.get(code)  # type: ignore[call-overload]
        except TypeError:  # an unhashable value from a misbehaving server
            return "other"
        if label is not None:
            return label
        if type(code) is int:
            if 3000 <= code <= 3999:
                return "3xxx"
            if 4000 <= code <= 4999:
                return "4xxx"
        return "other"
