"""Review UI views (docs/review.md): thin pages over the service layer and the JSON API.

Every view checks the signed-in user's role (and task scope, through the services). Forms
carry Flask-WTF's CSRF token (CSRFProtect is on for this blueprint); the JavaScript sends the
same token as ``X-CSRFToken`` to the JSON API. Pages are served with a strict
Content-Security-Policy: no inline script or style, so all behaviour lives in static files.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import markdown
import nh3
from flask import (
    Blueprint,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask import session as flask_session
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf.csrf import CSRFError
from marshmallow import ValidationError, validate
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from review_ui import history as case_history
from service.db import db_session, utcnow
from service.errors import ServiceError, ValidationFailed, error_response, http_exception_response
from service.login import LoginUser
from service.models import REASONS, ROLES, User
from service.policy.params import RATES_BELOW_ONE
from service.schemas.review import parse_queue_args
from service.schemas.tasks import PolicyPatchSchema, ReviewPatchSchema, TaskPatchSchema
from service.services import accounts, audit
from service.services import cases as case_service
from service.services import review as review_service
from service.services import stats as stats_service
from service.services import tasks as task_service
from service.services.accounts import user_actor
from service.services.audit import Actor
from service.uow import unit_of_work

bp = Blueprint(
    "review_ui",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui/static",
)

P = ParamSpec("P")
R = TypeVar("R")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

REASON_TEXT = {
    "low_confidence": "The model was not confident enough to answer on its own.",
    "cold_start": "No certified model yet: people decide every case for now.",
    "audit": "Picked at random to check the quality of automatic answers.",
    "fallback": "Automation was pulled back (drift or an error alarm); people decide.",
    "invalid_input": "Some values are outside what the model has seen.",
    "forced": "The application asked for a person to decide.",
    "policy": "The suggested label is one this task never automates.",
    "confident": "The model answered automatically; this case is a quality check.",
}
#: What the review page says about a case (docs/review.md, "Blind review"): reasons as
#: reviewers see them (``cases.reviewer_reason``), none that would tell an audit apart or hint
#: at the model's suggestion. ``low_confidence`` also stands for audited, held and
#: never-automated cases, so its sentence must be true of all of them: it says only that a
#: person decides (saying the model could not be trusted would be false of an audit).
REVIEWER_REASON_TEXT = {
    "low_confidence": "This case needs a person's decision.",
    "cold_start": REASON_TEXT["cold_start"],
    "fallback": REASON_TEXT["fallback"],
    "invalid_input": REASON_TEXT["invalid_input"],
    "forced": REASON_TEXT["forced"],
}


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def roles(*allowed: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Signed-in users with one of ``allowed`` (admins always); others get a 403 page."""
    names = set(allowed) | {"admin"}

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        @login_required
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if current_user.role not in names:
                abort(403)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def actor() -> Actor:
    return user_actor(current_user.user)


def render_markdown(text: str) -> str:
    """Task instructions: Markdown rendered, then sanitised (reviewers see admin input)."""
    html = markdown.markdown(text or "", extensions=["sane_lists"])
    return nh3.clean(html, link_rel="noopener noreferrer nofollow")


@bp.app_errorhandler(403)
def _forbidden(exc: HTTPException) -> Any:
    if request.path.startswith("/api/"):
        return http_exception_response(exc)
    return render_template("error.html", status=403, message="You may not open this page."), 403


@bp.app_errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> Any:
    if request.path.startswith("/api/"):
        return http_exception_response(exc)
    message = "This form expired or was not sent by this site. Reload the page and try again."
    return render_template("error.html", status=400, message=message), 400


@bp.app_errorhandler(404)
def _not_found(exc: HTTPException) -> Any:
    if request.path.startswith("/api/"):
        return http_exception_response(exc)
    return render_template("error.html", status=404, message="Nothing here."), 404


@bp.errorhandler(ServiceError)
def _service_error_page(exc: ServiceError) -> Any:
    """A service refusal inside a page (an unknown task or case, a task outside the scope):
    a browser navigating gets the error page; JSON stays for the page's own fetch() calls."""
    wanted = request.accept_mimetypes.best_match(["application/json", "text/html"])
    if wanted != "text/html":
        return error_response(exc.status, exc.code, exc.message, exc.details)
    message = "Nothing here." if exc.status == 404 else exc.message
    return render_template("error.html", status=exc.status, message=message), exc.status


