"""Users (people, UI) and API tokens (machines): creation, verification, revocation."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import Conflict, Forbidden, NotFound, ValidationFailed
from service.models import PERSON_ROLES, ROLES, ApiToken, Task, User
from service.services import audit
from service.services.audit import Actor
from service.services.review import (
    REVIEWING_ROLES,
    WHY_ACCESS_CHANGED,
    WHY_DEACTIVATED,
    release_held_by,
)

TOKEN_PREFIX = "tdm_"  # noqa: S105 (a public marker, not a secret)
#: Password hashing: argon2id with OWASP's first recommended setting (46 MiB, one pass, one
#: lane). argon2-cffi's default (64 MiB, 3 passes, 4 lanes) took 0.3–0.4 s per sign-in on a
#: loaded 2-core machine, most of the login's time; this one takes about 0.1 s
#: (docs/operations.md, "Sign-in cost"). Hashes made with other parameters still verify and
#: are rehashed with these at the next successful sign-in.
ARGON2_PARAMETERS = {"time_cost": 1, "memory_cost": 47_104, "parallelism": 1}
_hasher = PasswordHasher(
    time_cost=ARGON2_PARAMETERS["time_cost"],
    memory_cost=ARGON2_PARAMETERS["memory_cost"],
    parallelism=ARGON2_PARAMETERS["parallelism"],
)
# Per-process cache of verified tokens. Bounded staleness (a revoked token works for at most
# this many seconds on a process that saw it recently) buys a database read per request.
TOKEN_CACHE_SECONDS = 5.0
LAST_USED_RESOLUTION_SECONDS = 60.0
_token_cache: dict[str, tuple[float, Actor, float]] = {}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValidationFailed(f"unknown role {role!r}", {"role": [f"one of {', '.join(ROLES)}"]})


def _check_person_role(role: str) -> None:
    """The roles a person's account may have (every caller: API, admin pages, CLI)."""
    if role in PERSON_ROLES:
        return
    named = {"role": [f"one of {', '.join(PERSON_ROLES)}"]}
    if role == "app":
        raise ValidationFailed(
            "app is a role for applications' tokens, not for people: create a token instead "
            "(tandem token create --role app --task NAME, or Admin → Tokens)",
            named,
        )
    raise ValidationFailed(f"unknown role {role!r}", named)


def _person_tasks(task_scope: Sequence[str] | None) -> list[str] | None:
    """A person's tasks as stored: names, each once, or ``None`` (every task). Never an
    empty list: stored as "every task", it gave the opposite of what it says to an admin
    taking the last task away (API and admin pages alike)."""
    if task_scope is None:
        return None
    if not task_scope:
        raise ValidationFailed(
            "name at least one task, or give every task; an empty list names none (to take "
            "all access away from an account, deactivate it)",
            {"task_scope": ["Empty list."]},
        )
    return list(dict.fromkeys(task_scope))


def _check_scope(session: Session, scope: list[str] | None) -> None:
    if not scope:
        return
    known = set(session.scalars(select(Task.name).where(Task.name.in_(scope))))
    missing = sorted(set(scope) - known)
    if missing:
        raise NotFound(f"unknown task(s): {', '.join(missing)}", {"task": missing})


def covers(actor: Actor, scope: Sequence[str] | None) -> bool:
    """Whether everything ``scope`` reaches (None: every task) is within the actor's tasks."""
    if actor.task_scope is None:
        return True
    return bool(scope) and set(scope or ()) <= set(actor.task_scope)


def check_grant(actor: Actor, role: str, task_scope: Sequence[str] | None) -> None:
    """Nobody grants more than they hold, from any entry point (UI, API, CLI): the role at
    most the actor's own, the tasks within the actor's scope (a scoped admin cannot create
    an unscoped account or token, which would reach every task)."""
    if not _role_within(role, actor.role):
        raise Forbidden(
            f"you cannot grant the {role} role (you hold {actor.role})",
            {"role": [f"at most {actor.role}"]},
        )
    if not covers(actor, task_scope):
        allowed = ", ".join(actor.task_scope or ())
        raise Forbidden(
            f"you can only grant access to your own tasks ({allowed}): name them",
            {"task_scope": [f"a subset of: {allowed}"]},
        )


