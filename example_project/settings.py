"""Settings for the example Channels site that demonstrates channels_ws_metrics.

The site needs no service besides SQLite. Environment variables:

- ``DJANGO_DEBUG``: ``1`` (the default) or ``0``.
- ``DJANGO_SECRET_KEY``: replaces the insecure development key.
- ``EXAMPLE_DB_PATH``: path of the SQLite file, so tests can use a
  temporary one.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# The default key is public, so anything beyond a local demo must set
# DJANGO_SECRET_KEY.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY",
    "django-insecure-example-project-development-only-key",
)

DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"

# AllowedHostsOriginValidator also reads this list, so it decides which
# Origin headers a WebSocket handshake may carry.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

# "daphne" is not listed because the site is served with the daphne (or
# uvicorn) command, not with `manage.py runserver`.
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "channels",
    "django_prometheus",
    "channels_ws_metrics",
    "example_project.chat",
]

# django-prometheus times HTTP requests between the first and the last
# middleware, so these two wrap every other entry.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "example_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

ASGI_APPLICATION = "example_project.asgi.application"

# The in-memory layer only reaches consumers in the same process, which is
# enough for one daphne or uvicorn worker. Several workers need a shared
# layer such as channels_redis.
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
}

# channels_ws_metrics reads this dict on first use and again after
# override_settings changes it. An empty dict keeps every default, and an
# unknown key fails the system checks.
CHANNELS_WS_METRICS = {}

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB_PATH", BASE_DIR / "db.sqlite3"),
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