@bp.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it on every page that names no icon (JSON pages, the API docs)."""
    return send_from_directory(
        str(bp.static_folder), "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86_400
    )


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"reason_text": REASON_TEXT}


# ------------------------------------------------------------------------ sign in


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("review_ui.index"))
    error = None
    if request.method == "POST":
        email = (request.form.get("email") or "").strip().lower()
        password = request.form.get("password") or ""
        with unit_of_work() as session:
            user = accounts.authenticate_password(session, email, password)
            if user is not None:
                user.last_login_at = utcnow()
                audit.record(session, "user.login", user_actor(user))
                login_user(LoginUser(user))
                target = same_origin_path(request.args.get("next") or "")
                return redirect(target or url_for("review_ui.index"))
        error = "Wrong e-mail or password."
    return render_template("login.html", error=error), (401 if error else 200)


def same_origin_path(target: str) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirect after login).

    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so
    ``/%09/evil.example`` or ``/%5C/evil.example`` would become ``//evil.example``, another
    host: any whitespace, control character or backslash disqualifies a target, as do a
    scheme or a host."""
    if not target.startswith("/") or "//" in target or "/." in target:
        return None  # no host, and no dot segments that a browser would fold into one
    if "\\" in target or any(ch.isspace() or not ch.isprintable() for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@bp.post("/logout")
@login_required
def logout() -> Response:
    with unit_of_work() as session:
        user = session.get(User, current_user.user.id)
        if user is not None:
            accounts.log_out_everywhere(session, user)
    logout_user()
    return redirect(url_for("review_ui.login"))


# ------------------------------------------------------------------------- tasks


@bp.get("/")
@roles("reviewer", "analyst")
def index() -> str:
    session = db_session()
    me = actor()
    rows = []
    for task in task_service.list_tasks(session, me):
        cases, automatic = task_service.case_counts(session, task)
        rows.append(
            {
                "task": task,
                "queue": review_service.queue_summary(session, task),
                "automation_rate": (automatic / cases) if cases else None,
                "cases": cases,
                "today": review_service.reviewer_today(session, task, current_user.user.id),
                "health": stats_service.task_health(session, task),
            }
        )
    return render_template("tasks.html", rows=rows)


@bp.get("/tasks/<string:task>/review")
@roles("reviewer")
def review_page(task: str) -> str:
    row = task_service.get_task(db_session(), task, actor())
    config = {
        "task": row.name,
        "labels": row.labels,
        "fields": review_service.fields_for_review(row),
        "reasons": REVIEWER_REASON_TEXT,
        "api": {
            "claim": url_for("review.claim", task=row.name),
            "case": "/api/v1/cases/",
            "progress": url_for("review_ui.review_progress", task=row.name),
        },
    }
    return render_template(
        "review.html",
        task=row,
        config=config,
        instructions=render_markdown(row.review.get("instructions", "")),
    )


@bp.get("/tasks/<string:task>/review/progress")
@roles("reviewer")
def review_progress(task: str) -> Response:
    """How many cases are left for the signed-in reviewer (the review page's counter)."""
    row = task_service.get_task(db_session(), task, actor())
    return jsonify(review_service.reviewer_progress(db_session(), row, current_user.user.id))


#: Queue filters reviewers do not get: they would pick out the audits (docs/review.md).
BLIND_FILTERS = ("status", "reason", "audit")


@bp.get("/tasks/<string:task>/queue")
@roles("reviewer", "analyst")
def queue_page(task: str) -> Any:
    try:
        args = parse_queue_args(request.args.to_dict())
    except ServiceError as exc:
        flash(f"Filters ignored: {exc.message}", "error")
        args = parse_queue_args({})
    blind = current_user.role not in case_service.FULL_VIEW_ROLES
    hidden = [name for name in BLIND_FILTERS if name in args] if blind else []
    if hidden:
        flash(f"Filters ignored: reviews are blind ({', '.join(hidden)}).", "error")
        args = {k: v for k, v in args.items() if k not in hidden}
    try:
        page = review_service.queue_page(
            db_session(), task, actor(), review_service.QueueFilter(**args)
        )
    except ValidationFailed as exc:
        flash(f"Search ignored: {exc.message}", "error")
        args = {k: v for k, v in args.items() if k not in ("field", "value")}
        page = review_service.queue_page(
            db_session(), task, actor(), review_service.QueueFilter(**args)
        )
    return render_template(
        "queue.html",
        task=task,
        page=page,
        args=args,
        reasons=REASONS,
        query=request.args,
        blind=blind,
        fields=task_service.get_task(db_session(), task, actor()).fields,
        admin=current_user.role == "admin",
    )


@bp.get("/cases/<string:case_id>")
@roles("reviewer", "analyst")
def case_page(case_id: str) -> str:
    session = db_session()
    me = actor()
    case = case_service.get_case(session, case_id, me)
    task = review_service.get_task_for_case(session, case)
    if me.role not in case_service.FULL_VIEW_ROLES:
        # Reviewers see a case as the review page shows it (docs/review.md, "Blind review").
        view = case_service.blind_view(session, case, task, me.id)
        return render_template(
            "case_blind.html",
            case=view,
            task=task,
            reasons=REVIEWER_REASON_TEXT,
            may_review=analyst.may_review(case),
        )
    detail = case_service.case_detail(session, case, everything=True)
    comments = {r.id: r.comment for r in case.reviews}
    events = audit.case_events(session, case.id)
    names = case_service.people_on_case(session, case, events)
    return render_template(
        "case.html",
        case=case,
        task=task,
        detail=detail,
        reviews=list(zip(case.reviews, detail["reviews"], strict=True)),
        comments=comments,
        events=case_history.timeline(case, events, names),
        names=names,
        may_review=analyst.may_review(case),
    )


@bp.get("/tasks/<string:task>/dashboard")
@roles("analyst")
def dashboard(task: str) -> str:
    row = task_service.get_task(db_session(), task, actor())
    config = {
        "task": row.name,
        "admin": current_user.role == "admin",
        "api": {
            "stats": f"/api/v1/tasks/{row.name}/stats",
            "models": f"/api/v1/tasks/{row.name}/models",
        },
    }
    config["glossary"] = analyst.GLOSSARY
    agreement = review_service.agreement_stats(db_session(), row)
    health = stats_service.task_health(db_session(), row)
    return render_template(
        "dashboard.html", task=row, config=config, agreement=agreement, health=health
    )


@bp.get("/tasks/<string:task>/export")
@roles("analyst")
def export_page(task: str) -> str:
    row = task_service.get_task(db_session(), task, actor())
    config = {
        "task": row.name,
        "api": {
            "list": f"/api/v1/tasks/{row.name}/exports",
            "create": f"/api/v1/tasks/{row.name}/exports",
            "stream": f"/api/v1/tasks/{row.name}/export",
            "export": "/api/v1/exports/",
        },
    }
    return render_template("export.html", task=row, config=config, reasons=REASONS)


# ------------------------------------------------------------------------- admin


def _scope(text: str) -> list[str] | None:
    names = [x.strip() for x in text.split(",") if x.strip()]
    return names or None


def _person_scope(form: Any) -> list[str] | None:
    """A person's tasks from an admin form: the task names typed, or "Every task" ticked
    (``None``). An empty field is passed on as an empty list, which the service refuses: it
    used to mean every task. A keyword typed in the field would not do: a task may be named
    like it."""
    names = _scope(form.get("task_scope", ""))
    if form.get("all_tasks") != "1":
        return names or []
    if names:
        raise ValidationFailed(
            "choose either Every task or task names, not both", {"task_scope": ["Both."]}
        )
    return None


@bp.route("/admin/users", methods=["GET", "POST"])
@roles("admin")
def admin_users() -> Any:
    form = {"email": "", "role": "reviewer", "task_scope": "", "all_tasks": "1"}
    if request.method == "POST":
        try:
            with unit_of_work() as session:
                user = accounts.create_user(
                    session,
                    email=request.form.get("email", ""),
                    password=request.form.get("password", ""),
                    role=request.form.get("role", ""),
                    task_scope=_person_scope(request.form),
                    actor=actor(),
                )
                flash(f"User {user.email} created.", "ok")
            return redirect(url_for("review_ui.admin_users"))
        except ServiceError as exc:
            db_session.remove()
            g.pop("_login_user", None)  # the signed-in user was on the removed session
            flash(f"Nothing was created: {exc.message}.", "error")
            # Refused: the form keeps what was typed (the password aside), to be mended.
            form = {key: request.form.get(key, "") for key in form}
    users = accounts.visible_users(db_session(), actor())
    return render_template("admin_users.html", users=users, roles=ROLES, form=form)


def _scope_text(scope: list[str] | None) -> str:
    return ", ".join(scope) if scope else "every task"


@bp.get("/admin/users/<int:user_id>")
@roles("admin")
def admin_user(user_id: int) -> str:
    """One account: role and tasks, a new password, deactivate or reactivate."""
    user = accounts.find_user(db_session(), actor(), user_id=user_id)
    return render_template("admin_user.html", user=user, roles=ROLES, me=current_user.user.id)


def _manage_user(user_id: int, change: Callable[[Any, User, Actor], str]) -> Response:
    """Run one account change through the service, commit once, say what happened."""
    try:
        with unit_of_work() as session:
            me = actor()
            message = change(session, accounts.find_user(session, me, user_id=user_id), me)
        flash(message, "ok")
    except ServiceError as exc:
        db_session.remove()
        g.pop("_login_user", None)  # the signed-in user was on the removed session
        flash(f"Nothing changed: {exc.message}.", "error")
    return redirect(url_for("review_ui.admin_user", user_id=user_id))


@bp.post("/admin/users/<int:user_id>/access")
@roles("admin")
def admin_user_access(user_id: int) -> Response:
    def change(session: Any, user: User, me: Actor) -> str:
        done = accounts.change_access(
            session,
            user,
            me,
            role=request.form.get("role") or None,
            task_scope=_person_scope(request.form),
        )
        if not done.changed:
            return f"No changes for {user.email}: nothing was saved."
        said = []
        if "role" in done.changed:
            said.append("role {} → {}".format(*done.changed["role"]))
        if "task_scope" in done.changed:
            before, after = done.changed["task_scope"]
            said.append(f"tasks: {_scope_text(before)} → {_scope_text(after)}")
        tail = (
            f"; {done.tokens_revoked} of their tokens "
            f"{'exceeds' if done.tokens_revoked == 1 else 'exceed'} the new rights and "
            f"{'was' if done.tokens_revoked == 1 else 'were'} revoked"
            if done.tokens_revoked
            else ""
        )
        return f"{user.email}: {', '.join(said)}{tail}."

    return _manage_user(user_id, change)


@bp.post("/admin/users/<int:user_id>/deactivate")
@roles("admin")
def admin_user_deactivate(user_id: int) -> Response:
    def change(session: Any, user: User, me: Actor) -> str:
        accounts.deactivate_user(session, user, me)
        return (
            f"{user.email} deactivated: signed out everywhere, their tokens revoked, the cases "
            "they held back in the queue."
        )

    return _manage_user(user_id, change)


@bp.post("/admin/users/<int:user_id>/reactivate")
@roles("admin")
def admin_user_reactivate(user_id: int) -> Response:
    def change(session: Any, user: User, me: Actor) -> str:
        accounts.reactivate_user(session, user, me)
        return f"{user.email} reactivated: they can sign in again (revoked tokens stay revoked)."

    return _manage_user(user_id, change)


@bp.post("/admin/users/<int:user_id>/password")
@roles("admin")
def admin_user_password(user_id: int) -> Response:
    def change(session: Any, user: User, me: Actor) -> str:
        accounts.reset_password(session, user, request.form.get("new_password", ""), me)
        return (
            f"New password set for {user.email}: their sessions ended and their tokens were "
            "revoked. Give them the password in person or over a separate channel."
        )

    return _manage_user(user_id, change)


#: The session key that carries a new token's secret from the POST to the page after the
#: redirect, for one read (the cookie is signed, HttpOnly and SameSite; the next response
#: drops the value again). Never in the URL, never stored server-side in clear.
NEW_TOKEN_KEY = "tandem.new_token"  # noqa: S105 (a session key, not a secret)


@bp.route("/admin/tokens", methods=["GET", "POST"])
@roles("admin")
def admin_tokens() -> Any:
    """Post/Redirect/Get: creating answers with a redirect, so a reload shows the list and
    creates nothing; the secret is shown once, on the page the redirect lands on."""
    if request.method == "POST":
        try:
            with unit_of_work() as session:
                new = accounts.create_token(
                    session,
                    role=request.form.get("role", ""),
                    name=(request.form.get("name") or "").strip() or "unnamed",
                    task_scope=_scope(request.form.get("task_scope", "")),
                    actor=actor(),
                )
                flask_session[NEW_TOKEN_KEY] = {"token": new.token, "name": new.record.name}
        except ServiceError as exc:
            db_session.remove()
            g.pop("_login_user", None)  # the signed-in user was on the removed session
            flash(exc.message, "error")
        return redirect(url_for("review_ui.admin_tokens"))
    created = flask_session.pop(NEW_TOKEN_KEY, None)
    tokens = accounts.visible_tokens(db_session(), actor())
    return render_template("admin_tokens.html", tokens=tokens, roles=ROLES, created=created)


def _visible_token(token_id: int) -> Any:
    tokens = accounts.visible_tokens(db_session(), actor())
    row = next((t for t in tokens if t.id == token_id), None)
    if row is None:
        abort(404)
    return row


@bp.get("/admin/tokens/<int:token_id>/revoke")
@roles("admin")
def admin_confirm_revoke_token(token_id: int) -> Any:
    """The confirmation step: which token, and what revoking it does."""
    return render_template("admin_token_revoke.html", token=_visible_token(token_id))


@bp.post("/admin/tokens/<int:token_id>/revoke")
@roles("admin")
def admin_revoke_token(token_id: int) -> Response:
    try:
        with unit_of_work() as session:
            row = accounts.revoke_token(session, token_id, actor())
            flash(f"Token {row.name} ({row.prefix}…) revoked: it no longer works.", "ok")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("review_ui.admin_tokens"))


