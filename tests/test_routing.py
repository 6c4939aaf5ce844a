import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path, re_path, register_converter

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.routing import (
    PATH_CACHE_MAX_ENTRIES,
    PATH_CACHE_MAX_LENGTH,
    UNMATCHED,
    UNROUTED,
    RouteResolver,
    _literal_prefix,
    find_url_router,
)

from .asgi_apps import EchoConsumer, router

consumer = EchoConsumer.as_asgi()


def resolve(application, path_, **scope):
    return RouteResolver(application)({"type": "websocket", "path": path_, **scope})


def test_route_resolver_returns_path_template():
    assert resolve(router(), "/ws/chat/lobby/") == "ws/chat/<str:room_name>/"


def test_route_resolver_returns_re_path_regex():
    assert resolve(router(), "/ws/legacy/42/") == r"^ws/legacy/(?P<id>\d+)/$"


def test_route_resolver_returns_unmatched_for_unknown_path():
    assert resolve(router(), "/ws/unknown/") == UNMATCHED


def test_route_resolver_ignores_query_string():
    assert resolve(router(), "/ws/echo/", query_string=b"token=abc") == "ws/echo/"


def test_route_resolver_concatenates_nested_routers():
    application = URLRouter([path("api/", URLRouter([path("v1/<int:id>/", consumer)]))])

    assert resolve(application, "/api/v1/7/") == "api/v1/<int:id>/"


def test_route_resolver_falls_through_nested_router_without_match():
    application = URLRouter(
        [
            path("api/", URLRouter([path("v1/", consumer)])),
            re_path(r"^api/(?P<rest>.*)$", consumer),
        ]
    )

    assert resolve(application, "/api/v2/") == r"^api/(?P<rest>.*)$"


def test_route_resolver_strips_root_path():
    assert resolve(router(), "/prefix/ws/echo/", root_path="/prefix") == "ws/echo/"


def test_route_resolver_rejects_path_outside_root_path():
    assert resolve(router(), "/other/ws/echo/", root_path="/prefix") == UNMATCHED


def test_route_resolver_handles_missing_path():
    assert RouteResolver(router())({"type": "websocket"}) == UNMATCHED


def test_route_resolver_returns_unrouted_without_router():
    assert resolve(consumer, "/ws/echo/") == UNROUTED


def test_find_url_router_walks_channels_middleware():
    inner = router()
    application = WebSocketMetricsMiddleware(
        AllowedHostsOriginValidator(AuthMiddlewareStack(inner)), metrics=object()
    )

    assert find_url_router(application) is inner


def test_find_url_router_stops_on_cycle():
    class Loop:
        pass

    loop = Loop()
    loop.inner = loop

    assert find_url_router(loop) is None


@pytest.mark.parametrize("attribute", ["inner", "application", "app"])
def test_find_url_router_follows_wrapper_attribute(attribute):
    class Wrapper:
        pass

    inner = router()
    wrapper = Wrapper()
    setattr(wrapper, attribute, inner)

    assert find_url_router(wrapper) is inner


class EvenConverter:
    regex = "[0-9]+"

    def to_python(self, value):
        if int(value) % 2:
            raise ValueError("odd")
        return int(value)

    def to_url(self, value):
        return str(value)


register_converter(EvenConverter, "even")


def test_route_resolver_applies_custom_converter():
    application = URLRouter(
        [
            path("ws/item/<even:id>/", consumer),
            path("ws/item/<int:id>/", consumer),
        ]
    )

    assert resolve(application, "/ws/item/4/") == "ws/item/<even:id>/"
    assert resolve(application, "/ws/item/5/") == "ws/item/<int:id>/"


def test_route_resolver_custom_converter_turns_cache_off():
    resolver = RouteResolver(URLRouter([path("ws/item/<even:id>/", consumer)]))

    assert resolver({"type": "websocket", "path": "/ws/item/4/"}) == "ws/item/<even:id>/"
    assert resolver._cache is None


def test_route_resolver_caches_label_by_path():
    resolver = RouteResolver(router())
    scope = {"type": "websocket", "path": "/ws/chat/lobby/"}

    first = resolver(scope)
    second = resolver(scope)

    assert first == second == "ws/chat/<str:room_name>/"
    assert resolver._cache == {"/ws/chat/lobby/": "ws/chat/<str:room_name>/"}


