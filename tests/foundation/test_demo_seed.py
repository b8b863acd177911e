"""`tandem demo`'s first impression (issue #4): after seeding, a certified model automates
part of the traffic, the queue holds live cases and the dashboard has history — on SQLite,
the embedded demo's database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from service import migrate
from service.config import Settings
from service.db import db_session
from service.models import AuditEvent, Case, ModelVersion, Task, seeded_ids
from service.services.automation import drift_check
from service.services.stats import task_stats
from tandem.app import create_app
from tandem.demo import DEMO_SHUFFLE_SEED, DEMO_TASK, HISTORY_ROWS, LIVE_ROWS, seed_demo


def test_demo_seed_certifies_and_automates(tmp_path: Path) -> None:
    from tests.conftest import TEST_REDIS_URL

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'demo.db'}",
        redis_url=TEST_REDIS_URL,
        home=tmp_path,
        secret_key="demo-test",
        embedded=False,
        session_cookie_secure=False,
    )
    app = create_app(settings)
    migrate.upgrade(app.extensions["tandem_engine"])
    with app.app_context():
        info = seed_demo(app)
        task = db_session.scalar(select(Task).where(Task.name == DEMO_TASK))
        assert task is not None
        assert task.automation_state == "automating", task.automation_state
        assert task.coverage > 0.2 and task.threshold is not None
        # A new user's first dashboard has no false alarm: the seeded stream is steady
        # (issue #13: the file's own order made it look drifted, and the worker's first
        # drift check froze widening). Run that check now, as the worker will.
        report = drift_check(db_session, task)
        assert report["checked"] and report["warnings"] == [], report["warnings"]
        assert task.widening_frozen is False
        warnings = db_session.scalars(
            select(AuditEvent).where(AuditEvent.action == "drift.warning")
        ).all()
        assert [w.details for w in warnings] == []
        active = db_session.get(ModelVersion, task.active_model_id)
        assert active is not None and (active.certification or {}).get("certified")
        assert active.certification["error_bound"] <= task.policy["target_error"]
        cases = db_session.scalar(select(func.count()).select_from(Case))
        assert cases == HISTORY_ROWS + LIVE_ROWS
        # Every fresh demo audits the same cases (the draw hashes ids, and the seeded
        # history's ids come from one fixed seed), so this outcome is every newcomer's.
        make = seeded_ids(DEMO_SHUFFLE_SEED)
        expected = {make() for _ in range(cases)}
        assert set(db_session.scalars(select(Case.id))) == expected
        live = db_session.scalars(select(Case).order_by(Case.created_at.desc()).limit(LIVE_ROWS))
        statuses = [c.status for c in live]
        assert statuses.count("auto") > 0 and statuses.count("pending") > 0, statuses
        # the dashboard's numbers: automation measured over the seeded traffic, a queue
        stats = task_stats(db_session, task, since=None, until=None)
        assert stats["automation"]["rate"]["estimate"] > 0
        assert stats["queue"]["depth"] >= statuses.count("pending") > 0
        assert stats["live_error"]["estimate"] is not None
        # a second start finds the task and does not seed twice
        again = seed_demo(app)
        assert again["app_token"] == info["app_token"]
        assert db_session.scalar(select(func.count()).select_from(Case)) == cases
        # The printed curl example is answered automatically, as the README shows.
        import json

        resp = app.test_client().post(
            f"/api/v1/tasks/{DEMO_TASK}/predict",
            json=json.loads(info["example"]),
            headers={"Authorization": f"Bearer {info['app_token']}"},
        )
        assert resp.status_code == 200, resp.json
        assert resp.json["status"] == "auto" and resp.json["reason"] == "confident", resp.json
        db_session.remove()
    app.extensions["tandem_engine"].dispose()


def test_a_demo_whose_seeding_was_cut_short_says_so_and_how_to_start_over(
    flask_app: Any, committed_db: Any, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """An outside try stopped the first `tandem demo` while it seeded: every later start
    printed a full history over an empty queue. And a home folder that did not exist failed
    the first start after its task was stored. Now the folder is made first, and a start
    that finds an unfinished seed stops with what to do, storing nothing more."""
    import dataclasses

    import click
    import pytest

    import tandem.demo as demo

    home = tmp_path / "not" / "there" / "yet"
    flask_app.config["TANDEM"] = dataclasses.replace(flask_app.config["TANDEM"], home=home)

    def interrupted(*_args: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the history was being stored

    monkeypatch.setattr(demo, "_seed_history", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seed_demo(flask_app)
    said = capsys.readouterr().err
    assert "Setting up the demo" in said and "unfinished" in said and "start over" in said
    assert (home / "demo_app_token").exists()
    monkeypatch.undo()
    events = committed_db.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(click.ClickException) as refused:
        seed_demo(flask_app)
    message = refused.value.message
    assert "incomplete" in message and f"0 of {HISTORY_ROWS + LIVE_ROWS:,} cases" in message
    assert ("delete " + str(home)) in message or "empty database" in message
    committed_db.expire_all()
    assert committed_db.scalar(select(func.count()).select_from(Case)) == 0
    assert committed_db.scalar(select(func.count()).select_from(AuditEvent)) == events
