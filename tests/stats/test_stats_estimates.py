"""Stats shown to people: Hájek estimates on constructed traffic with known answers, the
series, the queue rebuilt over time, reviewers, drift; the API contract and its roles.
Run on PostgreSQL (fixtures) and on SQLite (the embedded demo's database)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from service.models import Case, ModelVersion, Review, Task, User, new_id
from service.services.stats import task_stats, weighted_from_counts
from tests.helpers import SIMPLE_TASK, auth, make_token

DAY1 = datetime(2024, 3, 4, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
NOW = DAY3 + timedelta(hours=6)


def _case(task_id: int, created: datetime, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_id(),
        "task_id": task_id,
        "input": {"review": "x", "state": "CA"},
        "suggestion_label": "good",
        "confidence": 0.9,
        "route": "auto",
        "reason": "confident",
        "audit": False,
        "label_probability": 1.0,
        "status": "auto",
        "queue_state": None,
        "human_label": None,
        "human_labelled_at": None,
        "label_source": "model",
        "final_label": "good",
        "resolved_at": created,
        "created_at": created,
        "updated_at": created,
    }
    row.update(kw)
    return row


def _auto(task_id: int, created: datetime, pi: float, labelled: bool, wrong: bool) -> dict:
    if not labelled:
        return _case(task_id, created, label_probability=pi)
    return _case(
        task_id,
        created,
        label_probability=pi,
        audit=True,
        human_label="bad" if wrong else "good",
        human_labelled_at=created + timedelta(minutes=30),
    )


def seed_population(session: Session, task_id: int) -> dict[str, float]:
    """1,700 cases whose every figure is known exactly.

    Day 1: 400 automatic answers audited at π = 0.5 (error 10%: 40 wrong, 20 of the 200
    audited). Day 2: 1,000 automatic answers audited at π = 0.1 (error 1%: 10 wrong, 1 of the
    100 audited), plus 300 cases routed to people (30% overridden), each decided 10·k minutes
    after arrival. The audit sample is balanced, so the Hájek estimate equals the population
    value exactly, while the plain average over labelled cases is pulled towards day 1.
    """
    rows: list[dict[str, Any]] = []
    for i in range(400):
        t = DAY1 + timedelta(seconds=60 * i)
        labelled = i < 200
        wrong = (i % 10 == 0) if labelled else (i % 10 == 1)
        rows.append(_auto(task_id, t, 0.5, labelled, wrong))
    for i in range(1000):
        t = DAY2 + timedelta(seconds=30 * i)
        labelled = i % 10 == 0
        wrong = (i == 0) if labelled else (i in (1, 2, 3, 4, 5, 6, 7, 8, 9))
        rows.append(_auto(task_id, t, 0.1, labelled, wrong))
    for i in range(300):
        t = DAY2 + timedelta(hours=6, seconds=60 * i)
        decided = t + timedelta(minutes=10 * (1 + i % 10))
        rows.append(
            _case(
                task_id,
                t,
                route="review",
                reason="low_confidence",
                confidence=0.6,
                status="resolved",
                label_source="reviewer",
                human_label="bad" if i % 10 < 3 else "good",
                final_label="bad" if i % 10 < 3 else "good",
                human_labelled_at=decided,
                resolved_at=decided,
            )
        )
    session.execute(insert(Case), rows)
    session.flush()
    return {
        "automation_rate": 1400 / 1700,
        "live_error": 50 / 1400,
        "live_error_naive": 21 / 300,
        "override_rate": 140 / 1700,
        "override_naive": 111 / 600,
    }


def _seeded_task(db: Any, task: dict[str, Any]) -> tuple[Task, dict[str, float]]:
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    return row, seed_population(db, row.id)


def test_weighted_estimates_equal_population_values_naive_ones_do_not(app, db, task):
    row, truth = _seeded_task(db, task)
    out = task_stats(db, row, since=DAY1, until=DAY3, now=NOW)
    live = out["live_error"]
    assert live["n"] == 300
    assert live["estimate"] == pytest.approx(truth["live_error"], abs=1e-12)
    assert live["lower"] < truth["live_error"] < live["upper"]
    assert abs(truth["live_error_naive"] - truth["live_error"]) > 0.03
    assert live["target"] == 0.02
    over = out["override_rate"]
    assert over["n"] == 600
    assert over["estimate"] == pytest.approx(truth["override_rate"], abs=1e-12)
    assert over["lower"] < truth["override_rate"] < over["upper"]
    # The plain average over labelled cases describes the queue, not the traffic: it lies
    # far outside the weighted interval.
    assert truth["override_naive"] > over["upper"]
    rate = out["automation"]["rate"]
    assert rate["estimate"] == pytest.approx(truth["automation_rate"])
    ci = sps.binomtest(1400, 1700).proportion_ci(0.95, method="exact")
    assert rate["lower"] == pytest.approx(ci.low, rel=1e-6)
    assert rate["upper"] == pytest.approx(ci.high, rel=1e-6)


def test_series_buckets_by_day_and_hour(app, db, task):
    row, _ = _seeded_task(db, task)
    daily = task_stats(db, row, since=DAY1, until=DAY3, bucket="day", now=NOW)["series"]
    assert [p["bucket"] for p in daily] == [DAY1, DAY2]
    assert [p["cases"] for p in daily] == [400, 1300]
    assert [p["auto"] for p in daily] == [400, 1000]
    assert daily[1]["automation_rate"] == pytest.approx(1000 / 1300)
    assert daily[0]["live_error"] == pytest.approx(0.10)
    assert daily[1]["live_error"] == pytest.approx(0.01)
    assert daily[0]["live_error_lower"] < 0.10 < daily[0]["live_error_upper"]
    # Labels count in the bucket the verdict arrived: day 1's 200 audits, day 2's 100 + 300.
    assert [p["labelled"] for p in daily] == [200, 400]
    assert daily[0]["median_decision_seconds"] is None
    assert daily[1]["median_decision_seconds"] == pytest.approx(55 * 60)
    hourly = task_stats(
        db, row, since=DAY2 + timedelta(hours=6), until=DAY2 + timedelta(hours=9), now=NOW
    )
    assert hourly["window"]["bucket"] == "hour"  # short windows default to hours
    # Day 2's automatic answers arrive every 30 s until 08:20; routed ones every minute from 06:00.
    assert [p["cases"] for p in hourly["series"]] == [180, 180, 100]
    assert [p["auto"] for p in hourly["series"]] == [120, 120, 40]
    assert hourly["series"][2]["automation_rate"] == pytest.approx(0.4)
    empty = task_stats(db, row, since=DAY3, until=DAY3 + timedelta(days=2), bucket="day", now=NOW)
    assert [p["cases"] for p in empty["series"]] == [0, 0]
    assert empty["series"][0]["automation_rate"] is None
    assert empty["live_error"]["estimate"] is None and empty["live_error"]["n"] == 0


def test_time_to_decision_counts_only_people_deciding_routed_cases(app, db, task):
    row, _ = _seeded_task(db, task)
    ttd = task_stats(db, row, since=DAY1, until=DAY3, now=NOW)["time_to_decision"]
    minutes = np.array([10 * (1 + i % 10) for i in range(300)]) * 60.0
    assert ttd["median_seconds"] == pytest.approx(float(np.percentile(minutes, 50)))
    assert ttd["p90_seconds"] == pytest.approx(float(np.percentile(minutes, 90)))


def seed_queue(session: Session, task_id: int) -> list[tuple[datetime, datetime | None]]:
    """Cases entering the queue at various hours, leaving (or not) later; returns intervals."""
    rng = random.Random(7)
    rows, spans = [], []
    for _ in range(120):
        created = DAY1 + timedelta(minutes=rng.randrange(0, 48 * 60))
        audited_auto = rng.random() < 0.3
        left = created + timedelta(minutes=rng.randrange(5, 600))
        if left > NOW or rng.random() < 0.2:
            left = None
        common = {"human_label": "good" if left else None, "human_labelled_at": left}
        if audited_auto:
            rows.append(
                _case(
                    task_id,
                    created,
                    audit=True,
                    label_probability=0.2,
                    queue_state=None if left else "waiting",
                    **common,
                )
            )
        else:
            rows.append(
                _case(
                    task_id,
                    created,
                    route="review",
                    reason="low_confidence",
                    status="resolved" if left else "pending",
                    label_source="reviewer" if left else None,
                    final_label="good" if left else None,
                    resolved_at=left,
                    queue_state=None if left else "waiting",
                    **common,
                )
            )
        spans.append((created, left))
    # Traffic that never enters the queue must not count.
    rows += [_case(task_id, DAY1 + timedelta(hours=h)) for h in range(48)]
    session.execute(insert(Case), rows)
    session.flush()
    return spans


def test_queue_depth_series_matches_replayed_history(app, db, task):
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    spans = seed_queue(db, row.id)
    since = DAY1 + timedelta(hours=5)
    out = task_stats(db, row, since=since, until=DAY3, bucket="hour", now=NOW)
    assert out["queue"]["depth"] == sum(1 for _, left in spans if left is None)
    oldest = min(c for c, left in spans if left is None)
    assert out["queue"]["oldest_pending_seconds"] == pytest.approx((NOW - oldest).total_seconds())
    for point in out["series"]:
        end = min(point["bucket"] + timedelta(hours=1), DAY3)
        expected = sum(1 for c, left in spans if c < end and (left is None or left >= end))
        assert point["queue_depth"] == expected, point["bucket"]


def test_reviewer_figures_use_pseudonyms(app, db, task):
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    users = [
        User(email=f"r{i}@example.com", password_hash="x", role="reviewer", pseudonym=f"rev-{i}")
        for i in range(2)
    ]
    db.add_all(users)
    db.flush()
    cases = [
        _case(
            row.id,
            DAY2,
            route="review",
            status="resolved",
            outcome_label="good" if i < 4 else None,
            final_label="good",
        )
        for i in range(6)
    ]
    db.execute(insert(Case), cases)
    reviews = []
    for i, c in enumerate(cases):
        # rev-0 decides every case (agrees with the model on 4 of 6, 30 s each);
        # rev-1 gives a second opinion on cases 4 and 5 (disagreeing on 5).
        reviews.append(
            {
                "case_id": c["id"],
                "task_id": row.id,
                "reviewer_id": users[0].id,
                "label": "good" if i % 3 else "bad",
                "agreed_with_model": bool(i % 3),
                "duration_ms": 30_000,
                "decided_at": DAY2 + timedelta(minutes=i),
            }
        )
    for i in (4, 5):
        reviews.append(
            {
                "case_id": cases[i]["id"],
                "task_id": row.id,
                "reviewer_id": users[1].id,
                "label": "good" if i == 4 else "bad",
                "agreed_with_model": i == 4,
                "duration_ms": 90_000,
                "decided_at": DAY2 + timedelta(hours=1),
            }
        )
    db.execute(insert(Review), reviews)
    db.flush()
    out = task_stats(db, row, since=DAY1, until=DAY3, now=NOW)["reviewers"]
    assert [r["reviewer_id"] for r in out] == ["rev-0", "rev-1"]
    r0, r1 = out
    assert r0["reviews"] == 6 and r0["override_rate"] == pytest.approx(2 / 6)
    assert r0["median_seconds"] == 30.0
    # rev-0 against the other human verdict: the outcome "good" on cases 0-3 (rev-0 said
    # bad, good, good, bad) and the final label "good" on 4, 5 (rev-0 said good, good).
    assert r0["agreement_rate"] == pytest.approx(4 / 6)
    assert r1["reviews"] == 2 and r1["override_rate"] == 0.5 and r1["agreement_rate"] == 0.5
    assert all("@" not in str(v) for r in out for v in r.values())


def test_drift_psi_against_training_reference(app, db, task):
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    rng = np.random.default_rng(3)
    reference = (0.5 + 0.5 * rng.beta(5, 1, 1000)).round(4).tolist()
    version = ModelVersion(task_id=row.id, version=1, status="active", profile={})
    db.add(version)
    db.flush()
    row.active_model_id = version.id
    db.flush()
    shifted = 0.5 + 0.5 * rng.beta(1, 1, 300)
    db.execute(
        insert(Case),
        [
            _case(
                row.id,
                DAY2 + timedelta(minutes=i),
                confidence=float(s),
                model_version_id=version.id,
            )
            for i, s in enumerate(shifted)
        ],
    )
    db.flush()
    no_ref = task_stats(db, row, since=DAY1, until=DAY3, now=NOW)["drift"]
    assert no_ref == {"warning": False, "psi": None, "fields": {}}
    row.widening_frozen = True
    assert task_stats(db, row, since=DAY1, until=DAY3, now=NOW)["drift"]["warning"] is True
    row.widening_frozen = False
    version.profile = {"reference_scores": reference}
    db.flush()
    drift = task_stats(db, row, since=DAY1, until=DAY3, now=NOW)["drift"]
    assert drift["psi"] > 0.2 and drift["warning"] is True
    same = (0.5 + 0.5 * rng.beta(5, 1, 300)).tolist()
    db.execute(
        insert(Case),
        [
            _case(row.id, DAY3 + timedelta(minutes=i), confidence=s, model_version_id=version.id)
            for i, s in enumerate(same)
        ],
    )
    db.flush()
    calm = task_stats(db, row, since=DAY3, until=NOW, now=NOW)["drift"]
    assert calm["psi"] < 0.1 and calm["warning"] is False


def test_interval_covers_the_population_rate_in_repeated_draws():
    """Monte Carlo of the estimator the dashboard uses: random audit draws at two rates from
    a population with known error; the weighted interval covers it at about its level, the
    plain average's interval does not."""
    rng = np.random.default_rng(11)
    n1, n2, pi1, pi2 = 400, 1000, 0.5, 0.1
    err1 = rng.random(n1) < 0.10
    err2 = rng.random(n2) < 0.01
    truth = (err1.sum() + err2.sum()) / (n1 + n2)
    covered = naive_covered = 0
    reps = 300
    for _ in range(reps):
        s1 = rng.random(n1) < pi1
        s2 = rng.random(n2) < pi2
        groups = [
            (pi1, 1, int(err1[s1].sum())),
            (pi1, 0, int((~err1[s1]).sum())),
            (pi2, 1, int(err2[s2].sum())),
            (pi2, 0, int((~err2[s2]).sum())),
        ]
        w = weighted_from_counts(groups, 0.95)
        covered += w["lower"] <= truth <= w["upper"]
        naive = weighted_from_counts([(1.0, v, n) for _, v, n in groups], 0.95)
        naive_covered += naive["lower"] <= truth <= naive["upper"]
    assert covered / reps >= 0.9
    assert naive_covered / reps < 0.5


