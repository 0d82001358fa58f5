"""A real, unmodified Django app (login with CSRF, sessions, a model form,
the admin) behind a two-node static cluster. Everything goes through the
replica; every write must be served by the primary's app."""

import re
import subprocess
import sys

import httpx
import pytest

from harness import INTEGRATION, start_static_cluster

DJANGO = INTEGRATION / "apps" / "django_app"


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


@pytest.fixture
def site(procs, tmp_path):
    env = {
        "APP_DB": str(tmp_path / "django.sqlite3"),
        "APP_SECRET_KEY": "the-same-secret-key-on-every-node-0123456789",
        "APP_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SUPERUSER_USERNAME": "ada",
        "DJANGO_SUPERUSER_PASSWORD": "correct horse battery staple",
        "DJANGO_SUPERUSER_EMAIL": "ada@example.com",
    }
    for command in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
        out = subprocess.run([sys.executable, "manage.py", *command], cwd=DJANGO, env={**env, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    apps = [
        procs.uvicorn(f"django-{i}", "notesite.asgi:application", DJANGO, env={**env, "APP_NODE": f"app-{i}"})[1]
        for i in (1, 2)
    ]
    return start_static_cluster(procs, apps)


def test_login_form_post_and_read_back_through_the_replica(site):
    primary, replica = site
    with httpx.Client(base_url=replica.url, timeout=30) as client:
        page = client.get("/accounts/login/")
        assert page.status_code == 200 and page.headers["litegate-served-by"] == "node-2"
        login = client.post(
            "/accounts/login/",
            data={"username": "ada", "password": "correct horse battery staple", "next": "/",
                  "csrfmiddlewaretoken": csrf_token(page.text)},
        )
        assert login.status_code == 302, login.text[:500]
        assert login.headers["location"] == "/"
        assert login.headers["litegate-served-by"] == "node-1", "the login (a write) must reach the primary"
        assert "sessionid" in client.cookies

        home = client.get("/")
        assert home.status_code == 200
        assert "Signed in as ada" in home.text and "rendered by app-2" in home.text

        added = client.post("/", data={"text": "written through a replica", "csrfmiddlewaretoken": csrf_token(home.text)})
        assert added.status_code == 302 and added.headers["litegate-served-by"] == "node-1"
        home = client.get("/")
        assert "written through a replica — written by app-1 (term 1)" in home.text

        admin = client.get("/admin/notes/note/")
        assert admin.status_code == 200 and "written through a replica" in admin.text

        # CSRF is enforced on the primary exactly as without litegate.
        forged = client.post("/", data={"text": "forged"})
        assert forged.status_code == 403
        assert "forged" not in client.get("/").text


def test_forwarded_headers_reach_django(site):
    _, replica = site
    who = httpx.get(f"{replica.url}/whoami/", headers={"X-Forwarded-Proto": "https"}).json()
    # The client is not a trusted proxy: its claim to https is replaced.
    assert who == {"node": "app-2", "user": None, "secure": False, "host": f"127.0.0.1:{replica.public_port}"}