def effective_scope(token: ApiToken, user: User | None) -> list[str] | None:
    """The tasks a token reaches: its own scope, else its user's."""
    return token.task_scope or (user.task_scope if user is not None else None)


def visible_users(session: Session, actor: Actor) -> list[User]:
    """The accounts an admin may see and manage: those within the admin's scope."""
    users = session.scalars(select(User).order_by(User.email)).all()
    return [u for u in users if covers(actor, u.task_scope)]


def visible_tokens(session: Session, actor: Actor) -> list[ApiToken]:
    """The tokens an admin may see and revoke: those within the admin's scope."""
    tokens = session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()
    users = {u.id: u for u in session.scalars(select(User)).all()}
    return [t for t in tokens if covers(actor, effective_scope(t, users.get(t.user_id or -1)))]


@dataclass
class NewToken:
    token: str
    record: ApiToken


def create_token(
    session: Session,
    *,
    role: str,
    name: str,
    task_scope: list[str] | None,
    actor: Actor,
    user_email: str | None = None,
) -> NewToken:
    """``user_email`` binds the token to a person: it then acts as that user (with the
    token's role and scope), which reviewing requires."""
    _check_role(role)
    check_grant(actor, role, task_scope)  # first: a refusal names no task outside the scope
    _check_scope(session, task_scope)
    user_id = None
    if user_email is not None:
        user = session.scalar(select(User).where(User.email == user_email.strip().lower()))
        if user is None or not covers(actor, user.task_scope):
            raise NotFound(f"no user {user_email!r}", {"user": [user_email]})
        if not _role_within(role, user.role):
            raise ValidationFailed(
                f"a token cannot have more rights than its user ({user.role})",
                {"role": [f"at most {user.role}"]},
            )
        user_id = user.id
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        token_hash=hash_token(token),
        prefix=token[:10],
        role=role,
        task_scope=task_scope or None,
        user_id=user_id,
        created_by=actor.label,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        "token.created",
        actor,
        details={
            "token_id": row.id,
            "name": name,
            "role": role,
            "task_scope": task_scope,
            "user_id": user_id,
        },
    )
    return NewToken(token=token, record=row)


def revoke_token(session: Session, token_id: int, actor: Actor) -> ApiToken:
    row = session.get(ApiToken, token_id)
    owner = session.get(User, row.user_id) if row is not None and row.user_id else None
    if row is None or not covers(actor, effective_scope(row, owner)):
        raise NotFound("token not found")  # a token outside the actor's scope is not shown
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, "token.revoked", actor, details={"token_id": token_id})
    _token_cache.clear()
    return row


def cached_token_actor(token: str) -> Actor | None:
    """The actor behind ``token`` if this process checked it less than
    ``TOKEN_CACHE_SECONDS`` ago, else None (then :func:`authenticate_token` asks the
    database). Tokens that act for a person are never cached."""
    cached = _token_cache.get(hash_token(token))
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    return None


#: The token and the person it acts for, as plain columns in one round trip. Built once:
#: tokens bound to a person are never cached, so every claim and decision runs this, and
#: building it each time and loading the two rows as ORM objects made the whole check cost
#: about twice its CPU now (bench/README.md, "Claim and decide on fewer CPU cycles").
_TOKEN_AND_PERSON = (
    select(
        ApiToken.id,
        ApiToken.name,
        ApiToken.role,
        ApiToken.task_scope,
        ApiToken.user_id,
        ApiToken.revoked_at,
        User.id.label("person_id"),
        User.email.label("person_email"),
        User.role.label("person_role"),
        User.task_scope.label("person_scope"),
        User.active.label("person_active"),
    )
    .outerjoin(User, User.id == ApiToken.user_id)
    .where(ApiToken.token_hash == bindparam("digest"))
)


