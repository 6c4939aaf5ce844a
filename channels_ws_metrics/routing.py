"""Resolve a connection's ``route`` label from the wrapped Channels router.

The label is the route pattern as declared in the ``URLRouter``, never the
raw path, so its values are bounded by the number of routes in the code.
"""

from __future__ import annotations

from typing import Any

from channels.routing import URLRouter
from django.urls import converters as django_converters
from django.urls.resolvers import RegexPattern, RoutePattern

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

# Bounds of the cache of labels by path: paths come from clients, so the
# cache keeps only short ones and starts over when it is full. At most
# about 1,024 x 256 characters, some 300 KiB.
PATH_CACHE_MAX_ENTRIES = 1024
PATH_CACHE_MAX_LENGTH = 256

# Converters whose to_python() accepts every string their regex matches, so
# a regex match alone decides whether the route matches.
_TOTAL_CONVERTERS = (
    django_converters.IntConverter,
    django_converters.StringConverter,
    django_converters.UUIDConverter,
    django_converters.SlugConverter,
    django_converters.PathConverter,
)


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


class _Route:
    """One route of a router, with its label and the router it leads to, if any."""

    __slots__ = ("pattern", "search", "prefix", "label", "nested")

    def __init__(self, pattern: Any, nested: list[_Route] | None) -> None:
        self.pattern = pattern
        self.search = _regex_search(pattern)
        self.prefix = _literal_prefix(pattern)
        self.label = str(pattern)
        self.nested = nested

    def remainder(self, path: str) -> str | None:
        """Return the rest of ``path`` after this route's pattern, or None."""
        search = self.search
        if search is None:
            match = self.pattern.match(path)
            return match[0] if match else None
        found = search(path)
        return path[found.end() :] if found else None


def _regex_search(pattern: Any) -> Any:
    """Return the regex method that decides ``pattern.match()``, when one does.

    ``pattern.match()`` also builds the view's arguments, which labelling does
    not need. Patterns whose outcome depends on more than the regex (custom
    converters, translated routes) return None and go through
    ``pattern.match()``.
    """
    if isinstance(pattern, RoutePattern):
        if not isinstance(pattern._route, str):
            return None
        # Exact types: a subclass may reject more in to_python().
        if not all(type(converter) in _TOTAL_CONVERTERS for converter in pattern.converters.values()):
            return None
        return pattern.regex.search
    if isinstance(pattern, RegexPattern) and isinstance(pattern._regex, str):
        regex = pattern.regex
        if pattern._is_endpoint and regex.pattern.endswith("$"):
            return regex.fullmatch
        return regex.search
    return None


_REGEX_SPECIAL = frozenset("\\.^$*+?{}[]|()")
_QUANTIFIERS = frozenset("*?{")


def _literal_prefix(pattern: Any) -> str:
    """Return text that every path this pattern matches starts with ("" if unknown)."""
    if isinstance(pattern, RoutePattern) and isinstance(pattern._route, str):
        return pattern._route.partition("<")[0]
    if not isinstance(pattern, RegexPattern) or not isinstance(pattern._regex, str):
        return ""

    regex = pattern._regex
    # Without the anchor, search() may match anywhere in the path, and an
    # alternative may start with anything.
    if not regex.startswith("^") or "|" in regex:
        return ""
    prefix = []
    for character in regex[1:]:
        if character in _QUANTIFIERS:
            # The quantifier applies to the last character, which may then
            # be absent or repeated.
            if prefix:
                prefix.pop()
            break
        if character in _REGEX_SPECIAL:
            break
        prefix.append(character)
    return "".join(prefix)


def _routes_of(router: URLRouter, depth: int = 0) -> list[_Route]:
    # Walked once, when the middleware is built, so connections pay only for
    # the pattern matches.
    routes = []
    for route in router.routes:
        nested_router = find_url_router(route.callback)
        nested = None
        if nested_router is not None and depth < _MAX_WRAPPER_DEPTH:
            nested = _routes_of(nested_router, depth + 1)
        routes.append(_Route(route.pattern, nested))
    return routes


class RouteResolver:
    """Find the route pattern that a ``URLRouter`` would dispatch a scope to.

    Matching follows ``URLRouter.__call__``: the outermost router strips
    ``root_path``, leading slashes are removed, routes are tried in order,
    and a nested router that matches nothing lets the search go on with the
    next route. Nested patterns are concatenated, as Django does for
    ``include()``. The routers are read when the resolver is built, so
    routes added to a router afterwards are not seen.

    Labels are cached by path when every route is decided by its regex
    alone, the usual case, because matching costs more than the rest of a
    connection's setup. A custom converter or a translated route turns the
    cache off, since its outcome may change over time or with the language.
    """

    __slots__ = ("_routes", "_cache")

    def __init__(self, application: Any) -> None:
        router = find_url_router(application)
        self._routes = None if router is None else _routes_of(router)
        self._cache: dict[str, str] | None = None
        if self._routes is not None and _decided_by_regex(self._routes):
            self._cache = {}

    @property
    def has_router(self) -> bool:
        return self._routes is not None

    def __call__(self, scope: dict[str, Any]) -> str:
        routes = self._routes
        if routes is None:
            return UNROUTED

        path = scope.get("path_remaining")
        if path is None:
            path = scope.get("path")
            if not isinstance(path, str):
                return UNMATCHED
            root_path = scope.get("root_path")
            if root_path:
                if not path.startswith(root_path):
                    return UNMATCHED
                path = path[len(root_path) :]
        elif not isinstance(path, str):
            return UNMATCHED

        cache = self._cache
        if cache is not None:
            label = cache.get(path)
            if label is not None:
                return label

        label = _match(routes, path.lstrip("/"))
        if label is None:
            label = UNMATCHED
        if cache is not None and len(path) <= PATH_CACHE_MAX_LENGTH:
            if len(cache) >= PATH_CACHE_MAX_ENTRIES:
                cache.clear()
            cache[path] = label
        return label


def _decided_by_regex(routes: list[_Route]) -> bool:
    return all(
        route.search is not None and (route.nested is None or _decided_by_regex(route.nested)) for route in routes
    )


def _match(routes: list[_Route], path: str) -> str | None:
    for route in routes:
        # A string comparison, inline, rules out most routes of a large
        # router before any call or regex.
        if not path.startswith(route.prefix):
            continue
        remaining = route.remainder(path)
        if remaining is None:
            continue
        if route.nested is None:
            return route.label
        nested_label = _match(route.nested, remaining.lstrip("/"))
        if nested_label is not None:
            return route.label + nested_label
    return None
