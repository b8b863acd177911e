"""Admins change people's role and task scope through the API (issue #19, point 10), within
the rules the admin pages follow too: nobody grants more than they hold, the last active
admin of every task stays one, a token bound to a person never keeps rights the person lost,
every change is an audit event with before and after. Passwords are hashed with the
parameters docs/operations.md names, and older hashes are rehashed at sign-in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from service.models import AuditEvent, User
from service.services.audit import SYSTEM
from tests.helpers import auth, make_token

PASSWORD = "correct horse battery"


@pytest.fixture
def people(flask_app: Any, db: Any, redis_conn: Any, task: Any) -> Iterator[dict[str, Any]]:
    from service.services.accounts import create_token, create_user
    from service.uow import unit_of_work
    from tests.helpers import SIMPLE_TASK

    with unit_of_work() as session:
        ids = {}
        for email, role, scope in (
            ("ann@example.com", "reviewer", None),
            ("boss@example.com", "admin", None),
            ("local@example.com", "admin", ["loan-review"]),
        ):
            ids[email] = create_user(
                session, email=email, password=PASSWORD, role=role, task_scope=scope,
                actor=SYSTEM,
            ).id  # fmt: skip
        ann_token = create_token(
            session, role="reviewer", name="ann-tool", task_scope=None, actor=SYSTEM,
            user_email="ann@example.com",
        ).token  # fmt: skip
        boss_token = create_token(
            session, role="admin", name="boss-tool", task_scope=None, actor=SYSTEM,
            user_email="boss@example.com",
        ).token  # fmt: skip
        local_token = create_token(
            session, role="admin", name="local-tool", task_scope=["loan-review"], actor=SYSTEM,
            user_email="local@example.com",
        ).token  # fmt: skip
    from service.schemas.tasks import TaskCreateSchema
    from service.services.tasks import create_task

    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(dict(SIMPLE_TASK, name="claims")), SYSTEM)
    yield {
        "ids": ids,
        "ann": ann_token,
        "boss": boss_token,
        "local": local_token,
        "system_admin": make_token("admin"),
    }


def _patch(client: Any, user_id: int, body: Any, token: str) -> Any:
    return client.patch(f"/api/v1/users/{user_id}", json=body, headers=auth(token))


def _events(db: Any, action: str) -> list[dict[str, Any]]:
    db.expire_all()
    return list(
        db.scalars(
            select(AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
    )


def test_an_admin_changes_role_and_scope_with_before_and_after(
    flask_app: Any, people: Any, db: Any
) -> None:
    client = flask_app.test_client()
    ann = people["ids"]["ann@example.com"]
    assert client.get("/api/v1/tasks", headers=auth(people["ann"])).status_code == 200
    resp = _patch(client, ann, {"role": "analyst", "task_scope": ["loan-review"]}, people["boss"])
    assert resp.status_code == 200, resp.json
    assert resp.json["role"] == "analyst" and resp.json["task_scope"] == ["loan-review"]
    role = _events(db, "user.role_changed")
    scope = _events(db, "user.scope_changed")
    assert role == [
        {"user_id": ann, "before": {"role": "reviewer"}, "after": {"role": "analyst"},
         "tokens_revoked": 1},
    ]  # fmt: skip
    assert scope[0]["before"] == {"task_scope": None}
    assert scope[0]["after"] == {"task_scope": ["loan-review"]}
    # Her reviewer token would now have a role she lacks: revoked with the change.
    assert client.get("/api/v1/tasks", headers=auth(people["ann"])).status_code == 401
    # The same values again change nothing and record nothing.
    again = _patch(client, ann, {"role": "analyst", "task_scope": ["loan-review"]}, people["boss"])
    assert again.status_code == 200
    assert len(_events(db, "user.role_changed")) == 1
    assert len(_events(db, "user.scope_changed")) == 1
    # null: every task again.
    every = _patch(client, ann, {"task_scope": None}, people["boss"])
    assert every.status_code == 200 and every.json["task_scope"] is None
    assert every.json["role"] == "analyst"


def test_bad_changes_are_refused_by_name_and_change_nothing(
    flask_app: Any, people: Any, db: Any
) -> None:
    client = flask_app.test_client()
    ann = people["ids"]["ann@example.com"]
    boss = people["ids"]["boss@example.com"]
    cases = [
        ({}, 422, "_schema"),
        ({"role": "owner"}, 422, "role"),
        ({"role": "app"}, 422, "role"),  # applications get tokens, people accounts
        ({"task_scope": []}, 422, "task_scope"),  # no task is not "every task"
        ({"task_scope": "loan-review"}, 422, "task_scope"),
        ({"nickname": "x"}, 422, "nickname"),
        ({"task_scope": ["nope"]}, 404, "task"),
    ]
    for body, status, field in cases:
        resp = _patch(client, ann, body, people["boss"])
        assert resp.status_code == status, (body, resp.json)
        assert field in resp.json["error"]["details"], (body, resp.json)
    # A scoped admin cannot make anyone unscoped or reach tasks beyond its own.
    widen = _patch(client, people["ids"]["local@example.com"], {"task_scope": None},
                   people["local"])  # fmt: skip
    assert widen.status_code == 403
    assert _patch(client, boss, {"role": "reviewer"}, people["local"]).status_code == 404
    assert client.patch("/api/v1/users/999999", json={"role": "analyst"},
                        headers=auth(people["boss"])).status_code == 404  # fmt: skip
    # Non-admins may not.
    assert _patch(client, ann, {"role": "admin"}, people["ann"]).status_code == 403
    db.expire_all()
    row = db.get(User, ann)
    assert (row.role, row.task_scope) == ("reviewer", None)
    assert _events(db, "user.role_changed") == [] and _events(db, "user.scope_changed") == []


def test_the_last_active_admin_of_every_task_stays_one(
    flask_app: Any, people: Any, db: Any
) -> None:
    client = flask_app.test_client()
    boss = people["ids"]["boss@example.com"]
    # Demoting or scoping themselves, as the only unscoped admin: refused, with the reason.
    for body in ({"role": "analyst"}, {"task_scope": ["loan-review"]}):
        resp = _patch(client, boss, body, people["boss"])
        assert resp.status_code == 409, body
        assert "last active admin" in resp.json["error"]["message"]
    # Deactivating them from an unbound token (or the command line): refused too.
    off = client.post(f"/api/v1/users/{boss}/deactivate", headers=auth(people["system_admin"]))
    assert off.status_code == 409 and "last active admin" in off.json["error"]["message"]
    # With a second unscoped admin, the first may step down.
    promoted = _patch(client, people["ids"]["ann@example.com"], {"role": "admin"}, people["boss"])
    assert promoted.status_code == 200
    assert _patch(client, boss, {"role": "analyst"}, people["boss"]).status_code == 200
    db.expire_all()
    assert db.get(User, boss).role == "analyst"
    # The boss's admin token is now beyond the boss's role: it stops.
    assert client.get("/api/v1/users", headers=auth(people["boss"])).status_code == 401


def test_deactivation_is_recorded_with_before_and_after(
    flask_app: Any, people: Any, db: Any
) -> None:
    client = flask_app.test_client()
    ann = people["ids"]["ann@example.com"]
    assert client.post(f"/api/v1/users/{ann}/deactivate",
                       headers=auth(people["boss"])).status_code == 200  # fmt: skip
    assert client.post(f"/api/v1/users/{ann}/reactivate",
                       headers=auth(people["boss"])).status_code == 200  # fmt: skip
    off = _events(db, "user.deactivated")[-1]
    on = _events(db, "user.reactivated")[-1]
    assert (off["before"], off["after"], off["tokens_revoked"]) == (
        {"active": True}, {"active": False}, 1,
    )  # fmt: skip
    assert (on["before"], on["after"]) == ({"active": False}, {"active": True})


def test_a_bound_token_beyond_its_persons_rights_stops(
    flask_app: Any, people: Any, db: Any
) -> None:
    """Rights changed behind the service's back (another process, an old row): the token is
    checked against its person at every request."""
    from sqlalchemy import update

    client = flask_app.test_client()
    assert client.get("/api/v1/tasks", headers=auth(people["local"])).status_code == 200
    db.execute(update(User).where(User.email == "local@example.com").values(task_scope=["claims"]))
    db.flush()
    assert client.get("/api/v1/tasks", headers=auth(people["local"])).status_code == 401


def test_passwords_use_the_documented_argon2_parameters_and_old_hashes_are_rehashed(
    flask_app: Any, people: Any, db: Any
) -> None:
    from argon2 import PasswordHasher
    from argon2.low_level import Type

    from service.services import accounts

    assert accounts.ARGON2_PARAMETERS == {"time_cost": 1, "memory_cost": 47_104, "parallelism": 1}
    ann = db.get(User, people["ids"]["ann@example.com"])
    assert ann.password_hash.startswith("$argon2id$v=19$m=47104,t=1,p=1$")
    # OWASP's argon2id minimums (Password Storage Cheat Sheet): at least 19 MiB with 2
    # passes, or 46 MiB with one.
    params = accounts._hasher
    assert params.type is Type.ID
    assert params.memory_cost >= 47_104 or (params.memory_cost >= 19_456 and params.time_cost >= 2)

    # A hash made with argon2-cffi's previous defaults still signs in, and is replaced.
    old = PasswordHasher(time_cost=3, memory_cost=65_536, parallelism=4).hash(PASSWORD)
    ann.password_hash = old
    db.commit()
    flask_app.config["WTF_CSRF_ENABLED"] = False
    try:
        client = flask_app.test_client()
        resp = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD})
        assert resp.status_code == 302
        db.expire_all()
        new = db.get(User, ann.id).password_hash
        assert new != old and new.startswith("$argon2id$v=19$m=47104,t=1,p=1$")
        # A wrong password rehashes nothing.
        db.get(User, ann.id).password_hash = old
        db.commit()
        wrong = flask_app.test_client().post(
            "/login", data={"email": "ann@example.com", "password": "nope-nope"}
        )
        assert wrong.status_code == 401
        db.expire_all()
        assert db.get(User, ann.id).password_hash == old
    finally:
        flask_app.config["WTF_CSRF_ENABLED"] = True


def test_deactivation_gives_the_persons_cases_back_to_the_queue(
    flask_app: Any, people: Any, db: Any, tokens: dict[str, str]
) -> None:
    """A deactivated reviewer's lease would keep the case from everyone until it ran out."""
    from service.models import Case

    client = flask_app.test_client()
    case_id = client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": {"review": "late", "state": "CA"}},
        headers=auth(tokens["app"]),
    ).json["case_id"]
    claimed = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(people["ann"]))
    assert claimed.status_code == 200 and claimed.json["case_id"] == case_id
    ann = people["ids"]["ann@example.com"]
    assert client.post(f"/api/v1/users/{ann}/deactivate",
                       headers=auth(people["boss"])).status_code == 200  # fmt: skip
    case = db.get(Case, case_id)
    db.refresh(case)
    assert (case.queue_state, case.lease_owner_id, case.status) == ("waiting", None, "pending")
    released = select(AuditEvent).where(
        AuditEvent.action == "case.released", AuditEvent.case_id == case_id
    )
    (event,) = db.scalars(released).all()
    assert event.details == {"reviewer_id": ann, "why": "user deactivated"}


