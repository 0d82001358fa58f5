"""Settings for the example Django app. It knows nothing of litegate; what a
deployment behind a proxy must get right comes from the environment (see
docs/django.md):

- APP_SECRET_KEY: the same on every node (sessions and CSRF tokens made on one
  node are checked on another).
- APP_ALLOWED_HOSTS, APP_CSRF_TRUSTED_ORIGINS: comma-separated; the Host the
  client used reaches the app unchanged.
- APP_DB: the SQLite file; APP_NODE: this instance's name, recorded on writes.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("APP_SECRET_KEY", "dev-only-insecure-key-change-me")
DEBUG = os.environ.get("APP_DEBUG") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("APP_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("APP_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
# litegate sets X-Forwarded-Proto; trust it only because litegate is the one
# setting it (clients cannot reach the app directly).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

APP_NODE = os.environ.get("APP_NODE", "local")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "notesite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
ASGI_APPLICATION = "notesite.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("APP_DB", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {"timeout": 10},
    }
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
