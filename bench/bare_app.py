"""The limits the web benchmarks compare Tandem against (issue #20): what the same server
does with nothing but the unavoidable work of a request.

* ``wsgi_app``: a bare WSGI callable: parse the JSON body, commit one INSERT of it
  (psycopg, one connection per request thread), answer a small JSON object. The request-rate
  limit in bench/throughput.py.
* ``flask_app``: the same request through Flask and a SQLAlchemy engine, importing only what
  Tandem's serving path needs (Flask, SQLAlchemy + psycopg, NumPy for the compiled predictor,
  redis): the memory limit in bench/memory.py.

Both write to the table ``bare_requests`` of ``DATABASE_URL`` (created when missing). Run
under granian like ``tandem serve``:
``granian --interface wsgi --workers 2 --blocking-threads 4 bench.bare_app:wsgi_app``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

DSN = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
CREATE = "CREATE TABLE IF NOT EXISTS bare_requests (id bigserial PRIMARY KEY, body jsonb)"
INSERT = "INSERT INTO bare_requests (body) VALUES (%s) RETURNING id"

# granian imports this in each of its workers at once, and two concurrent CREATE TABLE IF NOT
# EXISTS can both try to create the table: one creates it under an advisory lock.
with psycopg.connect(DSN) as _conn, _conn.transaction():
    _conn.execute("SELECT pg_advisory_xact_lock(4242)")
    _conn.execute(CREATE)

_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DSN)
    return conn


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] != "POST":  # the benchmarks' readiness probe
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(size))
    conn = _connection()
    with conn.cursor() as cur:
        cur.execute(INSERT, (json.dumps(body["input"]),))
        row = cur.fetchone()
    conn.commit()
    out = json.dumps({"id": row[0] if row else None}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [out]


def _flask() -> Any:
    import numpy  # noqa: F401  (the compiled predictor's one dependency)
    import redis  # noqa: F401  (rate limits, queues)
    from flask import Flask, jsonify, request
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["DATABASE_URL"], pool_size=4)
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Any:
        body = request.get_json()
        with engine.begin() as conn:
            new_id = conn.execute(
                text("INSERT INTO bare_requests (body) VALUES (CAST(:b AS jsonb)) RETURNING id"),
                {"b": json.dumps(body["input"])},
            ).scalar()
        return jsonify({"id": new_id})

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True}

    return app


flask_app = _flask() if os.environ.get("BARE_FLASK") == "1" else None
