from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    # django_prometheus.urls serves the exposition at /metrics.
    path("", include("django_prometheus.urls")),
    path("", TemplateView.as_view(template_name="chat/index.html"), name="chat"),
]
