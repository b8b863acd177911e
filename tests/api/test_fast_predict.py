"""The single predict's fast path (service/api/fast_predict.py): it answers exactly as the
view does, stores the same row, and hands every other request to Flask untouched."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from werkzeug.test import Client

from service.api.fast_predict import FastPredict, install
from service.config import Settings
from service.models import Case, Task
from service.observability import REQUESTS
from service.services import predict as predict_service
from tests.helpers import SIMPLE_TASK, auth, good_input, install_model, make_token

PATH = "/api/v1/tasks/loan-review/predict"
#: Differ between any two cases, whoever serves them.
PER_CASE_FIELDS = {"case_id", "created_at"}
PER_CASE_COLUMNS = {"id", "created_at", "updated_at", "resolved_at", "request_id"}


class CountingApp:
    """Flask behind the fast path, counting the requests handed to it."""

    def __init__(self, wsgi: Any) -> None:
        self.wsgi = wsgi
        self.calls = 0

    def __call__(self, environ: Any, start_response: Any) -> Any:
        self.calls += 1
        return self.wsgi(environ, start_response)


@pytest.fixture
def fast(app: Any) -> Iterator[FastPredict]:
    middleware = app.wsgi_app
    assert isinstance(middleware, FastPredict), "create_app installs the fast path by default"
    flask_wsgi = middleware.inner
    middleware.inner = CountingApp(flask_wsgi)
    try:
        yield middleware
    finally:
        middleware.inner = flask_wsgi


def send(wsgi: Any, token: str, body: Any, **headers: str) -> Any:
    return post(wsgi, PATH, json=body, headers={**auth(token), **headers})


def post(wsgi: Any, path: str, **kwargs: Any) -> Any:
    """POST, and note on the response whether Flask saw the request."""
    counter = wsgi.inner if isinstance(wsgi, FastPredict) else wsgi
    before = counter.calls
    headers = dict(kwargs.pop("headers", {}))
    cookie = headers.pop("Cookie", None)  # the test client keeps its own cookie jar
    if cookie is not None:
        kwargs["environ_overrides"] = {"HTTP_COOKIE": cookie}
    resp = Client(wsgi, use_cookies=cookie is None).post(path, headers=headers, **kwargs)
    resp.served_fast = counter.calls == before
    return resp


def served_fast(resp: Any) -> bool:
    return bool(resp.served_fast)


def stored_row(db: Any, case_id: int) -> dict[str, Any]:
    db.expire_all()
    case = db.get(Case, case_id)
    return {
        c.name: getattr(case, c.key)
        for c in Case.__table__.columns
        if c.name not in PER_CASE_COLUMNS
    }


def warm(fast: FastPredict, token: str) -> None:
    """The first call of a token and a task goes through Flask and fills both caches."""
    first = send(fast, token, {"input": good_input()})
    assert first.status_code in (200, 202) and not served_fast(first)


@pytest.mark.parametrize(
    "body",
    [
        {"input": good_input(review="paid on time")},  # auto-answered
        {"input": good_input(review="paid on time", state="NY", amount=3000.0, verified=None)},
        {"input": good_input(), "force_review": True, "external_id": "A-7"},
        {"input": {"review": "late twice", "state": "TX"}},  # optional fields absent
    ],
)
def test_answers_and_stores_as_the_view_does(fast, tokens, task, db, body):
    install_model(db, "loan-review", threshold=0.8)
    warm(fast, tokens["app"])
    by_fast = send(fast, tokens["app"], body, **{"X-Request-ID": "req-fast"})
    by_view = send(fast.inner, tokens["app"], body, **{"X-Request-ID": "req-view"})
    assert served_fast(by_fast) and not served_fast(by_view)
    assert by_fast.status == by_view.status
    assert by_fast.status_code in (200, 202)

    def headers(resp: Any) -> list[tuple[str, str]]:
        return [(k, v) for k, v in resp.headers.items() if k != "Content-Length"]

    # The same headers in the same order; only the request id differs.
    assert headers(by_fast) == [
        (k, "req-fast" if k == "X-Request-ID" else v) for k, v in headers(by_view)
    ]
    assert [k for k, _ in by_fast.headers.items()] == [k for k, _ in by_view.headers.items()]
    assert int(by_fast.headers["Content-Length"]) == len(by_fast.data)
    fast_json, view_json = by_fast.get_json(), by_view.get_json()
    assert {k: v for k, v in fast_json.items() if k not in PER_CASE_FIELDS} == {
        k: v for k, v in view_json.items() if k not in PER_CASE_FIELDS
    }
    assert by_fast.data.endswith(b"\n") and by_view.data.endswith(b"\n")
    fast_row, view_row = stored_row(db, fast_json["case_id"]), stored_row(db, view_json["case_id"])
    # The audit draw is a hash of the case id, the only routing input that differs; an
    # audited automatic answer waits for its check.
    for row, answer in ((fast_row, fast_json), (view_row, view_json)):
        audited, queue_state = row.pop("audit"), row.pop("queue_state")
        assert queue_state == ("waiting" if audited or answer["route"] != "auto" else None)
    assert fast_row == view_row
    assert db.get(Case, fast_json["case_id"]).request_id == "req-fast"


def test_a_request_id_the_view_would_refuse_is_replaced_the_same_way(fast, tokens, task, db):
    warm(fast, tokens["app"])
    resp = send(fast, tokens["app"], {"input": good_input()}, **{"X-Request-ID": "a\tb"})
    assert served_fast(resp)
    new_id = resp.headers["X-Request-ID"]
    assert len(new_id) == 16 and new_id != "a\tb"
    assert db.get(Case, resp.get_json()["case_id"]).request_id == new_id


def test_counts_the_request_in_the_metrics(fast, tokens, task, db):
    warm(fast, tokens["app"])
    rule = "/api/v1/tasks/<string:task>/predict"
    before = REQUESTS.labels(rule, "POST", "202")._value.get()
    resp = send(fast, tokens["app"], {"input": good_input()})
    assert served_fast(resp) and resp.status_code == 202
    assert REQUESTS.labels(rule, "POST", "202")._value.get() == before + 1


def test_https_requests_get_the_same_hsts_header_as_the_view(fast, tokens, task, db):
    warm(fast, tokens["app"])
    kwargs = {"json": {"input": good_input()}, "headers": auth(tokens["app"])}
    resp = post(fast, PATH, base_url="https://x", **kwargs)
    via_view = post(fast.inner, PATH, base_url="https://x", **kwargs)
    assert served_fast(resp)
    assert resp.headers.get("Strict-Transport-Security") == via_view.headers.get(
        "Strict-Transport-Security"
    )


def count_cases(db: Any) -> int:
    return db.scalar(select(func.count()).select_from(Case))


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"input": {"review": "x"}}, {}, 422),  # a required field missing
        ({"input": good_input(), "colour": "red"}, {}, 422),  # unknown envelope field
        ({"input": good_input(), "external_id": ""}, {}, 422),
        ({"input": good_input(review="\ud800")}, {}, 422),  # a lone surrogate
        ({"input": good_input(amount=float("nan"))}, {}, 422),  # orjson refuses NaN
        ({"input": good_input()}, {"Idempotency-Key": ""}, 422),
        ({"input": good_input()}, {"Idempotency-Key": "k" * 201}, 422),
        ({"input": good_input()}, {"Cookie": "session=abc"}, 202),  # sessions stay in Flask
    ],
)
def test_everything_else_is_served_by_the_view(fast, tokens, task, db, body, headers, status):
    warm(fast, tokens["app"])
    before = count_cases(db)
    resp = send(fast, tokens["app"], body, **headers)
    assert not served_fast(resp)
    assert resp.status_code == status, resp.get_json()
    assert count_cases(db) == before + (1 if status < 300 else 0)


def test_bodies_it_cannot_read_are_served_by_the_view(fast, tokens, task, db):
    warm(fast, tokens["app"])
    token = auth(tokens["app"])
    cases = [
        ({"data": b"{not json", "content_type": "application/json"}, 400),
        ({"data": b'{"input": {}}', "content_type": "text/plain"}, 415),
        ({"data": b"x" * (9 * 1024 * 1024), "content_type": "application/json"}, 413),
    ]
    for kwargs, status in cases:
        resp = post(fast, PATH, headers=token, **kwargs)
        assert resp.status_code == status and not served_fast(resp)
    assert count_cases(db) == 1


def test_callers_it_does_not_know_are_served_by_the_view(fast, tokens, task, db):
    warm(fast, tokens["app"])
    reviewer = send(fast, tokens["reviewer"], {"input": good_input()})
    assert reviewer.status_code == 403 and not served_fast(reviewer)
    # A token outside the task: cached on its first call, then refused by the view each time.
    other_task = {**SIMPLE_TASK, "name": "another-task"}
    assert (
        post(fast, "/api/v1/tasks", json=other_task, headers=auth(tokens["admin"])).status_code
        == 201
    )
    other = make_token("app", tasks=["another-task"])
    for _ in range(2):
        resp = send(fast, other, {"input": good_input()})
        assert resp.status_code == 403 and not served_fast(resp)
    unknown = post(
        fast, "/api/v1/tasks/no-such-task/predict", json={"input": {}}, headers=auth(tokens["app"])
    )
    assert unknown.status_code == 404 and not served_fast(unknown)
    revoked = send(fast, "not-a-token", {"input": good_input()})
    assert revoked.status_code == 401 and not served_fast(revoked)


def test_a_task_changed_meanwhile_is_routed_again_by_the_view(fast, tokens, task, db):
    warm(fast, tokens["app"])
    install_model(db, "loan-review", threshold=0.8)  # bumps the revision behind the cache
    db.commit()
    resp = send(fast, tokens["app"], {"input": good_input(review="paid on time")})
    assert not served_fast(resp)
    assert resp.status_code == 200 and resp.get_json()["model_version"] == 1
    assert count_cases(db) == 2
    again = send(fast, tokens["app"], {"input": good_input(review="paid on time")})
    assert served_fast(again) and again.get_json()["model_version"] == 1


def test_a_failed_insert_is_answered_by_the_view_and_never_retried(
    fast, tokens, task, db, monkeypatch
):
    warm(fast, tokens["app"])
    calls: list[int] = []

    def failing_store(*_args: Any, **_kwargs: Any) -> bool:
        calls.append(1)
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(predict_service, "store_one", failing_store)
    resp = send(fast, tokens["app"], {"input": good_input()})
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "unavailable"
    assert calls == [1]  # the view raised the fast path's error instead of storing again
    assert count_cases(db) == 1


def test_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.setenv("TANDEM_PREDICT_FAST_PATH", "0")
    settings = Settings.from_env()
    assert settings.predict_fast_path is False
    app = SimpleNamespace(config={"TANDEM": settings}, wsgi_app="flask")
    install(app)  # type: ignore[arg-type]
    assert app.wsgi_app == "flask"
    monkeypatch.setenv("TANDEM_PREDICT_FAST_PATH", "yes")
    with pytest.raises(ValueError, match="TANDEM_PREDICT_FAST_PATH must be 0 or 1"):
        Settings.from_env()


def terminate(engine: Any, pids: list[int]) -> None:
    """Close these backends as a server restart does, and wait until they are gone. From a
    connection of its own, outside the pool: a pooled one may be among those it closes."""
    outside = create_engine(engine.url, poolclass=NullPool)
    with outside.connect() as conn:
        for pid in pids:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%(pids)s)", {"pids": pids}
            ).scalar()
            if not alive:
                break
            time.sleep(0.05)
    outside.dispose()
    time.sleep(0.1)  # the FATAL message and the end of file reach the client


def served_twice(committed_db: Any, flask_app: Any) -> tuple[Any, Any, str, dict[str, Any]]:
    """A task and two predicts on committed data: the first fills the caches, the second is
    served in front of Flask. (engine, client, admin token, the predict's request)."""
    engine = committed_db.get_bind()
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    assert client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(admin)).status_code == 201
    body = {"json": {"input": good_input()}, "headers": auth(app_token)}
    for _ in range(2):
        assert client.post(PATH, **body).status_code == 202
    return engine, client, admin, body