# (name, HTML number step, label, glossary key of its "?" help or "")
POLICY_FIELDS = (
    ("target_error", "any", "Target error (α)", "target_error"),
    ("confidence", "any", "Confidence (1 − δ)", "confidence"),
    ("audit_rate", "any", "Audit rate", "audit"),
    ("min_labels", "1", "Labels before the first model", "min_labels"),
    ("max_coverage_step", "any", "Largest coverage step", "max_coverage_step"),
    ("retrain_every", "1", "Retrain every N labels", "retrain_every"),
    ("second_review_rate", "any", "Second blind review (share of audits)", "second_review"),
    (
        "watch_min_answers",
        "1",
        "Live watch: audited answers before it may fall back",
        "watch_min_answers",
    ),
    ("watch_confidence", "any", "Live watch: confidence of its test", "watch_confidence"),
)
#: Fields that may be left empty: they then follow another setting (placeholder, that field).
POLICY_OPTIONAL = {"watch_confidence": ("same as Confidence", "confidence")}
REVIEW_FIELDS = (
    ("lease_seconds", "1", "Lease (seconds)", "lease_seconds"),
    ("reviewers_per_case", "1", "Reviewers per case", "reviewers_per_case"),
    ("sla_seconds", "1", "SLA (seconds)", "sla_seconds"),
)


