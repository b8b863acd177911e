"""Flask-Login wiring: people log in to the review UI with e-mail and password."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from flask_login import LoginManager, UserMixin

from service.db import db_session
from service.models import User

login_manager = LoginManager()
login_manager.login_view = "review_ui.login"
login_manager.session_protection = "strong"


class LoginUser(UserMixin):
    """The session's view of a user; re-read every request so deactivation is immediate."""

    def __init__(self, user: User) -> None:
        self.user = user

    def get_id(self) -> str:
        # The epoch rides in the session (Flask-Login's "alternative tokens"): when the
        # user's epoch moves on, every session holding the old one stops loading.
        return f"{self.user.id}:{self.user.session_epoch}"

    @property
    def is_active(self) -> bool:
        return bool(self.user.active)

    @property
    def role(self) -> str:
        return self.user.role


@login_manager.user_loader
def _load_user(session_id: str) -> LoginUser | None:
    user_id, _, epoch = str(session_id).partition(":")
    try:
        user = db_session().get(User, int(user_id))
        current = user is not None and int(epoch) == user.session_epoch
    except (TypeError, ValueError):
        return None
    return LoginUser(user) if user is not None and current and user.active else None


def init_app(app: Flask, *, secure_cookies: bool) -> None:
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        SESSION_COOKIE_NAME="tandem_session",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
    )
    login_manager.init_app(app)