def test_a_narrower_access_gives_back_the_cases_the_person_may_no_longer_decide(
    flask_app: Any, people: Any, db: Any, tokens: dict[str, str]
) -> None:
    """A lease on a task the person lost (or a role that may not review) would keep the case
    from everyone until it ran out: it goes back to the queue with the change; the cases the
    person may still decide stay theirs."""
    from service.models import Case

    client = flask_app.test_client()
    app_token = make_token("app")
    held = {}
    for task in ("loan-review", "claims"):
        case_id = client.post(
            f"/api/v1/tasks/{task}/predict",
            json={"input": {"review": "late", "state": "CA"}},
            headers=auth(app_token),
        ).json["case_id"]
        claimed = client.post(f"/api/v1/tasks/{task}/queue/claim", headers=auth(people["ann"]))
        assert claimed.status_code == 200 and claimed.json["case_id"] == case_id
        held[task] = case_id
    ann = people["ids"]["ann@example.com"]

    def state(case_id: str) -> tuple[Any, Any]:
        case = db.get(Case, case_id)
        db.refresh(case)
        return case.queue_state, case.lease_owner_id

    def released() -> list[tuple[str | None, dict[str, Any]]]:
        db.expire_all()
        rows = db.execute(
            select(AuditEvent.case_id, AuditEvent.details)
            .where(AuditEvent.action == "case.released")
            .order_by(AuditEvent.id)
        ).all()
        return [(row.case_id, row.details) for row in rows]

    # Wider or equal access changes nothing held.
    assert _patch(client, ann, {"role": "reviewer"}, people["boss"]).status_code == 200
    assert released() == []
    assert _patch(client, ann, {"task_scope": ["claims"]}, people["boss"]).status_code == 200
    assert state(held["loan-review"]) == ("waiting", None)
    assert state(held["claims"]) == ("leased", ann)
    why = {"reviewer_id": ann, "why": "access changed"}
    assert released() == [(held["loan-review"], why)]
    # The scope event comes first, then the release it caused.
    (scope_event,) = db.scalars(
        select(AuditEvent.id).where(AuditEvent.action == "user.scope_changed")
    ).all()
    (release_event,) = db.scalars(
        select(AuditEvent.id).where(AuditEvent.action == "case.released")
    ).all()
    assert scope_event < release_event

    assert _patch(client, ann, {"role": "analyst"}, people["boss"]).status_code == 200
    assert state(held["claims"]) == ("waiting", None)
    assert released() == [(held["loan-review"], why), (held["claims"], why)]


