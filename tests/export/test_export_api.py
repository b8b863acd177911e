"""Streamed exports through the HTTP API: round trips, filters, roles, stability, secrets."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from service.models import AuditEvent
from tests.export.conftest import T0, Seed
from tests.helpers import SIMPLE_TASK, auth, make_token

URL = "/api/v1/tasks/loan-review/export"
H = timedelta(hours=1)
# The deciding review of each reviewed seed case: (reviewer, decided_at, seconds).
DECIDER = {
    1: ("alice", T0 + H + timedelta(minutes=5), 12.345),
    2: ("bob", T0 + 2 * H + timedelta(minutes=1), 4.0),
    5: ("bob", T0 + 5 * H + timedelta(minutes=9), None),
}
COLUMNS = [
    "case_id", "external_id", "input.review", "input.state", "input.amount", "input.verified",
    "suggestion", "confidence", "score.good", "score.bad", "model_version", "route", "reason",
    "audit", "inclusion_probability", "status", "final_label", "label_source", "human_label",
    "human_label_source", "outcome", "overridden", "reviewer", "review_time", "review_seconds",
    "time_to_decision_seconds", "created_at", "resolved_at",
]  # fmt: skip
# Who gave each seeded case's human label (case 4: the application's outcome came first).
HUMAN_SOURCE = {1: "reviewer", 2: "reviewer", 4: "application", 5: "reviewer"}


def expected_rows(seed: Seed, identity: str = "pseudonym") -> list[dict[str, Any]]:
    """The export computed independently from the seeded objects (typed Python values)."""
    out = []
    for n, c in enumerate(seed.cases):
        who = when = secs = None
        if n in DECIDER:
            name, when, secs = DECIDER[n]
            user = seed.users[name]
            who = user.email if identity == "real" else user.pseudonym
        scores = c.scores or {}
        ttd = (c.resolved_at - c.created_at).total_seconds() if c.resolved_at else None
        both = c.human_label is not None and c.suggestion_label is not None
        out.append(
            {
                "case_id": c.id,
                "external_id": c.external_id,
                "input.review": c.input.get("review"),
                "input.state": c.input.get("state"),
                "input.amount": c.input.get("amount"),
                "input.verified": c.input.get("verified"),
                "suggestion": c.suggestion_label,
                "confidence": c.confidence,
                "score.good": scores.get("good"),
                "score.bad": scores.get("bad"),
                "model_version": c.model_version,
                "route": c.route,
                "reason": c.reason,
                "audit": c.audit,
                "inclusion_probability": c.label_probability,
                "status": c.status,
                "final_label": c.final_label,
                "label_source": c.label_source,
                "human_label": c.human_label,
                "human_label_source": HUMAN_SOURCE.get(n),
                "outcome": c.outcome_label,
                "overridden": c.human_label != c.suggestion_label if both else None,
                "reviewer": who,
                "review_time": when,
                "review_seconds": secs,
                "time_to_decision_seconds": ttd,
                "created_at": c.created_at,
                "resolved_at": c.resolved_at,
            }
        )
    return out


def get(client: Any, token: str, **params: Any) -> Any:
    return client.get(URL, query_string=params, headers=auth(token), buffered=True)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def ids(client: Any, token: str, **params: Any) -> list[str]:
    resp = get(client, token, format="jsonl", **params)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return [json.loads(line)["case_id"] for line in resp.get_data(as_text=True).splitlines()]


def case_ids(seed: Seed, *numbers: int) -> list[str]:
    return [seed.cases[n].id for n in numbers]


# --- round trips -------------------------------------------------------------------------


def test_parquet_round_trip_keeps_types_and_missing_values(client, tokens, seed) -> None:
    resp = get(client, tokens["analyst"], format="parquet")
    assert resp.status_code == 200
    assert resp.mimetype == "application/vnd.apache.parquet"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="loan-review-')
    table = pq.read_table(io.BytesIO(resp.get_data()))
    assert table.column_names == COLUMNS
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["input.review"] == pa.string() and types["input.state"] == pa.string()
    assert types["input.amount"] == pa.float64() and types["input.verified"] == pa.bool_()
    assert types["model_version"] == pa.int64() and types["audit"] == pa.bool_()
    assert types["created_at"] == pa.timestamp("us", tz="UTC")
    assert table.to_pylist() == expected_rows(seed)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value) or ""
    if isinstance(value, float):
        return repr(value).removesuffix(".0")
    return str(value)


def test_csv_round_trip(client, tokens, seed) -> None:
    resp = get(client, tokens["analyst"], format="csv")
    assert resp.status_code == 200
    assert resp.mimetype == "text/csv"
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = resp.get_data().decode("utf-8")
    assert text.startswith('"case_id","external_id","input.review"')
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == COLUMNS
    expected = [[_csv_cell(r[c]) for c in COLUMNS] for r in expected_rows(seed)]
    assert rows[1:] == expected
    # An empty string stays distinguishable from a missing value: strings are quoted.
    assert 'Ünïcødé ✓","",' in text
    assert f'"{seed.cases[3].id}",,' in text  # missing external id: empty, unquoted


def test_jsonl_round_trip(client, tokens, seed) -> None:
    resp = get(client, tokens["analyst"], format="jsonl")
    assert resp.status_code == 200
    assert resp.mimetype == "application/x-ndjson"
    assert resp.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    lines = resp.get_data().decode("utf-8").splitlines()
    got = [json.loads(line) for line in lines]
    expected = [
        {k: (iso(v) if isinstance(v, datetime) else v) for k, v in r.items()}
        for r in expected_rows(seed)
    ]
    assert got == expected
    assert all(list(row) == sorted(row) for row in got)  # keys sorted on every line
    assert "Ünïcødé" in lines[6]  # UTF-8, not escaped


def test_same_filters_give_byte_identical_files(client, tokens, seed) -> None:
    for fmt in ("csv", "jsonl", "parquet"):
        first = get(client, tokens["analyst"], format=fmt, route="review").get_data()
        second = get(client, tokens["analyst"], format=fmt, route="review").get_data()
        assert first == second and len(first) > 0, fmt


def test_empty_result_is_a_valid_file(client, tokens, seed) -> None:
    params = {"from": "2030-01-01"}
    assert get(client, tokens["analyst"], format="jsonl", **params).get_data() == b""
    text = get(client, tokens["analyst"], format="csv", **params).get_data(as_text=True)
    assert text.splitlines() == [",".join(f'"{c}"' for c in COLUMNS)]
    table = pq.read_table(io.BytesIO(get(client, tokens["analyst"], format="parquet", **params)
                                     .get_data()))  # fmt: skip
    assert table.num_rows == 0 and table.column_names == COLUMNS


# --- filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [0, 1, 2, 3, 4, 5, 6]),
        ({"from": iso(T0 + 2 * H)}, [2, 3, 4, 5, 6]),
        ({"to": iso(T0 + 2 * H)}, [0, 1]),
        ({"from": "2024-03-01T11:00:00+02:00", "to": "2024-03-01T12:00:00Z"}, [0, 1, 2]),
        ({"label_source": "reviewer"}, [1, 5]),
        ({"label_source": "application"}, [4]),
        ({"label_source": "model"}, [0, 2]),
        ({"route": "auto"}, [0, 2]),
        ({"route": "review"}, [1, 3, 4, 5, 6]),
        ({"reason": "cold_start"}, [3]),
        ({"audit": "true"}, [2, 5]),
        ({"audit": "false"}, [0, 1, 3, 4, 6]),
        ({"agreement": "agree"}, [2, 5]),
        ({"agreement": "disagree"}, [1, 4]),
        ({"model_version": "2"}, [4, 5]),
        ({"model_version": "7"}, []),
        ({"route": "review", "label_source": "reviewer", "agreement": "agree"}, [5]),
        ({"audit": "true", "model_version": "1"}, [2]),
        ({"from": iso(T0 + H), "to": iso(T0 + 5 * H), "route": "review"}, [1, 3, 4]),
        ({"label_source": "", "route": ""}, [0, 1, 2, 3, 4, 5, 6]),  # empty = not set
        ({"status": "pending"}, [3, 6]),
        ({"status": "auto"}, [0, 2]),
        ({"status": "resolved"}, [1, 4, 5]),
        ({"status": "corrected"}, []),
        ({"final_label": "bad"}, [1]),
        ({"final_label": "good"}, [0, 2, 4, 5]),
        ({"final_label": "good", "route": "review"}, [4, 5]),
        # Several values: any of them (repeated parameters).
        ({"status": ["pending", "resolved"]}, [1, 3, 4, 5, 6]),
        ({"final_label": ["good", "bad"]}, [0, 1, 2, 4, 5]),
        ({"reason": ["cold_start", "forced"]}, [3, 6]),
        ({"label_source": ["model", "application"]}, [0, 2, 4]),
        ({"route": ["auto", "review"]}, [0, 1, 2, 3, 4, 5, 6]),
        ({"model_version": ["2", "7"]}, [4, 5]),
        ({"status": ["auto", "resolved"], "label_source": ["model", "reviewer"]}, [0, 1, 2, 5]),
        ({"status": ["", "pending"]}, [3, 6]),  # an empty value among them is ignored
    ],
)
def test_filters(client, tokens, seed, params, expected) -> None:
    assert ids(client, tokens["analyst"], **params) == case_ids(seed, *expected)


# Filter name -> (export column, values to try alone and together); the expected rows are
# counted with pandas on the unfiltered export, independently of the SQL the filter uses.
PANDAS_FILTERS = {
    "label_source": ("label_source", ["model", "reviewer", "application"]),
    "route": ("route", ["auto", "review"]),
    "reason": ("reason", ["confident", "low_confidence", "cold_start", "audit", "forced"]),
    "status": ("status", ["auto", "pending", "resolved", "corrected"]),
    "final_label": ("final_label", ["good", "bad"]),
    "model_version": ("model_version", [1, 2]),
}


def test_every_value_filter_matches_an_independent_pandas_count(client, tokens, seed) -> None:
    everything = pq.read_table(io.BytesIO(get(client, tokens["analyst"], format="parquet")
                                          .get_data())).to_pandas()  # fmt: skip
    for name, (column, values) in PANDAS_FILTERS.items():
        for chosen in [[v] for v in values] + [values[:2], values[-2:], values]:
            want = everything.loc[everything[column].isin(chosen), "case_id"].tolist()
            got = ids(client, tokens["analyst"], **{name: [str(v) for v in chosen]})
            assert got == want, (name, chosen)
    for flag in ("true", "false"):
        want = everything.loc[everything["audit"] == (flag == "true"), "case_id"].tolist()
        assert ids(client, tokens["analyst"], audit=flag) == want
    both = everything["human_label"].notna() & everything["suggestion"].notna()
    for agreement, overridden in (("agree", False), ("disagree", True)):
        want = everything.loc[both & (everything["overridden"] == overridden), "case_id"]
        assert ids(client, tokens["analyst"], agreement=agreement) == want.tolist()
    bob = seed.users["bob"].pseudonym
    alice = seed.users["alice"].pseudonym
    want = everything.loc[everything["reviewer"].isin([bob, alice]), "case_id"].tolist()
    assert ids(client, tokens["analyst"], reviewer=[alice, bob]) == want


def test_reviewer_filter_uses_the_deciding_reviewer(client, tokens, seed) -> None:
    bob, alice = seed.users["bob"].pseudonym, seed.users["alice"].pseudonym
    assert ids(client, tokens["analyst"], reviewer=bob) == case_ids(seed, 2, 5)
    # alice's retracted review on case 5 does not count
    assert ids(client, tokens["analyst"], reviewer=alice) == case_ids(seed, 1)
    both = ids(client, tokens["analyst"], reviewer=bob, label_source="reviewer")
    assert both == case_ids(seed, 5)


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"colour": "red"}, "colour"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01"}, "to"),
        ({"from": "2024-03-02", "to": "2024-03-01"}, "to"),
        ({"label_source": "robot"}, "label_source"),
        ({"route": "sideways"}, "route"),
        ({"reason": "whim"}, "reason"),
        ({"audit": "yes"}, "audit"),
        ({"agreement": "maybe"}, "agreement"),
        ({"model_version": "two"}, "model_version"),
        ({"model_version": "0"}, "model_version"),
        ({"reviewer": "r_nobody"}, "reviewer"),
        ({"reviewer": "a b"}, "reviewer"),
        ({"reviewer": ["r_nobody", "a"]}, "reviewer"),
        ({"identity": "secret"}, "identity"),
        ({"status": "closed"}, "status"),
        ({"status": ["resolved", "closed"]}, "status"),
        ({"final_label": "ugly"}, "final_label"),  # not one of the task's labels
        ({"final_label": ["good", "Good"]}, "final_label"),
        ({"reviews": "true"}, "reviews"),  # snapshots only
    ],
)
def test_bad_filter_is_422_naming_it_and_writes_nothing(client, tokens, seed, db, params, bad):
    before = db.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1))
    resp = get(client, tokens["analyst"], format="csv", **params)
    assert resp.status_code == 422
    body = resp.json
    assert body["error"]["code"] == "validation_error"
    assert bad in body["error"]["details"]
    after = db.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1))
    assert after == before


def test_bad_format_and_repeated_parameter(client, tokens, seed) -> None:
    resp = get(client, tokens["analyst"], format="xlsx")
    assert resp.status_code == 422 and "format" in resp.json["error"]["details"]
    resp = get(client, tokens["analyst"])
    assert resp.status_code == 422 and "format" in resp.json["error"]["details"]
    # Only the multi-valued filters may be repeated.
    for query, name in (
        ("format=csv&audit=true&audit=false", "audit"),
        ("format=csv&agreement=agree&agreement=disagree", "agreement"),
        ("format=csv&from=2024-01-01&from=2024-02-01", "from"),
        ("format=csv&identity=real&identity=real", "identity"),
        ("format=csv&format=jsonl", "format"),
    ):
        resp = client.get(f"{URL}?{query}", headers=auth(tokens["admin"]), buffered=True)
        assert resp.status_code == 422 and name in resp.json["error"]["details"], query
    resp = client.get(URL + "?format=jsonl&route=auto&route=review",
                      headers=auth(tokens["analyst"]), buffered=True)  # fmt: skip
    assert resp.status_code == 200 and resp.get_data().count(b"\n") == 7


def test_multi_valued_filters_are_audited_in_one_canonical_form(client, tokens, seed, db):
    """Order and repeats do not matter: the same set of values is recorded the same way."""
    for query in (
        "status=resolved&status=pending&status=resolved",
        "status=pending&status=resolved",
    ):
        resp = client.get(f"{URL}?format=csv&route=review&{query}",
                          headers=auth(tokens["analyst"]), buffered=True)  # fmt: skip
        assert resp.status_code == 200
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.created")).all()
    assert [e.details["filters"] for e in events] == [
        {"route": "review", "status": ["pending", "resolved"]}
    ] * 2
    assert events[0].details["row_count"] == 5


# --- access ------------------------------------------------------------------------------


def test_roles_and_task_scope(client, tokens, seed) -> None:
    for role in ("app", "reviewer"):
        assert get(client, tokens[role], format="csv").status_code == 403
    assert get(client, tokens["analyst"], format="csv").status_code == 200
    assert get(client, tokens["admin"], format="csv").status_code == 200
    assert client.get(URL, query_string={"format": "csv"}, buffered=True).status_code == 401
    other = {**SIMPLE_TASK, "name": "other-task"}
    assert (
        client.post("/api/v1/tasks", json=other, headers=auth(tokens["admin"])).status_code == 201
    )
    scoped = make_token("analyst", tasks=["other-task"])
    assert get(client, scoped, format="csv").status_code == 403
    ok = client.get(
        "/api/v1/tasks/other-task/export?format=csv", headers=auth(scoped), buffered=True
    )
    assert ok.status_code == 200
    assert get(client, tokens["analyst"], format="csv").status_code == 200
    missing = client.get(
        "/api/v1/tasks/nope/export?format=csv", headers=auth(tokens["admin"]), buffered=True
    )
    assert missing.status_code == 404


def test_real_identities_only_for_admins(client, tokens, seed) -> None:
    resp = get(client, tokens["analyst"], format="jsonl", identity="real")
    assert resp.status_code == 403
    resp = get(client, tokens["admin"], format="parquet", identity="real")
    assert resp.status_code == 200
    table = pq.read_table(io.BytesIO(resp.get_data()))
    assert table.to_pylist() == expected_rows(seed, identity="real")


# --- audit and secrets -------------------------------------------------------------------


def test_every_export_is_audited_before_streaming(client, tokens, seed, db) -> None:
    resp = get(client, tokens["analyst"], format="parquet", route="review", audit="true")
    assert resp.status_code == 200
    event = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "export.created").order_by(AuditEvent.id)
    ).all()[-1]
    assert event.task_id == seed.task.id
    assert event.actor_type == "token"
    assert event.details == {
        "channel": "api",
        "format": "parquet",
        "filters": {"route": "review", "audit": True},
        "reviewer_identity": "pseudonym",
        "row_count": 1,
    }


def test_exports_contain_no_secrets(client, tokens, seed, db) -> None:
    secret = "whsec_do-not-leak-0123456789"
    task = {**SIMPLE_TASK, "name": "secretive", "webhook": {"url": "https://example.org/h",
                                                          "secret": secret}}  # fmt: skip
    assert client.post("/api/v1/tasks", json=task, headers=auth(tokens["admin"])).status_code == 201
    app_token = make_token("app", tasks=["secretive"])
    predicted = client.post(
        "/api/v1/tasks/secretive/predict",
        json={"input": {"review": "fine", "state": "CA"}},
        headers=auth(app_token),
    )
    assert predicted.status_code in (200, 202), predicted.json
    from service.models import ApiToken, User

    hashes = [h.encode() for h in db.scalars(select(ApiToken.token_hash))]
    hashes += [h.encode() for h in db.scalars(select(User.password_hash))]
    emails = [e.encode() for e in db.scalars(select(User.email))]
    plain = [t.encode() for t in (*tokens.values(), app_token)]
    plain += [p.encode() for p in seed.passwords.values()]
    for task_name in ("secretive", "loan-review"):
        for fmt in ("csv", "jsonl", "parquet"):
            for identity, token in (("pseudonym", tokens["analyst"]), ("real", tokens["admin"])):
                data = client.get(
                    f"/api/v1/tasks/{task_name}/export",
                    query_string={"format": fmt, "identity": identity},
                    headers=auth(token),
                    buffered=True,
                ).get_data()
                assert data
                for needle in [secret.encode(), b"whsec_", *hashes, *plain]:
                    assert needle not in data, (task_name, fmt, needle[:12])
                if identity == "pseudonym":
                    assert not any(e in data for e in emails)


def test_a_streaming_export_never_holds_back_writers(committed_db, flask_app, backend) -> None:
    """Embedded mode: an export being downloaded reads a snapshot and takes no write lock,
    so predicts and decisions go on meanwhile (before, its BEGIN IMMEDIATE held the lock for
    the whole download)."""
    if backend != "sqlite":
        pytest.skip("SQLite only: PostgreSQL readers never block writers")
    import sqlite3

    from service.schemas.tasks import TaskCreateSchema
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work
    from tests.export.conftest import _case
    from tests.helpers import SIMPLE_TASK, make_token

    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        session.add_all([_case(task, n) for n in range(3)])
    token = make_token("analyst")
    committed_db.remove()
    resp = flask_app.test_client().get(
        URL, query_string={"format": "csv"}, headers=auth(token), buffered=False
    )
    chunks = iter(resp.response)
    first = next(chunks)  # the export's read transaction is open now
    assert first.startswith(b'"case_id",')
    path = flask_app.config["TANDEM"].database_url.removeprefix("sqlite:///")
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # "database is locked" if the export held it
        writer.execute("ROLLBACK")
    finally:
        writer.close()
        rest = b"".join(chunks)
        resp.close()
    assert (first + rest).count(b"\n") == 4


def test_a_streamed_export_reads_every_batch_after_the_request_ended(
    committed_db, flask_app, monkeypatch
) -> None:
    """The body is sent after the view returns, when Flask has already torn the request
    down (and removed the request's session). The stream reads on a session of its own: on
    PostgreSQL the request's removal ended the transaction holding the export's server-side
    cursor, and every streamed download broke after its first batch (a Parquet file without
    its footer, ``InvalidCursorName`` in the log). Tests inside a rolled-back outer
    transaction never saw it; real commits do."""
    from flask.globals import _cv_app

    from service.schemas.tasks import TaskCreateSchema
    from service.services import export as export_service
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work
    from tests.export.conftest import _case

    monkeypatch.setattr(export_service, "BATCH_ROWS", 2)  # several batches from 5 cases
    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        session.add_all([_case(task, n) for n in range(5)])
    token = make_token("analyst")
    committed_db.remove()
    client = flask_app.test_client()
    # As a server runs it: no application context around the request (the fixture's would
    # keep Flask from tearing the request's context down when the view returns).
    outer = _cv_app.get()
    outer.pop()
    try:
        bodies = {}
        for fmt in ("csv", "jsonl", "parquet"):
            resp = client.get(URL, query_string={"format": fmt}, headers=auth(token))
            assert resp.status_code == 200
            bodies[fmt] = resp.get_data()
    finally:
        outer.push()
    assert pq.read_table(io.BytesIO(bodies["parquet"])).num_rows == 5
    assert len(bodies["csv"].splitlines()) == 6 and len(bodies["jsonl"].splitlines()) == 5
    with unit_of_work() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "export.failed"))
        assert failed.all() == []
