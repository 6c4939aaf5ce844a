"""A URLconf that routes the guarded metrics view, for the view and check tests."""

from django.urls import path

from channels_ws_metrics import views

urlpatterns = [path("metrics", views.metrics)]
