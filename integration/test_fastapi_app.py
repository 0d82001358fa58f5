"""A real, unmodified FastAPI app under uvicorn behind `litegate dev`."""

import asyncio
import json

import httpx
import websockets

from harness import INTEGRATION, start_dev


def test_fastapi_form_json_and_cookies(procs, tmp_path):
    _, app = procs.uvicorn(
        "fastapi", "main:app", INTEGRATION / "apps" / "fastapi_app",
        env={"APP_DB": str(tmp_path / "notes.sqlite3"), "APP_NODE": "fastapi-1"},
    )
    node = start_dev(procs, app, name="gate-1")
    with httpx.Client(base_url=node.url, timeout=20) as client:
        login = client.post("/login", data={"name": "ada"})
        assert login.status_code == 200
        assert len(login.headers.get_list("set-cookie")) == 2
        assert client.cookies.get("user") == "ada"
        assert client.get("/me").json() == {"user": "ada", "node": "fastapi-1"}

        form = client.post("/notes/form", data={"text": "from a form"}, follow_redirects=False)
        assert form.status_code == 303 and form.headers["location"] == "/"
        page = client.get("/")
        assert "from a form" in page.text and "user: ada" in page.text

        created = client.post("/notes", json={"text": "json note"})
        assert created.status_code == 201
        note = created.json()
        assert note["author"] == "ada" and note["served_by"] == "fastapi-1" and note["term"] == "0"
        put = client.put(f"/notes/{note['id']}", json={"text": "edited"})
        assert put.status_code == 200 and put.json()["text"] == "edited"
        assert client.get(f"/notes/{note['id']}").json()["text"] == "edited"
        assert client.delete(f"/notes/{note['id']}").status_code == 204
        assert client.get(f"/notes/{note['id']}").status_code == 404
        assert client.put("/notes/999", json={"text": "x"}).status_code == 404

        events = []
        with client.stream("GET", "/events?count=3") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:])["n"])
        assert events == [0, 1, 2]

    async def ws():
        async with websockets.connect(f"ws://127.0.0.1:{node.public_port}/ws/echo", open_timeout=10) as sock:
            await sock.send("ping")
            return json.loads(await asyncio.wait_for(sock.recv(), 10))

    assert asyncio.run(ws()) == {"echo": "ping", "node": "fastapi-1"}
