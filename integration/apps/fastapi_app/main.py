"""An ordinary FastAPI app that knows nothing of litegate.

Notes in SQLite: JSON CRUD, an HTML form, a cookie login, a WebSocket and an
SSE stream. Each write records which node's app served it (APP_NODE) and the
fencing token the app saw, so tests can prove where writes landed.

Env: APP_DB (SQLite file, shared by instances in tests to stand in for
replication), APP_NODE (this instance's name), APP_WRITE_LOG (optional: a
file each note insert is appended to once committed, as a JSON line with
the CLOCK_MONOTONIC time, the text, this node and the fencing token; it
outlives a database that replication later replaces).
"""

import asyncio
import json
import os
import sqlite3
import time
from contextlib import closing

from fastapi import Cookie, FastAPI, Form, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel

DB = os.environ.get("APP_DB", "notes.sqlite3")
NODE = os.environ.get("APP_NODE", "local")
WRITE_LOG = os.environ.get("APP_WRITE_LOG")

app = FastAPI(title="notes")


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


with closing(db()) as _c:
    _c.execute(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL,"
        " author TEXT, served_by TEXT NOT NULL, term TEXT)"
    )
    _c.commit()


class NoteIn(BaseModel):
    text: str


def row(r: sqlite3.Row) -> dict:
    return dict(r)


def insert(text: str, author: str | None, request: Request) -> dict:
    with closing(db()) as c:
        cur = c.execute(
            "INSERT INTO notes (text, author, served_by, term) VALUES (?, ?, ?, ?)",
            (text, author, NODE, request.headers.get("litegate-term")),
        )
        c.commit()
        if WRITE_LOG:
            entry = {"t": time.monotonic(), "text": text, "node": NODE, "term": request.headers.get("litegate-term")}
            with open(WRITE_LOG, "a") as log:
                log.write(json.dumps(entry) + "\n")
        return row(c.execute("SELECT * FROM notes WHERE id = ?", (cur.lastrowid,)).fetchone())


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True, "node": NODE}


@app.get("/notes")
def list_notes() -> list[dict]:
    with closing(db()) as c:
        return [row(r) for r in c.execute("SELECT * FROM notes ORDER BY id")]


@app.get("/notes/{note_id}")
def get_note(note_id: int) -> dict:
    with closing(db()) as c:
        r = c.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
    if r is None:
        raise HTTPException(404, "no such note")
    return row(r)


@app.post("/notes", status_code=201)
def create_note(note: NoteIn, request: Request, user: str | None = Cookie(default=None)) -> dict:
    return insert(note.text, user, request)


@app.put("/notes/{note_id}")
def update_note(note_id: int, note: NoteIn, request: Request) -> dict:
    with closing(db()) as c:
        cur = c.execute(
            "UPDATE notes SET text = ?, served_by = ?, term = ? WHERE id = ?",
            (note.text, NODE, request.headers.get("litegate-term"), note_id),
        )
        c.commit()
        if cur.rowcount == 0:
            raise HTTPException(404, "no such note")
        return row(c.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone())


@app.delete("/notes/{note_id}", status_code=204)
def delete_note(note_id: int) -> Response:
    with closing(db()) as c:
        c.execute("DELETE FROM notes WHERE id = ?", (note_id,))
        c.commit()
    return Response(status_code=204)


@app.get("/", response_class=HTMLResponse)
def index(user: str | None = Cookie(default=None)) -> str:
    items = "".join(f"<li>{n['text']} ({n['served_by']})</li>" for n in list_notes())
    return (
        f"<h1>Notes</h1><p>user: {user or 'anonymous'}</p><ul>{items}</ul>"
        '<form method="post" action="/notes/form"><input name="text"><button>Add</button></form>'
    )


@app.post("/notes/form")
def create_from_form(request: Request, text: str = Form(...), user: str | None = Cookie(default=None)):
    insert(text, user, request)
    return RedirectResponse("/", status_code=303)


@app.post("/login")
def login(response: Response, name: str = Form(...)) -> dict:
    response.set_cookie("user", name, httponly=True, samesite="lax")
    response.set_cookie("theme", "dark")
    return {"user": name}


@app.get("/me")
def me(user: str | None = Cookie(default=None)) -> dict:
    return {"user": user, "node": NODE}


@app.websocket("/ws/echo")
async def ws_echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            text = await ws.receive_text()
            await ws.send_text(json.dumps({"echo": text, "node": NODE}))
    except WebSocketDisconnect:
        return


@app.get("/events")
async def events(count: int = 3) -> StreamingResponse:
    async def stream():
        for i in range(count):
            yield f"data: {json.dumps({'n': i, 'node': NODE})}\n\n".encode()
            await asyncio.sleep(0.05)

    return StreamingResponse(stream(), media_type="text/event-stream")