def test_connections_the_server_closed_cost_no_request(backend, committed_db, flask_app):
    """A database restart closes the thread's own autocommit connection and the pooled ones:
    both are found closed before use (no round trip), renewed, and no request fails."""
    if backend != "postgresql":
        pytest.skip("SQLite has no server connection to lose")
    from service.db import thread_autocommit_connection

    engine, client, admin, body = served_twice(committed_db, flask_app)
    own = thread_autocommit_connection(engine)
    with engine.connect() as conn:
        pooled = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
    assert own.info.backend_pid in pooled
    terminate(engine, pooled)
    assert client.post(PATH, **body).status_code == 202  # the fast path, on a new connection
    assert thread_autocommit_connection(engine) is not own
    reads = client.get("/api/v1/tasks/loan-review", headers=auth(admin))  # the pool
    assert reads.status_code == 200
    assert count_cases(committed_db) == 3


def test_an_insert_on_a_connection_lost_meanwhile_is_answered_503_once(
    backend, committed_db, flask_app, monkeypatch
):
    """When the connection dies between the check and the INSERT, the request gets the
    view's 503 (never a second INSERT), and the next one a fresh connection."""
    if backend != "postgresql":
        pytest.skip("SQLite has no server connection to lose")
    from service import db as db_module
    from service.db import thread_autocommit_connection
    from service.services import accounts

    # The token stays cached however long the termination takes: past the cache's 5 s (a
    # loaded CI machine), Flask served the request on a pooled connection instead, 202.
    monkeypatch.setattr(accounts, "TOKEN_CACHE_SECONDS", 3600.0)
    engine, client, _, body = served_twice(committed_db, flask_app)
    own = thread_autocommit_connection(engine)
    terminate(engine, [own.info.backend_pid])
    monkeypatch.setattr(db_module, "closed_by_server", lambda _conn: False)  # too late to see
    lost = client.post(PATH, **body)
    assert lost.status_code == 503 and lost.get_json()["error"]["code"] == "unavailable"
    monkeypatch.undo()
    assert client.post(PATH, **body).status_code == 202
    assert thread_autocommit_connection(engine) is not own
    assert count_cases(committed_db) == 3


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["CA", "NY", "paid on time", "", "\x00", "\ud800", "é"]),
    st.lists(st.integers(), max_size=2),
)
envelopes = st.fixed_dictionaries(
    {
        "input": st.one_of(
            st.fixed_dictionaries(
                {"review": values, "state": values},
                optional={"amount": values, "verified": values, "other": values},
            ),
            values,
        )
    },
    optional={"external_id": values, "force_review": values, "colour": values},
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=envelopes)
def test_any_body_gets_the_same_answer_both_ways(fast, tokens, task, db, body):
    """Whatever the body, the fast path and the view answer alike (the fast path serving it
    or not): same status, same headers in the same order, same body but the case's id/time."""
    if db.scalar(select(Task.active_model_id)) is None:  # once: examples share the fixtures
        install_model(db, "loan-review", threshold=0.8)
        warm(fast, tokens["app"])
    answers = [
        send(wsgi, tokens["app"], body, **{"X-Request-ID": "same"}) for wsgi in (fast, fast.inner)
    ]
    by_fast, by_view = answers
    assert by_fast.status == by_view.status
    assert list(by_fast.headers.items()) == [
        (k, by_fast.headers["Content-Length"] if k == "Content-Length" else v)
        for k, v in by_view.headers.items()
    ]
    fast_json, view_json = by_fast.get_json(), by_view.get_json()
    if by_fast.status_code < 300:
        for answer in (fast_json, view_json):
            answer.pop("case_id"), answer.pop("created_at")
    assert fast_json == view_json