# --- API ---------------------------------------------------------------------------------

CONTRACT = {
    "task",
    "window",
    "automation",
    "live_error",
    "override_rate",
    "time_to_decision",
    "queue",
    "reviewers",
    "audit_agreement",
    "series",
    "drift",
}


def test_stats_api_contract(client, tokens, task, db):
    _row, truth = _seeded_task(db, task)
    resp = client.get(
        "/api/v1/tasks/loan-review/stats?since=2024-03-04T00:00:00Z&until=2024-03-06T00:00:00Z"
        "&bucket=day",
        headers=auth(tokens["analyst"]),
    )
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert set(body) == CONTRACT
    assert body["task"] == "loan-review"
    assert body["window"] == {
        "since": "2024-03-04T00:00:00+00:00",
        "until": "2024-03-06T00:00:00+00:00",
        "bucket": "day",
    }
    assert set(body["automation"]) == {"state", "threshold", "model_version", "coverage", "rate"}
    assert set(body["automation"]["rate"]) == {"estimate", "lower", "upper"}
    assert set(body["live_error"]) == {"estimate", "lower", "upper", "n", "target"}
    assert set(body["override_rate"]) == {"estimate", "lower", "upper", "n"}
    assert set(body["time_to_decision"]) == {"median_seconds", "p90_seconds"}
    assert set(body["queue"]) == {"depth", "oldest_pending_seconds"}
    assert set(body["drift"]) == {"warning", "psi", "fields"}
    assert set(body["audit_agreement"]) == {"estimate", "lower", "upper", "n", "agreed"}
    assert len(body["series"]) == 2
    assert set(body["series"][0]) == {
        "bucket",
        "cases",
        "auto",
        "automation_rate",
        "threshold",
        "live_error",
        "live_error_lower",
        "live_error_upper",
        "queue_depth",
        "labelled",
        "median_decision_seconds",
    }
    assert body["series"][0]["bucket"] == "2024-03-04T00:00:00+00:00"
    assert body["live_error"]["estimate"] == pytest.approx(truth["live_error"])
    # A naive timestamp is read as UTC; default window is the last 7 days by day.
    naive = client.get(
        "/api/v1/tasks/loan-review/stats?since=2024-03-04T00:00:00&until=2024-03-06T00:00:00",
        headers=auth(tokens["admin"]),
    )
    assert naive.json["window"]["since"] == "2024-03-04T00:00:00+00:00"
    default = client.get("/api/v1/tasks/loan-review/stats", headers=auth(tokens["analyst"]))
    assert default.json["window"]["bucket"] == "day"
    assert len(default.json["series"]) in (7, 8)


