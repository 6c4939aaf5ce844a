from django.urls import path

from example_project.chat.consumers import ChatConsumer, EchoConsumer, TestConsumer

websocket_urlpatterns = [
    path("ws/chat/<str:room_name>/", ChatConsumer.as_asgi()),
    path("ws/echo/", EchoConsumer.as_asgi()),
    path("ws/test/", TestConsumer.as_asgi()),
]