#: How far inside an exclusive end the browser's bound sits (HTML bounds are inclusive).
EXCLUSIVE_STEP = 0.0001


def _input_bounds(schema: Any) -> dict[str, dict[str, float]]:
    """HTML min/max of each number field, read from the patch schema's own ranges (one
    source of truth). HTML bounds are inclusive: an exclusive end (audit rate above 0, watch
    confidence below 1) sits one step inside it."""
    bounds: dict[str, dict[str, float]] = {}
    for name, field in schema.fields.items():
        for rule in getattr(field, "validators", ()):
            if isinstance(rule, validate.Range):
                ends = bounds.setdefault(name, {})
                if rule.min is not None:
                    ends["min"] = rule.min if rule.min_inclusive else rule.min + EXCLUSIVE_STEP
                if rule.max is not None:
                    ends["max"] = rule.max if rule.max_inclusive else rule.max - EXCLUSIVE_STEP
    for name in set(RATES_BELOW_ONE) & set(bounds):
        bounds[name]["max"] = 1.0 - EXCLUSIVE_STEP  # the schema takes 1; a task refuses it
    return bounds


_POLICY_BOUNDS = {
    "policy": _input_bounds(PolicyPatchSchema()),
    "review": _input_bounds(ReviewPatchSchema()),
}


