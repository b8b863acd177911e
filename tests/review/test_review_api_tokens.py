"""Reviewing through the API with a token bound to a reviewer (docs/review.md, "Reviewing
through the API"): the documented curl sequence is run as written, and a token bound to no
one is told how to get one that can review."""

from __future__ import annotations

import json
import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from service.db import utcnow
from service.models import Case, Review
from service.services.accounts import create_token
from service.services.audit import SYSTEM
from service.uow import unit_of_work
from tests.helpers import auth
from tests.review.conftest import make_user

DOC = Path(__file__).resolve().parents[2] / "docs" / "review.md"


def documented_calls() -> list[tuple[str, str, Any, int]]:
    """(method, path, JSON body or None, expected status) of every curl in the section, in
    order. Shell quoting is undone by shlex, as a shell would; variables stay to be filled."""
    text = DOC.read_text()
    section = text.split("## Reviewing through the API", 1)[1].split("\n## ", 1)[0]
    calls: list[tuple[str, str, Any, int]] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("curl "):
                continue
            args = shlex.split(line)
            method = args[args.index("-X") + 1] if "-X" in args else "GET"
            url = next(a for a in args[1:] if a.startswith("$TANDEM"))
            body = json.loads(args[args.index("-d") + 1]) if "-d" in args else None
            expected = re.match(r"# → (\d{3})", lines[i + 1])
            assert expected, f"no '# → status' line after {line!r}"
            calls.append((method, url.removeprefix("$TANDEM"), body, int(expected.group(1))))
    return calls


def fill(value: Any, case_id: str | None) -> Any:
    encoded = json.dumps(value)
    return json.loads(encoded.replace("$CASE_ID", case_id or "")) if value is not None else None


def reviewer_token(db: Any, task_scope: list[str] | None = None) -> tuple[str, Any]:
    user = make_user(db())
    db.commit()
    with unit_of_work() as session:
        token = create_token(
            session,
            role="reviewer",
            name="case tool",
            task_scope=task_scope,
            actor=SYSTEM,
            user_email=user.email,
        ).token
    return token, user


def test_the_documented_sequence_runs_as_written(client, tokens, task, db):
    for i in range(2):  # two queued cases, sent as the application sends them
        resp = client.post(
            "/api/v1/tasks/loan-review/predict",
            json={"input": {"review": f"case {i}", "state": "CA"}, "external_id": f"x{i}"},
            headers=auth(tokens["app"]),
        )
        assert resp.status_code == 202, resp.json
    token, user = reviewer_token(db)
    calls = documented_calls()
    assert [c[0] for c in calls].count("POST") >= 6  # claim, review, 409, claim, release, 204
    case_id: str | None = None
    seen: list[Any] = []
    for method, path, body, expected in calls:
        url = path.replace("$CASE_ID", case_id or "")
        resp = client.open(url, method=method, json=fill(body, case_id), headers=auth(token))
        assert resp.status_code == expected, (method, url, resp.get_data(as_text=True))
        if url.endswith("/queue/claim") and resp.status_code == 200:
            case_id = resp.json["case_id"]
            assert resp.json["queue_state"] == "leased" and resp.json["lease_expires_at"]
            assert "suggestion" not in resp.json  # the blind view
        seen.append((method, url, resp.status_code, resp.json if resp.data else None))
    reviewed = db.scalars(select(Review).where(Review.reviewer_id == user.id)).all()
    assert [r.label for r in reviewed] == ["good"] and reviewed[0].comment == "stable income"
    released = [s for s in seen if s[1].endswith("/release")]
    assert released and released[0][3]["queue_state"] == "waiting"
    assert seen[-1][2] == 204  # the skipped case was passed over


def test_a_decision_after_the_lease_ran_out_is_409_and_a_new_claim_recovers(
    client, tokens, task, db
):
    client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": {"review": "late", "state": "CA"}},
        headers=auth(tokens["app"]),
    )
    token, _ = reviewer_token(db)
    claimed = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(token)).json
    db.execute(
        update(Case)
        .where(Case.id == claimed["case_id"])
        .values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    db.commit()
    late = client.post(
        f"/api/v1/cases/{claimed['case_id']}/review", json={"label": "bad"}, headers=auth(token)
    )
    assert late.status_code == 409 and late.json["error"]["details"]["reason"] == "lease_expired"
    again = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(token))
    assert again.status_code == 200 and again.json["case_id"] == claimed["case_id"]
    ok = client.post(
        f"/api/v1/cases/{claimed['case_id']}/review", json={"label": "bad"}, headers=auth(token)
    )
    assert ok.status_code == 200


def test_a_token_bound_to_no_one_is_told_how_to_get_one_that_reviews(client, tokens, task):
    for url in ("/api/v1/tasks/loan-review/queue/claim", "/api/v1/cases/nope/release"):
        resp = client.post(url, headers=auth(tokens["reviewer"]))
        assert resp.status_code == 403
        message = resp.json["error"]["message"]
        assert "a token bound to a reviewer's account can claim and decide cases" in message.lower()
        assert "tandem token create --role reviewer --user EMAIL" in message
        assert 'docs/review.md, "Reviewing through the API"' in message


def test_a_reviewer_reads_a_case_as_the_whole_blind_view(client, tokens, task, db):
    """``GET /cases/{id}`` gives a reviewer the same blind view the claim gave (task, lease,
    SLA and own decisions), not the fields it happens to share with the analysts' view."""
    client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": {"review": "late", "state": "CA"}},
        headers=auth(tokens["app"]),
    )
    token, _ = reviewer_token(db)
    claimed = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(token)).json
    read = client.get(f"/api/v1/cases/{claimed['case_id']}", headers=auth(token))
    assert read.status_code == 200
    for key in ("task", "sla_breached", "lease_expires_at", "claimed_at", "queue_state"):
        assert read.json[key] == claimed[key], key
    for hidden in ("suggestion", "status", "final_label", "audit"):
        assert hidden not in read.json
