"""The admin policy page says when a save stops automation (docs/policy.md, "Editing the
policy"), stores the instructions as typed, and sets the live watch's minimum."""

from __future__ import annotations

from sqlalchemy import select

from service.models import Task
from tests.helpers import install_model, set_on_policy_page


def test_the_policy_page_says_when_a_save_stops_automation(browser_user, task, db):
    client, headers, _ = browser_user("admin")
    install_model(db, task["name"], threshold=0.5)
    db.commit()
    url = f"/admin/tasks/{task['name']}/policy"
    token = headers["X-CSRFToken"]
    looser = client.post(url, data={"target_error": "0.05", "csrf_token": token})
    assert looser.status_code == 302
    page = client.get(url).get_data(as_text=True)
    assert "Policy saved: Target error" in page and "Automation stopped" not in page
    tighter = client.post(url, data={"target_error": "0.01", "csrf_token": token})
    assert tighter.status_code == 302
    page = client.get(url).get_data(as_text=True)
    assert "Automation stopped: stopped by a policy edit (target error tightened" in page
    db.expire_all()
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    assert row.automation_state == "manual" and "policy edit" in row.automation_reason


def test_the_policy_page_stores_instructions_as_typed(browser_user, task, db):
    client, headers, _ = browser_user("admin")
    url = f"/admin/tasks/{task['name']}/policy"
    saved = client.post(
        url, data={"instructions": "Line one\r\nLine two", "csrf_token": headers["X-CSRFToken"]}
    )
    assert saved.status_code == 302
    db.expire_all()
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    assert row.review["instructions"] == "Line one\nLine two"


def test_an_admin_sets_the_watch_minimum_on_the_policy_page(browser_user, task, db):
    client, headers, _ = browser_user("admin")
    set_on_policy_page(
        client, headers, db, task["name"], "watch_min_answers", bad="12.5", good="30", stored=30
    )


def test_an_admin_sets_and_clears_the_watch_confidence_on_the_policy_page(browser_user, task, db):
    from service.models import AuditEvent

    client, headers, _ = browser_user("admin")
    page = client.get(f"/admin/tasks/{task['name']}/policy").get_data(as_text=True)
    assert 'placeholder="same as Confidence" value="0.99"' in page  # a new task's default
    set_on_policy_page(
        client, headers, db, task["name"], "watch_confidence", bad="1.5", good="0.995", stored=0.995
    )
    # Emptied, this field goes back to following the task's confidence (said and audited),
    # where any other emptied field is refused.
    url = f"/admin/tasks/{task['name']}/policy"
    cleared = client.post(url, data={"watch_confidence": "", "csrf_token": headers["X-CSRFToken"]})
    assert cleared.status_code == 302
    said = client.get(url).get_data(as_text=True)
    assert "0.995 → same as Confidence (0.95)" in said
    assert 'placeholder="same as Confidence" value=""' in said
    db.expire_all()
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    assert row.policy["watch_confidence"] is None
    changed = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.changed")).all()
    assert changed[-1].details["after"]["policy"]["watch_confidence"] is None


def test_a_rate_the_task_could_never_learn_with_is_refused_on_its_field(browser_user, task, db):
    client, headers, _ = browser_user("admin")
    url = f"/admin/tasks/{task['name']}/policy"
    page = client.get(url).get_data(as_text=True)
    assert 'id="audit_rate"' in page and 'max="0.9999"' in page  # the browser stops 1 too
    before = db.scalar(select(Task.policy).where(Task.name == task["name"]))
    refused = client.post(url, data={"audit_rate": "1", "csrf_token": headers["X-CSRFToken"]})
    body = refused.get_data(as_text=True)
    assert refused.status_code == 200
    assert "Some values are not valid; nothing was saved." in body
    assert "1 is too high: every case would be drawn for the audit sample" in body
    assert "audit_rate 1" not in body  # the banner does not repeat it with the field's key
    db.expire_all()
    assert db.scalar(select(Task.policy).where(Task.name == task["name"])) == before