def _form_number(value: str, *, whole: bool) -> Any:
    """A form's text as the JSON number the API would receive; anything else is passed on
    as text, so the schema names the field (whole numbers are strict: 10.5 is refused)."""
    try:
        return int(value) if whole else float(value)
    except ValueError:
        return value


def _policy_form_changes(
    stored: Any, form: Any
) -> tuple[dict[str, dict[str, Any]], list[str], list[tuple[str, str, str]]]:
    """What the policy form changes: the patch (only fields whose value differs from the
    stored one), one sentence per change ("Audit rate 0.05 → 0.1"), and the fields that
    were emptied (section, name, label) while they hold a value. A field the request does not
    carry at all is left as it is."""
    patch: dict[str, dict[str, Any]] = {"policy": {}, "review": {}}
    changes: list[str] = []
    emptied: list[tuple[str, str, str]] = []
    for section, fields in (("policy", POLICY_FIELDS), ("review", REVIEW_FIELDS)):
        current = getattr(stored, section) or {}
        for name, step, label, _help in fields:
            if name not in form:
                continue  # not sent at all (a client posting some fields): left as it is
            value = form.get(name, "").strip()
            if value == "":
                if name in POLICY_OPTIONAL and current.get(name) is not None:
                    patch[section][name] = None  # back to following the other setting
                    said, followed = POLICY_OPTIONAL[name]
                    now = current.get(followed)
                    shown = said if now is None else f"{said} ({now})"
                    changes.append(f"{label} {current.get(name)} → {shown}")
                elif current.get(name) is not None:
                    emptied.append((section, name, label))
                continue
            number = _form_number(value, whole=step == "1")
            if isinstance(number, str) or number != current.get(name):
                patch[section][name] = number
                before = current.get(name)
                changes.append(f"{label} {'not set' if before is None else before} → {value}")
    # Browsers send textarea lines with CRLF: store what was typed, not a change nobody made.
    instructions = form.get("instructions", "").replace("\r\n", "\n")
    if "instructions" in form and instructions != (stored.review or {}).get("instructions", ""):
        patch["review"]["instructions"] = instructions
        changes.append("reviewer instructions updated")
    return patch, changes, emptied