def authenticate_token(session: Session, token: str) -> Actor | None:
    """The actor behind a bearer token, or None. Cheap on the hot path (cached briefly)."""
    digest = hash_token(token)
    now = time.monotonic()
    cached = _token_cache.get(digest)
    if cached and cached[0] > now:
        return cached[1]
    found = session.execute(_TOKEN_AND_PERSON, {"digest": digest}).first()
    if found is None or found.revoked_at is not None:
        _token_cache.pop(digest, None)
        return None
    actor = Actor(
        kind="token",
        id=found.id,
        name=found.name,
        role=found.role,
        task_scope=tuple(found.task_scope) if found.task_scope else None,
    )
    if found.user_id is not None:
        if (
            found.person_id is None
            or not found.person_active
            or not _scope_within_user(
                found.role, found.task_scope, found.person_role, found.person_scope
            )
        ):
            return None
        scope = found.task_scope or found.person_scope
        actor = Actor(
            kind="user",
            id=found.person_id,
            name=found.person_email,
            role=found.role,
            task_scope=tuple(scope) if scope else None,
        )
    last_touch = cached[2] if cached else 0.0
    if now - last_touch > LAST_USED_RESOLUTION_SECONDS:
        session.execute(
            update(ApiToken).where(ApiToken.id == found.id).values(last_used_at=utcnow())
        )
        last_touch = now
    # A token that acts for a person is never cached: deactivating the person or resetting
    # their password (from any process, the command line included) stops it at its very
    # next request. Such tokens serve people's decisions, not the predict hot path.
    expires = now + (0.0 if found.user_id is not None else TOKEN_CACHE_SECONDS)
    _token_cache[digest] = (expires, actor, last_touch)
    return actor


def _role_within(requested: str, user_role: str) -> bool:
    """A token acting for a person never has rights that person lacks."""
    return user_role == "admin" or requested == user_role


def _token_within_user(token: ApiToken, user: User) -> bool:
    """Whether a token bound to ``user`` still has no rights the person lacks (their role or
    tasks may have changed since it was made)."""
    return _scope_within_user(token.role, token.task_scope, user.role, user.task_scope)