def test_stats_api_roles_scope_and_bad_windows(client, tokens, task):
    url = "/api/v1/tasks/loan-review/stats"
    for role in ("app", "reviewer"):
        resp = client.get(url, headers=auth(tokens[role]))
        assert resp.status_code == 403, role
        assert resp.json["error"]["code"] == "forbidden"
    created = client.post(
        "/api/v1/tasks", json={**SIMPLE_TASK, "name": "other-task"}, headers=auth(tokens["admin"])
    )
    assert created.status_code == 201
    other = make_token("analyst", tasks=["other-task"])
    assert client.get("/api/v1/tasks/other-task/stats", headers=auth(other)).status_code == 200
    assert client.get(url, headers=auth(other)).status_code == 403
    assert client.get(url).status_code == 401
    analyst = auth(tokens["analyst"])
    assert client.get("/api/v1/tasks/nope/stats", headers=analyst).status_code == 404
    for query in (
        "?bucket=week",
        "?since=yesterday",
        "?since=2024-03-05T00:00:00Z&until=2024-03-04T00:00:00Z",
        "?since=2020-01-01T00:00:00Z&until=2024-01-01T00:00:00Z&bucket=hour",
    ):
        resp = client.get(url + query, headers=analyst)
        assert resp.status_code == 422, query
        assert resp.json["error"]["code"] == "validation_error"