def test_a_claim_authenticated_before_an_access_change_takes_no_lease(
    flask_app: Any, people: Any, db: Any
) -> None:
    """A claim authenticated a moment before an admin narrowed the person's access, that
    reaches the person's row after the change committed, must not take the lease the change
    just gave back: it is refused on the rights the account holds now."""
    from service.errors import Forbidden
    from service.models import Case
    from service.services import review
    from service.services.accounts import user_actor
    from service.uow import unit_of_work

    client = flask_app.test_client()
    app_token, ann_token = make_token("app"), people["ann"]

    def new_case(review_text: str) -> str:
        return str(
            client.post(
                "/api/v1/tasks/loan-review/predict",
                json={"input": {"review": review_text, "state": "CA"}},
                headers=auth(app_token),
            ).json["case_id"]
        )

    # A decision of the person's own, to undo later (an undo leases the case again).
    decided_id = new_case("early")
    claimed = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(ann_token))
    assert claimed.json["case_id"] == decided_id
    decided = client.post(
        f"/api/v1/cases/{decided_id}/review", json={"label": "good"}, headers=auth(ann_token)
    )
    assert decided.status_code == 200, decided.json
    case_id = new_case("late")
    ann = people["ids"]["ann@example.com"]
    with unit_of_work() as session:
        before = user_actor(session.get(User, ann))  # authenticated with the old rights
    assert _patch(client, ann, {"task_scope": ["claims"]}, people["boss"]).status_code == 200
    for attempt in (
        lambda session: review.claim(session, "loan-review", before),
        lambda session: review.claim_case(session, case_id, before),
        lambda session: review.undo(session, decided_id, before),
    ):
        with pytest.raises(Forbidden) as refused, unit_of_work() as session:
            attempt(session)
        assert refused.value.details == {"reason": "access_changed"}
    case = db.get(Case, case_id)
    db.refresh(case)
    assert (case.queue_state, case.lease_owner_id) == ("waiting", None)
    undone = db.get(Case, decided_id)
    db.refresh(undone)
    assert (undone.status, undone.queue_state) == ("resolved", None)
    # The rights the account holds now still work.
    assert _patch(client, ann, {"task_scope": None}, people["boss"]).status_code == 200
    with unit_of_work() as session:
        assert review.claim(session, "loan-review", before) is not None