def _scope_within_user(
    token_role: str,
    token_scope: list[str] | None,
    user_role: str,
    user_scope: list[str] | None,
) -> bool:
    if not _role_within(token_role, user_role):
        return False
    if user_scope is None or not token_scope:
        return True
    return set(token_scope) <= set(user_scope)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(user: User, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY_HASH: list[str] = []


def authenticate_password(session: Session, email: str, password: str) -> User | None:
    """The active user with this e-mail and password, or None.

    Every failure costs the same argon2 verification: an unknown or deactivated e-mail is
    checked against a dummy hash, so the answer's timing does not tell which e-mails exist
    (it did: 6 ms for an unknown e-mail, 323 ms for a real one with a wrong password)."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not user.active:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(_hasher.hash(secrets.token_urlsafe(16)))
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_DUMMY_HASH[0], password)
        return None
    if not check_password(user, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        # Made with older parameters: store the password under the current ones (it is
        # known only now, while the person signs in).
        user.password_hash = hash_password(password)
    return user


def create_user(
    session: Session,
    *,
    email: str,
    password: str,
    role: str,
    task_scope: list[str] | None,
    actor: Actor,
) -> User:
    _check_person_role(role)
    task_scope = _person_tasks(task_scope)
    check_grant(actor, role, task_scope)
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise ValidationFailed("invalid e-mail address", {"email": ["Not a valid e-mail."]})
    if len(password) < 8:
        raise ValidationFailed("password too short", {"password": ["At least 8 characters."]})
    _check_scope(session, task_scope)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("a user with this e-mail already exists", {"email": [email]})
    user = User(
        email=email,
        password_hash=hash_password(password),
        role=role,
        task_scope=task_scope or None,
        pseudonym="r_" + secrets.token_hex(6),
    )
    session.add(user)
    session.flush()
    audit.record(
        session,
        "user.created",
        actor,
        details={"user_id": user.id, "email": email, "role": role, "task_scope": task_scope},
    )
    return user


def user_actor(user: User) -> Actor:
    return Actor(
        kind="user",
        id=user.id,
        name=user.email,
        role=user.role,
        task_scope=tuple(user.task_scope) if user.task_scope else None,
    )


# ---------------------------------------------------------------- account lifecycle


def find_user(session: Session, actor: Actor, *, email: str = "", user_id: int = 0) -> User:
    """A user the actor may manage (within its scope), by e-mail or id; others are not
    found (a scoped admin learns nothing of accounts outside its scope)."""
    if user_id:
        user = session.get(User, user_id)
    else:
        user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not covers(actor, user.task_scope):
        raise NotFound(f"user {email or user_id} not found", {"user": [email or user_id]})
    return user


def end_sessions(user: User) -> None:
    """Every login session of the user stops working at its next request (login.py)."""
    user.session_epoch = (user.session_epoch or 0) + 1


def _revoke_user_tokens(session: Session, user: User) -> int:
    """Tokens that act for this person stop working too (other processes within
    TOKEN_CACHE_SECONDS, this one at once)."""
    rows = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    ).all()
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    _token_cache.clear()
    return len(rows)


def log_out_everywhere(session: Session, user: User) -> None:
    """Logging out ends this session and every other session of the user (a cookie copied
    before logout no longer works anywhere)."""
    end_sessions(user)
    audit.record(session, "user.logout", user_actor(user), details={"user_id": user.id})


def _is_full_admin(role: str, task_scope: Sequence[str] | None, active: bool) -> bool:
    return bool(active) and role == "admin" and not task_scope


def _keep_an_admin(session: Session, user: User, *, role: str, scope: Any, active: bool) -> None:
    """Refuse a change that would leave nobody able to administer every task: the last
    active, unscoped admin can be neither deactivated, demoted nor limited to some tasks
    (from any entry point: page, API or command line)."""
    if not _is_full_admin(user.role, user.task_scope, user.active):
        return
    if _is_full_admin(role, scope, active):
        return
    others = session.scalars(
        select(User).where(User.role == "admin", User.active.is_(True), User.id != user.id)
    ).all()
    if not any(_is_full_admin(o.role, o.task_scope, o.active) for o in others):
        raise Conflict(
            f"{user.email} is the last active admin of every task: make another admin first",
            {"user": [user.email]},
        )


def deactivate_user(session: Session, user: User, actor: Actor) -> User:
    """The person can no longer sign in; their sessions and tokens stop working now."""
    check_grant(actor, user.role, user.task_scope)
    if user.id == actor.id and actor.kind == "user":
        raise Conflict("you cannot deactivate yourself", {"email": [user.email]})
    _keep_an_admin(session, user, role=user.role, scope=user.task_scope, active=False)
    was_active = bool(user.active)
    user.active = False
    _cut_off(
        session, user, actor, "user.deactivated",
        before={"active": was_active}, after={"active": False},
    )  # fmt: skip
    # The person's row is written (and locked) before their leases are read: a claim in
    # flight holds that row until it commits (review.hold_person), so its lease is seen.
    session.flush()
    release_held_by(session, user.id, actor, why=WHY_DEACTIVATED)
    return user


def reactivate_user(session: Session, user: User, actor: Actor) -> User:
    """Signing in works again (with the same password); revoked tokens stay revoked."""
    check_grant(actor, user.role, user.task_scope)
    was_active = bool(user.active)
    user.active = True
    audit.record(
        session,
        "user.reactivated",
        actor,
        details={"user_id": user.id, "before": {"active": was_active}, "after": {"active": True}},
    )
    return user


#: ``change_access(task_scope=...)`` left out: the scope stays as it is.
UNCHANGED: Any = object()


@dataclass
class AccessChange:
    user: User
    changed: dict[str, tuple[Any, Any]]  # attribute -> (before, after)
    tokens_revoked: int


def change_access(
    session: Session,
    user: User,
    actor: Actor,
    *,
    role: str | None = None,
    task_scope: Any = UNCHANGED,
) -> AccessChange:
    """A new role and/or task scope (None: every task). Open sessions get the new rights at
    their next request (login.py reloads the user); tokens bound to the person that would now
    have more rights than they hold are revoked. One audit event per attribute that changed
    (``user.role_changed``, ``user.scope_changed``), each with before and after."""
    new_role = user.role if role is None else role
    new_scope = user.task_scope if task_scope is UNCHANGED else _person_tasks(task_scope)
    if new_role != user.role:
        _check_person_role(new_role)
    check_grant(actor, user.role, user.task_scope)  # the account as it is now
    check_grant(actor, new_role, new_scope)  # and as it would be
    _check_scope(session, new_scope)
    _keep_an_admin(session, user, role=new_role, scope=new_scope, active=bool(user.active))
    changed: dict[str, tuple[Any, Any]] = {}
    if new_role != user.role:
        changed["role"] = (user.role, new_role)
    # The same tasks in another order, or once where an older account held one twice, are
    # no change.
    if (set(new_scope) if new_scope else None) != (
        set(user.task_scope) if user.task_scope else None
    ):
        changed["task_scope"] = (user.task_scope, new_scope)
    if not changed:
        return AccessChange(user=user, changed={}, tokens_revoked=0)
    user.role = new_role
    user.task_scope = new_scope
    revoked = _revoke_tokens_beyond(session, user)
    for attribute, action in (("role", "user.role_changed"), ("task_scope", "user.scope_changed")):
        if attribute in changed:
            before, after = changed[attribute]
            audit.record(
                session,
                action,
                actor,
                details={
                    "user_id": user.id,
                    "before": {attribute: before},
                    "after": {attribute: after},
                    "tokens_revoked": revoked,
                },
            )
    # As on deactivation: the person's row is written (and locked) first, so a claim in
    # flight commits before the leases are read, and a case the person may no longer decide
    # goes back to the queue now rather than when its lease runs out.
    session.flush()
    if new_role not in REVIEWING_ROLES:
        release_held_by(session, user.id, actor, why=WHY_ACCESS_CHANGED)
    elif new_scope is not None:
        release_held_by(session, user.id, actor, why=WHY_ACCESS_CHANGED, keep_tasks=new_scope)
    return AccessChange(user=user, changed=changed, tokens_revoked=revoked)


def _revoke_tokens_beyond(session: Session, user: User) -> int:
    """Revoke the person's live tokens that now have rights the person lacks."""
    rows = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    ).all()
    now = utcnow()
    beyond = [row for row in rows if not _token_within_user(row, user)]
    for row in beyond:
        row.revoked_at = now
    if beyond:
        _token_cache.clear()
    return len(beyond)


def reset_password(session: Session, user: User, password: str, actor: Actor) -> User:
    """A new password; every session and token of the user ends (whoever knew the old one
    is out)."""
    check_grant(actor, user.role, user.task_scope)
    if len(password) < 8:
        raise ValidationFailed("password too short", {"password": ["At least 8 characters."]})
    user.password_hash = hash_password(password)
    _cut_off(session, user, actor, "user.password_reset")
    return user


def _cut_off(
    session: Session,
    user: User,
    actor: Actor,
    action: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """End every session and every bound token of the user, and record why."""
    end_sessions(user)
    revoked = _revoke_user_tokens(session, user)
    details: dict[str, Any] = {"user_id": user.id, "tokens_revoked": revoked}
    if before is not None:
        details.update(before=before, after=after)
    audit.record(session, action, actor, details=details)