# --- SQLite (embedded mode) ----------------------------------------------------------------


def test_same_answers_on_sqlite(tmp_path):
    from service import migrate
    from service.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'stats.db'}")
    migrate.upgrade(engine)
    with Session(engine) as session:
        row = Task(
            name=SIMPLE_TASK["name"],
            labels=SIMPLE_TASK["labels"],
            fields=SIMPLE_TASK["fields"],
            policy={},
            review={},
        )
        session.add(row)
        session.flush()
        truth = seed_population(session, row.id)
        out = task_stats(session, row, since=DAY1, until=DAY3, bucket="day", now=NOW)
        assert out["live_error"]["estimate"] == pytest.approx(truth["live_error"])
        assert out["override_rate"]["estimate"] == pytest.approx(truth["override_rate"])
        assert [p["labelled"] for p in out["series"]] == [200, 400]
        assert out["series"][1]["median_decision_seconds"] == pytest.approx(55 * 60)
        minutes = np.array([10 * (1 + i % 10) for i in range(300)]) * 60.0
        assert out["time_to_decision"]["p90_seconds"] == pytest.approx(np.percentile(minutes, 90))
        other = Task(name="queue-task", labels=["good", "bad"], fields=[], policy={}, review={})
        session.add(other)
        session.flush()
        spans = seed_queue(session, other.id)
        out = task_stats(session, other, since=DAY1, until=DAY3, bucket="day", now=NOW)
        on_day1 = sum(1 for c, _ in spans if c < DAY2)
        assert [p["cases"] for p in out["series"]] == [24 + on_day1, 24 + len(spans) - on_day1]
        assert out["queue"]["depth"] == sum(1 for _, left in spans if left is None)
        hourly = task_stats(session, other, since=DAY1 + timedelta(hours=5), until=DAY3, now=NOW)
        for point in hourly["series"]:
            end = min(point["bucket"] + timedelta(hours=1), DAY3)
            expected = sum(1 for c, left in spans if c < end and (left is None or left >= end))
            assert point["queue_depth"] == expected
    engine.dispose()