def test_no_person_gets_the_applications_role(people: Any, db: Any) -> None:
    """``app`` is a role for applications' tokens: an account with it could sign in to no
    page and review nothing, so the service refuses it for people, whoever asks."""
    from service.errors import ValidationFailed
    from service.services.accounts import change_access, create_user
    from service.uow import unit_of_work

    with pytest.raises(ValidationFailed) as refused, unit_of_work() as session:
        create_user(
            session, email="billing@example.com", password=PASSWORD, role="app",
            task_scope=None, actor=SYSTEM,
        )  # fmt: skip
    assert "token" in refused.value.message and "role" in refused.value.details
    ann = people["ids"]["ann@example.com"]
    with pytest.raises(ValidationFailed), unit_of_work() as session:
        user = session.get(User, ann)
        assert user is not None
        change_access(session, user, SYSTEM, role="app")
    db.expire_all()
    assert db.scalar(select(User).where(User.email == "billing@example.com")) is None
    assert db.get(User, ann).role == "reviewer"


def test_no_caller_gives_a_person_an_empty_task_list_or_an_unknown_role(
    people: Any, db: Any
) -> None:
    """The service refuses them for every caller (API, admin pages, CLI): an empty list was
    stored as every task, the opposite of what it says; an unknown role is named as such,
    not as the applications' role."""
    from service.errors import ValidationFailed
    from service.services.accounts import change_access, create_user
    from service.uow import unit_of_work

    with pytest.raises(ValidationFailed) as refused, unit_of_work() as session:
        create_user(
            session, email="nobody@example.com", password=PASSWORD, role="reviewer",
            task_scope=[], actor=SYSTEM,
        )  # fmt: skip
    assert "task_scope" in refused.value.details
    ann = people["ids"]["ann@example.com"]
    for change, field, says in (
        ({"task_scope": []}, "task_scope", "name at least one task"),
        ({"role": "owner"}, "role", "unknown role 'owner'"),
    ):
        with pytest.raises(ValidationFailed) as refused, unit_of_work() as session:
            user = session.get(User, ann)
            assert user is not None
            change_access(session, user, SYSTEM, **change)
        assert field in refused.value.details and refused.value.message.startswith(says)
    db.expire_all()
    assert db.scalar(select(User).where(User.email == "nobody@example.com")) is None
    assert (db.get(User, ann).role, db.get(User, ann).task_scope) == ("reviewer", None)


def test_a_task_named_twice_is_stored_once_and_a_role_change_leaves_the_tasks_alone(
    people: Any, db: Any
) -> None:
    """An outside try created an account with a task named twice: it was stored twice, and
    the next role change also "changed" its tasks (an audit event nobody asked for)."""
    from service.services.accounts import change_access, create_user
    from service.uow import unit_of_work

    with unit_of_work() as session:
        made = create_user(
            session, email="twice@example.com", password=PASSWORD, role="reviewer",
            task_scope=["claims", "loan-review", "claims"], actor=SYSTEM,
        )  # fmt: skip
        assert made.task_scope == ["claims", "loan-review"]
    with unit_of_work() as session:
        user = session.scalar(select(User).where(User.email == "twice@example.com"))
        assert user is not None
        done = change_access(
            session, user, SYSTEM, role="analyst", task_scope=["loan-review", "claims", "claims"]
        )
        assert set(done.changed) == {"role"}
    assert _events(db, "user.scope_changed") == []
