"""Resolve a connection's ``route`` label from the wrapped Channels router.

The label is the route pattern as declared in the ``URLRouter``, never the
raw path, so its values are bounded by the number of routes in the code.
"""

from __future__ import annotations

from typing import Any

from channels.routing import URLRouter

#: Label of a connection whose path no route matches.
UNMATCHED = "<unmatched>"

#: Label of every connection when the wrapped application contains no
#: ``URLRouter`` to take patterns from.
UNROUTED = "<unrouted>"

# Attributes through which ASGI middleware exposes the application it wraps:
# Channels' BaseMiddleware and its stacks use ``inner``, OriginValidator uses
# ``application``, Starlette-style middleware (and this package's) ``app``.
_WRAPPED_APP_ATTRIBUTES = ("inner", "application", "app")

# A bound on the walk, against wrappers whose attributes form a long chain.
_MAX_WRAPPER_DEPTH = 64


def find_url_router(application: Any) -> URLRouter | None:
    """Return the first ``URLRouter`` in a chain of wrapped applications."""
    seen: set[int] = set()
    current = application
    for _ in range(_MAX_WRAPPER_DEPTH):
        if isinstance(current, URLRouter):
            return current
        if current is None or id(current) in seen:
            return None
        seen.add(id(current))
        for attribute in _WRAPPED_APP_ATTRIBUTES:
            wrapped = getattr(current, attribute, None)
            if wrapped is not None:
                current = wrapped
                break
        else:
            return None
    return None


class RouteResolver:
    """Find the route pattern that a ``URLRouter`` would dispatch a scope to.

    Matching follows ``URLRouter.__call__``: the outermost router strips
    ``root_path``, leading slashes are removed, routes are tried in order,
    and a nested router that matches nothing lets the search go on with the
    next route. Nested patterns are concatenated, as Django does for
    ``include()``.
    """

    __slots__ = ("_router",)

    def __init__(self, application: Any) -> None:
        self._router = find_url_router(application)

    @property
    def has_router(self) -> bool:
        return self._router is not None

    def __call__(self, scope: dict[str, Any]) -> str:
        router = self._router
        if router is None:
            return UNROUTED

        path = scope.get("path_remaining")
        if path is None:
            path = scope.get("path")
            if not isinstance(path, str):
                return UNMATCHED
            root_path = scope.get("root_path") or ""
            if root_path:
                if not path.startswith(root_path):
                    return UNMATCHED
                path = path[len(root_path) :]
        elif not isinstance(path, str):
            return UNMATCHED

        label = _match(router, path.lstrip("/"), 0)
        return UNMATCHED if label is None else label


def _match(router: URLRouter, path: str, depth: int) -> str | None:
    if depth >= _MAX_WRAPPER_DEPTH:
        return None
    for route in router.routes:
        match = route.pattern.match(path)
        if not match:
            continue
        pattern = str(route.pattern)
        nested = find_url_router(route.callback)
        if nested is None:
            return pattern
        remaining = match[0]
        nested_label = _match(nested, remaining.lstrip("/"), depth + 1)
        if nested_label is not None:
            return pattern + nested_label
    return None