@bp.route("/admin/tasks/<string:task>/policy", methods=["GET", "POST"])
@roles("admin")
def admin_policy(task: str) -> Any:
    errors: dict[str, Any] = {}
    if request.method == "POST":
        stored = task_service.get_task(db_session(), task, actor())
        patch, changes, emptied = _policy_form_changes(stored, request.form)
        if emptied:
            # An emptied field is refused by name, never read as "keep the old value" while
            # the page says it saved (issue #19).
            for section, name, label in emptied:
                current = getattr(stored, section).get(name)
                errors.setdefault(section, {})[name] = [
                    f"{label} was left empty: enter a value (it is {current} now)."
                ]
            names = ", ".join(label for _section, _name, label in emptied)
            flash(f"Nothing was saved: {names} left empty. Every field needs a value.", "error")
        elif not changes:
            flash("No changes: nothing was saved.", "ok")
            return redirect(url_for("review_ui.admin_policy", task=task))
        else:
            try:
                data = TaskPatchSchema().load({k: v for k, v in patch.items() if v})
                with unit_of_work() as session:
                    row = task_service.get_task(session, task, actor())
                    was_automating = row.automation_state == "automating"
                    task_service.update_task(session, row, data, actor())
                    stopped = was_automating and row.automation_state != "automating"
                    reason = row.automation_reason
                said = "Policy saved: " + "; ".join(changes) + "."
                if stopped:
                    flash(f"{said} Automation stopped: {reason}.", "error")
                else:
                    flash(said, "ok")
                return redirect(url_for("review_ui.admin_policy", task=task))
            except ValidationError as exc:
                errors = exc.normalized_messages()
                flash("Some values are not valid; nothing was saved.", "error")
            except ServiceError as exc:
                db_session.remove()
                g.pop("_login_user", None)  # the signed-in user was on the removed session
                errors = exc.details or {}
                # Field errors are shown under their fields; the banner says only the outcome.
                by_field = any(isinstance(errors.get(k), dict) for k in ("policy", "review"))
                flash(
                    "Some values are not valid; nothing was saved." if by_field else exc.message,
                    "error",
                )
    row = task_service.get_task(db_session(), task, actor())
    return render_template(
        "admin_policy.html",
        task=row,
        policy_fields=POLICY_FIELDS,
        review_fields=REVIEW_FIELDS,
        optional=POLICY_OPTIONAL,
        bounds=_POLICY_BOUNDS,
        errors=errors,
        form=request.form if request.method == "POST" else None,
    )


# Analyst and admin additions (glossary, help, review this case, bulk release): registered
# on this blueprint by importing the module.
from review_ui import analyst  # noqa: E402