def test_route_resolver_caches_unmatched_path():
    resolver = RouteResolver(router())

    assert resolver({"type": "websocket", "path": "/nowhere/"}) == UNMATCHED
    assert resolver._cache == {"/nowhere/": UNMATCHED}


def test_route_resolver_cache_skips_long_path():
    resolver = RouteResolver(router())
    long_room = "r" * PATH_CACHE_MAX_LENGTH

    assert resolver({"type": "websocket", "path": f"/ws/chat/{long_room}/"}) == "ws/chat/<str:room_name>/"
    assert resolver._cache == {}


def test_route_resolver_cache_starts_over_when_full():
    resolver = RouteResolver(router())
    for number in range(PATH_CACHE_MAX_ENTRIES):
        resolver({"type": "websocket", "path": f"/ws/chat/room{number}/"})
    assert len(resolver._cache) == PATH_CACHE_MAX_ENTRIES

    label = resolver({"type": "websocket", "path": "/ws/echo/"})

    assert label == "ws/echo/"
    assert resolver._cache == {"/ws/echo/": "ws/echo/"}


def test_route_resolver_cache_keys_path_after_root_path():
    resolver = RouteResolver(router())

    assert resolver({"type": "websocket", "path": "/app/ws/echo/", "root_path": "/app"}) == "ws/echo/"
    assert resolver({"type": "websocket", "path": "/app/ws/echo/"}) == UNMATCHED


class Recorder:
    """An endpoint that stores the label of the route that reached it."""

    def __init__(self, label):
        self.label = label

    async def __call__(self, scope, receive, send):
        scope["reached"].append(self.label)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path_",
    [
        "/ws/a/",
        "/ws/a",
        "ws/a/",
        "//ws/a/",
        "/ws/b/12/",
        "/ws/b/x/",
        "/ws/c/anything/at/all/",
        "/ws/d/v1/3/",
        "/ws/d/v2/",
        "/ws/d/v1/odd/",
        "/ws/e/7/",
        "/ws/e/8/",
        "/ws/f/ab-c/",
        "/ws/f/ab c/",
        "/ws/g/12345678-1234-5678-1234-567812345678/",
        "/ws/nowhere/",
        "/api/h/",
        "/ws/h/",
    ],
)
async def test_route_resolver_agrees_with_url_router(path_):
    routes = [
        ("ws/a/", path),
        ("ws/b/<int:n>/", path),
        ("ws/c/<path:rest>", path),
        (r"^ws/e/(?P<n>[0-9]*[02468])/$", re_path),
        ("ws/f/<slug:s>/", path),
        ("ws/g/<uuid:u>/", path),
        (r"^ws/h/$|^api/h/$", re_path),
    ]
    patterns = [make(route, Recorder(route)) for route, make in routes]
    nested = URLRouter([path("v1/<even:n>/", Recorder("v1/<even:n>/")), re_path(r"^v2/$", Recorder("^v2/$"))])
    patterns.insert(3, path("ws/d/", nested))
    patterns.append(re_path(r"^ws/d/(?P<rest>.*)$", Recorder(r"^ws/d/(?P<rest>.*)$")))
    application = URLRouter(patterns)

    reached = []
    try:
        await application({"type": "websocket", "path": path_, "reached": reached}, None, None)
    except ValueError:
        pass
    expected = reached[0] if reached else UNMATCHED
    if expected != UNMATCHED and expected in ("v1/<even:n>/", "^v2/$"):
        expected = "ws/d/" + expected

    assert resolve(application, path_) == expected


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        (path("ws/chat/<str:room>/", consumer), "ws/chat/"),
        (path("ws/echo/", consumer), "ws/echo/"),
        (path("<str:room>/", consumer), ""),
        (re_path(r"^ws/legacy/(?P<id>\d+)/$", consumer), "ws/legacy/"),
        (re_path(r"^ws/a?b/$", consumer), "ws/"),
        (re_path(r"^ws/ab*/$", consumer), "ws/a"),
        (re_path(r"^ws/x{2}/$", consumer), "ws/"),
        (re_path(r"^ws\.v1/$", consumer), "ws"),
        (re_path(r"^(?i)ws/$", consumer), ""),
        (re_path(r"^ws|api/$", consumer), ""),
        (re_path(r"ws/echo/$", consumer), ""),
    ],
)
def test_literal_prefix_is_a_safe_lower_bound(pattern, prefix):
    assert _literal_prefix(pattern.pattern) == prefix
