"""Login rate limit, session expiry and cookie flags, security headers and CSP, skops-only
model loading, no pickle, append-only audit log (ORM and database), token revocation."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from skops.io.exceptions import UntrustedTypesFoundException
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from service.ml.artifacts import load_model
from service.models import AuditEvent
from service.security import STRICT_CSP, AuditLogIsAppendOnly
from service.services import audit
from service.services.audit import SYSTEM
from tests.helpers import auth

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


def make_user(email: str, role: str = "reviewer", scope: list[str] | None = None) -> None:
    from service.services.accounts import create_user
    from service.uow import unit_of_work

    with unit_of_work() as session:
        create_user(
            session, email=email, password=PASSWORD, role=role, task_scope=scope, actor=SYSTEM
        )


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return client.post("/login", data={"email": email, "password": password})


@pytest.fixture
def no_csrf(flask_app: Any) -> Any:
    flask_app.config["WTF_CSRF_ENABLED"] = False
    yield
    flask_app.config["WTF_CSRF_ENABLED"] = True


# ------------------------------------------------------------------------ login limit


def test_login_is_rate_limited_per_address_and_email(
    client: Any, redis_conn: Any, no_csrf: Any
) -> None:
    make_user("victim@example.com")
    for _ in range(10):
        assert login(client, "victim@example.com", "wrong-password").status_code == 401
    blocked = login(client, "victim@example.com", PASSWORD)
    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"]
    # Another account from the same address and the same account from elsewhere still work.
    assert login(client, "other@example.com", "nope-nope").status_code == 401
    elsewhere = client.post(
        "/login",
        data={"email": "victim@example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert elsewhere.status_code == 302
    # Showing the form is never limited.
    assert client.get("/login").status_code in (200, 302)


def test_limiter_tolerates_missing_login_endpoint(settings: Any, flask_app: Any) -> None:
    from flask import Flask

    from service import security

    bare = Flask("bare")
    bare.config["TANDEM"] = settings
    from service import redis_conn

    redis_conn.init_app(bare)
    assert (
        security._apply_login_limit(bare, security.Limiter(key_func=lambda: "x", app=bare)) is False
    )
    assert security._apply_login_limit(flask_app, flask_app.extensions["tandem_limiter"]) is True


# -------------------------------------------------------------------------- sessions


def test_session_cookie_is_permanent_httponly_samesite(
    settings: Any, db: Any, redis_conn: Any
) -> None:
    from dataclasses import replace

    from service.db import SessionFactory
    from tandem.app import create_app

    bind = SessionFactory.kw.get("bind")
    secure_app = create_app(replace(settings, session_cookie_secure=True))
    SessionFactory.configure(bind=bind)  # keep this test inside the rolled-back transaction
    secure_app.config["WTF_CSRF_ENABLED"] = False
    make_user("cookie@example.com")
    resp = secure_app.test_client().post(
        "/login",
        data={"email": "cookie@example.com", "password": PASSWORD},
        base_url="https://tandem.example",
    )
    assert resp.status_code == 302
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith("tandem_session="))
    flags = cookie.lower()
    assert "httponly" in flags and "secure" in flags and "samesite=lax" in flags
    assert "expires=" in flags  # permanent: it expires after PERMANENT_SESSION_LIFETIME
    assert secure_app.permanent_session_lifetime.total_seconds() == 8 * 3600
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    # Over plain HTTP the header means nothing and is not sent (issue #16).
    plain = secure_app.test_client().get("/login")
    assert "Strict-Transport-Security" not in plain.headers


def test_password_spraying_from_one_address_is_throttled(
    client: Any, redis_conn: Any, no_csrf: Any
) -> None:
    """Issue #16: 12 different e-mails from one address all got 401; the per-address limit
    now counts failed attempts across e-mails."""
    make_user("real@example.com")
    for i in range(20):
        assert login(client, f"user{i}@example.com", "guess-guess").status_code == 401
    assert login(client, "user99@example.com", "guess-guess").status_code == 429
    assert login(client, "real@example.com", PASSWORD).status_code == 429
    elsewhere = client.post(
        "/login",
        data={"email": "real@example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert elsewhere.status_code == 302


def test_successful_logins_do_not_count_against_the_address(
    flask_app: Any, redis_conn: Any, no_csrf: Any
) -> None:
    make_user("office@example.com")
    for _ in range(25):  # a shared office address signing in all day is never throttled
        c = flask_app.test_client()
        assert login(c, "office@example.com").status_code == 302


def test_a_failed_login_costs_the_same_whether_or_not_the_email_exists(
    client: Any, redis_conn: Any, no_csrf: Any, monkeypatch: Any
) -> None:
    from service.services import accounts

    calls: list[str] = []
    real = accounts._hasher

    class CountingHasher:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, hash_: str, password: str) -> bool:
            calls.append(hash_)
            return real.verify(hash_, password)

    monkeypatch.setattr(accounts, "_hasher", CountingHasher())
    make_user("known@example.com")
    assert login(client, "nobody@example.com", "wrong-password").status_code == 401
    assert login(client, "known@example.com", "wrong-password").status_code == 401
    assert len(calls) == 2  # one argon2 verification each: no shortcut for unknown e-mails
    assert calls[0] != calls[1]


def test_rate_limit_keys_hold_no_address_or_email(flask_app: Any) -> None:
    from service.security import login_address_key, login_rate_key

    with flask_app.test_request_context(
        "/login",
        method="POST",
        data={"email": "person@example.com"},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    ):
        keys = login_rate_key() + login_address_key()
    assert "person" not in keys and "example" not in keys and "192.0.2" not in keys


def test_method_not_allowed_says_which_methods_are(client: Any) -> None:
    resp = client.open("/api/v1/tasks", method="TRACE")
    assert resp.status_code == 405
    assert "GET" in resp.headers["Allow"] and "POST" in resp.headers["Allow"]


@pytest.mark.parametrize(
    "target",
    ["/%09/evil.example", "/%0a/evil.example", "/%0d%0a/x", "/%5C/evil.example",
     "/%5C%5Cevil.example", "//evil.example", "https://evil.example/", "/ /evil.example",
     "javascript:alert(1)", "/%e2%80%a8/evil.example", "/..//evil.example", "/a//b"],
)  # fmt: skip
def test_login_never_redirects_off_site(
    flask_app: Any, db: Any, redis_conn: Any, target: str
) -> None:
    """Issue #16: ``next=/%09/evil.example`` answered ``Location: //evil.example`` (browsers
    drop the tab), and ``next=/%0a/x`` was a 500. Only same-site paths are followed."""
    make_user("next@example.com")
    flask_app.config["WTF_CSRF_ENABLED"] = False
    try:
        c = flask_app.test_client()
        resp = c.post(
            f"/login?next={target}", data={"email": "next@example.com", "password": PASSWORD}
        )
    finally:
        flask_app.config["WTF_CSRF_ENABLED"] = True
    assert resp.status_code == 302, resp.status_code
    assert resp.headers["Location"] == "/", resp.headers["Location"]


def test_login_follows_a_same_site_next(flask_app: Any, db: Any, redis_conn: Any) -> None:
    make_user("next2@example.com")
    flask_app.config["WTF_CSRF_ENABLED"] = False
    try:
        resp = flask_app.test_client().post(
            "/login?next=/tasks/loan-review/review%3Fx%3D1",
            data={"email": "next2@example.com", "password": PASSWORD},
        )
    finally:
        flask_app.config["WTF_CSRF_ENABLED"] = True
    assert resp.headers["Location"] == "/tasks/loan-review/review?x=1"


# --------------------------------------------------------------------------- headers


def test_security_headers_on_ui_api_and_errors(client: Any) -> None:
    page = client.get("/login")
    csp = page.headers["Content-Security-Policy"]
    for directive in STRICT_CSP.split("; "):
        assert directive in csp
    assert "unsafe-inline" not in csp
    for resp in (page, client.get("/api/v1/tasks"), client.get("/healthz"), client.get("/nowhere")):
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"]
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert (
        client.get("/api/v1/tasks")
        .headers["Content-Security-Policy"]
        .startswith("default-src 'none'")
    )


def test_api_docs_page_csp_allows_only_its_own_initializer(client: Any) -> None:
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    inline = re.findall(rb"<script>(.*?)</script>", page.data, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0]).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    for src in re.findall(rb'src="([^"]+)"', page.data) + re.findall(rb'href="([^"]+)"', page.data):
        assert src.startswith(b"/"), src  # everything else comes from this origin
        assert client.get(src.decode()).status_code == 200


# ------------------------------------------------------------------- model artefacts


def test_no_pickle_or_joblib_loading_in_service_or_workers() -> None:
    forbidden = re.compile(
        r"\bpickle\.loads?\b|\bjoblib\.load\b|\bcloudpickle\b|\bdill\b|\bmarshal\.loads\b"
        r"|^\s*import pickle\b|^\s*from pickle import|sio\.load\([^)]*trusted\s*=\s*True"
    )
    offenders = []
    for folder in ("service", "workers", "review_ui"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if forbidden.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_skops_refuses_untrusted_types() -> None:
    hostile = Pipeline([("run", FunctionTransformer(os.system))])
    with pytest.raises(UntrustedTypesFoundException):
        load_model(sio.dumps(hostile))


# ------------------------------------------------------------------------ audit log


def test_audit_events_cannot_be_changed_through_the_orm(db: Any) -> None:
    session = db()
    event = audit.record(session, "test.event", SYSTEM, details={"x": 1})
    session.commit()
    event.action = "tampered"
    with pytest.raises(AuditLogIsAppendOnly):
        session.flush()
    session.rollback()
    session.delete(session.get(AuditEvent, event.id))
    with pytest.raises(AuditLogIsAppendOnly):
        session.flush()
    session.rollback()
    with pytest.raises(AuditLogIsAppendOnly):
        session.execute(update(AuditEvent).values(action="x"))
    with pytest.raises(AuditLogIsAppendOnly):
        session.execute(delete(AuditEvent).where(AuditEvent.id == event.id))
    session.rollback()
    assert (
        session.scalar(select(AuditEvent.action).where(AuditEvent.id == event.id)) == "test.event"
    )


def test_database_trigger_rejects_update_and_delete(engine: Any) -> None:
    with engine.connect() as conn:
        outer = conn.begin()
        conn.execute(
            text(
                "INSERT INTO audit_events (action, actor_type, actor, details, created_at) "
                "VALUES ('t', 'system', 'tandem', '{}', CURRENT_TIMESTAMP)"
            )
        )
        for sql in ("UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"):
            nested = conn.begin_nested()
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text(sql))
            nested.rollback()
        if engine.dialect.name == "postgresql":
            # TRUNCATE (an operator's deliberate purge, the test suite's cleanup) is not a
            # row operation and still works. SQLite has no TRUNCATE.
            conn.execute(text("TRUNCATE audit_events"))
        outer.rollback()


# --------------------------------------------------------------------------- tokens


def test_tokens_are_hashed_record_last_use_and_revoke(
    client: Any, tokens: dict[str, str], db: Any
) -> None:
    from service.models import ApiToken
    from service.services import accounts

    token = tokens["analyst"]
    session = db()
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == accounts.hash_token(token)))
    assert row is not None and token not in (row.token_hash, row.prefix)
    assert client.get("/api/v1/tasks", headers=auth(token)).status_code == 200
    session.expire_all()
    assert session.get(ApiToken, row.id).last_used_at is not None
    accounts.revoke_token(session, row.id, SYSTEM)
    session.commit()
    assert client.get("/api/v1/tasks", headers=auth(token)).status_code == 401