def test_a_forked_child_never_uses_its_parents_connection(backend, committed_db):
    """A child forked after a thread opened its own connection opens another, and the
    parent's stays usable (nothing of the child's touched its socket)."""
    if backend != "postgresql":
        pytest.skip("SQLite has no server connection")
    from service.db import thread_autocommit_connection

    engine = committed_db.get_bind()
    parent = thread_autocommit_connection(engine)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any finaliser
        try:
            engine.dispose(close=False)  # as RQ's work horses do with the pool
            child = thread_autocommit_connection(engine)
            ok = child is not parent and child.execute("SELECT 1").fetchone() == (1,)
            os.write(writer, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    with os.fdopen(reader, "rb") as answer:
        assert answer.read() == b"1"
    assert thread_autocommit_connection(engine) is parent
    assert parent.execute("SELECT 1").fetchone() == (1,)


def test_a_new_key_is_stored_by_the_fast_path_and_a_used_one_answered_by_the_view(
    fast, tokens, task, db
):
    warm(fast, tokens["app"])
    body = {"input": good_input(), "external_id": "K-1"}
    first = send(fast, tokens["app"], body, **{"Idempotency-Key": "key-1"})
    assert served_fast(first) and first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    case = db.get(Case, first.get_json()["case_id"])
    assert (case.idempotency_key, case.request_hash) == (
        "key-1",
        predict_service.request_hash(body),
    )
    replay = send(fast, tokens["app"], body, **{"Idempotency-Key": "key-1"})
    assert not served_fast(replay) and replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    other = send(
        fast, tokens["app"], {"input": good_input(state="NY")}, **{"Idempotency-Key": "key-1"}
    )
    assert not served_fast(other) and other.status_code == 409
    assert count_cases(db) == 2  # the warm-up's and key-1's
    # A new key through the view stores the same row as through the fast path.
    by_view = send(fast.inner, tokens["app"], body, **{"Idempotency-Key": "key-2"})
    assert by_view.status_code == 202 and "Idempotent-Replayed" not in by_view.headers
    assert db.get(Case, by_view.get_json()["case_id"]).request_hash == case.request_hash
