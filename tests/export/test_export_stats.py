"""An export reproduces the dashboard (docs/export.md, "Reproducing the dashboard"): the
documented pandas and SQL, run as written on a stored snapshot, give /stats' numbers to
1e-12; every format reads back with the same dtypes and values; the inclusion probability
is also on the analysts' view of a case."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import insert, select

from service.models import Case, Task, new_id
from tests.export.conftest import doc_example, run_worker
from tests.helpers import auth

DAY1 = datetime(2024, 3, 4, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
WINDOW = {"since": DAY1.isoformat(), "until": DAY3.isoformat()}


def _row(task_id: int, created: datetime, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_id(),
        "task_id": task_id,
        "input": {"review": "x", "state": "CA", "amount": 1200.0},
        "suggestion_label": "good",
        "confidence": 0.9,
        "scores": {"good": 0.9, "bad": 0.1},
        "model_version": 1,
        "route": "auto",
        "reason": "confident",
        "audit": False,
        "label_probability": 1.0,
        "status": "auto",
        "final_label": "good",
        "label_source": "model",
        "resolved_at": created,
        "created_at": created,
        "updated_at": created,
    }
    row.update(kw)
    return row


def seed_history(session: Any, task_id: int) -> None:
    """Two days of traffic whose audit rate changed (π = 0.5, then 0.1), with every kind of
    labelled case the dashboard weighs or must leave out."""
    rows: list[dict[str, Any]] = []
    later = timedelta(minutes=30)

    def audited(t: datetime, pi: float, verdict: str, **kw: Any) -> dict[str, Any]:
        return _row(task_id, t, audit=True, label_probability=pi, human_label=verdict,
                    human_labelled_at=t + later, **kw)  # fmt: skip

    for i in range(60):  # day 1: automatic answers, half audited at π = 0.5, 5 errors
        t = DAY1 + timedelta(minutes=10 * i)
        if i % 2:
            rows.append(_row(task_id, t, label_probability=0.5))
        elif i % 12 == 0:  # overruled by the audit: corrected
            rows.append(audited(t, 0.5, "bad", status="corrected", final_label="bad",
                                label_source="reviewer", resolved_at=t + later))  # fmt: skip
        else:
            rows.append(audited(t, 0.5, "good"))
    for i in range(200):  # day 2: automatic answers, audited at π = 0.1
        t = DAY2 + timedelta(minutes=5 * i)
        if i % 10:
            rows.append(_row(task_id, t, label_probability=0.1))
        elif i in (0, 50):
            rows.append(audited(t, 0.1, "bad", status="corrected", final_label="bad",
                                label_source="reviewer", resolved_at=t + later))  # fmt: skip
        elif i == 100:
            # The audit confirmed the model; the application later reported otherwise. The
            # final label is the application's, the audit's verdict (no error) stands.
            rows.append(audited(t, 0.1, "good", status="corrected", final_label="bad",
                                label_source="application", outcome_label="bad",
                                outcome_at=t + 2 * later, resolved_at=t + 2 * later))  # fmt: skip
        else:
            rows.append(audited(t, 0.1, "good"))
    # Held audits (audit_mode hold): routed to people, drawn at π = 0.1.
    for i, verdict in enumerate(("bad", "good", "good")):
        t = DAY2 + timedelta(hours=2, minutes=i)
        rows.append(audited(t, 0.1, verdict, route="review", reason="audit", status="resolved",
                            final_label=verdict, label_source="reviewer",
                            resolved_at=t + later))  # fmt: skip
    # An audit not decided yet, and an automatic answer not drawn whose outcome arrived.
    rows.append(_row(task_id, DAY2 + timedelta(hours=3), audit=True, label_probability=0.1,
                     queue_state="waiting"))  # fmt: skip
    t = DAY2 + timedelta(hours=3, minutes=1)
    rows.append(_row(task_id, t, label_probability=0.1, human_label="bad", outcome_label="bad",
                     human_labelled_at=t + later, outcome_at=t + later, status="corrected",
                     final_label="bad", label_source="application",
                     resolved_at=t + later))  # fmt: skip
    for i in range(40):  # cases sent to people (π = 1)
        t = DAY1 + timedelta(hours=12, minutes=7 * i)
        verdict = "bad" if i % 4 == 0 else "good"
        base: dict[str, Any] = {"route": "review", "reason": "low_confidence",
                                "confidence": 0.6, "status": "resolved", "final_label": verdict,
                                "resolved_at": t + later}  # fmt: skip
        if i % 10 == 1:  # the application's outcome came first
            rows.append(_row(task_id, t, **base, label_source="application",
                             human_label=verdict, human_labelled_at=t + later,
                             outcome_label=verdict, outcome_at=t + later))  # fmt: skip
        elif i % 10 == 2:  # drawn for audit too, decided by a reviewer
            rows.append(_row(task_id, t, **base, audit=True, label_source="reviewer",
                             human_label=verdict, human_labelled_at=t + later))  # fmt: skip
        elif i % 10 == 3:  # still waiting
            rows.append(_row(task_id, t, route="review", reason="low_confidence",
                             status="pending", final_label=None, label_source=None,
                             resolved_at=None, queue_state="waiting"))  # fmt: skip
        else:
            rows.append(_row(task_id, t, **base, label_source="reviewer", human_label=verdict,
                             human_labelled_at=t + later))  # fmt: skip
    # Cold start: no suggestion, so no override to count.
    t = DAY1 + timedelta(hours=20)
    rows.append(_row(task_id, t, suggestion_label=None, confidence=None, scores=None,
                     model_version=None, route="review", reason="cold_start",
                     status="resolved", final_label="bad", label_source="reviewer",
                     human_label="bad", human_labelled_at=t + later,
                     resolved_at=t + later))  # fmt: skip
    # Outside the window: must not count.
    rows.append(_row(task_id, DAY3 + timedelta(hours=1), audit=True, label_probability=0.5,
                     human_label="bad", human_labelled_at=DAY3 + timedelta(hours=2)))  # fmt: skip
    session.execute(insert(Case), rows)


@pytest.fixture
def history(app: Any, db: Any, task: dict[str, Any]) -> Any:
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    seed_history(db, row.id)
    db.commit()
    return row


def _snapshot(
    client: Any, token: str, redis_conn: Any, fmt: str, filters: dict[str, Any] | None = None
) -> tuple[Path, dict]:
    """A stored snapshot (of the window unless told): its folder (data file + manifest)."""
    if filters is None:
        filters = {"from": WINDOW["since"], "to": WINDOW["until"]}
    body = {"format": fmt, "filters": filters}
    resp = client.post("/api/v1/tasks/loan-review/exports", json=body, headers=auth(token))
    assert resp.status_code == 202, resp.json
    run_worker(redis_conn)
    view = client.get(f"/api/v1/exports/{resp.json['export_id']}", headers=auth(token)).json
    assert view["state"] == "done", view
    folder = client.application.config["TANDEM"].export_dir / view["export_id"]
    return folder, view["manifest"]


def _run(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code, "docs/export.md", "exec"), namespace)  # the documented code, as written
    return namespace


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def test_the_documented_pandas_and_sql_reproduce_stats_exactly(
    client, tokens, history, redis_conn, worker_app, monkeypatch
) -> None:
    stats = client.get("/api/v1/tasks/loan-review/stats", query_string={**WINDOW,
                       "bucket": "day"}, headers=auth(tokens["analyst"])).json  # fmt: skip
    confidence = history.policy["confidence"]
    for fmt in ("csv", "jsonl", "parquet"):
        folder, manifest = _snapshot(client, tokens["analyst"], redis_conn, fmt)
        assert manifest["row_count"] == 306
        monkeypatch.chdir(folder)
        ns = _run(doc_example("read_export"), {})
        code = doc_example("stats_pandas").replace('"data.csv"', f'"data.{fmt}"')
        ns = _run(code, ns)
        assert _close(ns["automation_rate"], stats["automation"]["rate"]["estimate"]), fmt
        assert _close(ns["override_rate"], stats["override_rate"]["estimate"]), fmt
        assert ns["override_n"] == stats["override_rate"]["n"] == 89
        assert _close(ns["live_error"], stats["live_error"]["estimate"]), fmt
        assert ns["live_error_n"] == stats["live_error"]["n"] == 53
        # The intervals, with the function /stats uses.
        ns = _run(doc_example("stats_interval"), ns)
        for mask, figure in (("by_design", "override_rate"), ("audited_auto", "live_error")):
            estimate, lower, upper, n = ns["interval"](ns[mask], confidence)
            shown = stats[figure]
            assert n == shown["n"]
            for got, want in ((estimate, "estimate"), (lower, "lower"), (upper, "upper")):
                assert _close(got, shown[want]), (fmt, figure, want, got, shown[want])
        # The series: the same over each day's rows.
        df, weighted = ns["df"], ns["weighted"]
        day = df["created_at"].dt.floor("D")
        for point in stats["series"]:
            start = pd.Timestamp(point["bucket"]).tz_convert("UTC")
            in_bucket = day == start
            assert int(in_bucket.sum()) == point["cases"]
            assert int((in_bucket & (df["route"] == "auto")).sum()) == point["auto"]
            assert _close(weighted(ns["audited_auto"] & in_bucket), point["live_error"])
        # The SQL, run as written on the export loaded into SQLite.
        code = doc_example("stats_sqlite").replace('"data.csv"', f'"data.{fmt}"')
        ns = _run(code, {**ns, "QUERY": doc_example("stats_sql")})
        assert _close(ns["automation_rate"], stats["automation"]["rate"]["estimate"])
        assert _close(ns["override_rate"], stats["override_rate"]["estimate"])
        assert ns["override_n"] == stats["override_rate"]["n"]
        assert _close(ns["live_error"], stats["live_error"]["estimate"])
        assert ns["live_error_n"] == stats["live_error"]["n"]
    # What the weighting and the separate labels change here: the unweighted average over
    # labelled rows, and final_label as "the person's verdict", both give other numbers.
    by_design, audited_auto = ns["by_design"], ns["audited_auto"]
    naive = df.loc[by_design, "overridden"].mean()
    assert abs(naive - stats["override_rate"]["estimate"]) > 0.02
    final_errors = (df["final_label"] != df["suggestion"])[audited_auto].sum()
    assert final_errors == df.loc[audited_auto, "overridden"].sum() + 1


def test_every_format_reads_back_with_the_declared_types(
    client, tokens, seed, redis_conn, worker_app
) -> None:
    """The documented reader gives the same frame, dtypes and values (an empty string
    included) from CSV, JSON Lines and Parquet; left to guess, pandas would not."""
    ns = _run(doc_example("read_export"), {})
    frames, empty = {}, {}
    for fmt in ("csv", "jsonl", "parquet"):
        folder, manifest = _snapshot(client, tokens["analyst"], redis_conn, fmt, {})
        frames[fmt] = ns["read_export"](str(folder / f"data.{fmt}"), manifest["schema"])
        if fmt == "csv":
            csv_folder = folder
        folder, _ = _snapshot(client, tokens["analyst"], redis_conn, fmt, {"from": "2030-01-01"})
        empty[fmt] = ns["read_export"](str(folder / f"data.{fmt}"), manifest["schema"])
    expected = {
        c["name"]: ns["PANDAS_DTYPES"].get(ns["ARROW_TYPES"][c["type"]], "datetime64[us, UTC]")
        for c in manifest["schema"]
    }
    for fmt, frame in frames.items():
        assert list(frame.columns) == [c["name"] for c in manifest["schema"]], fmt
        assert {k: str(v) for k, v in frame.dtypes.items()} == {
            k: str(v) for k, v in expected.items()
        }, fmt
        pd.testing.assert_frame_equal(frame, frames["parquet"])
        assert len(frame) == 7 and len(empty[fmt]) == 0, fmt
        pd.testing.assert_frame_equal(empty[fmt], frame.iloc[:0], check_index_type=False)
    assert frames["csv"]["input.state"].tolist()[6] == ""  # not missing
    assert pd.isna(frames["csv"]["external_id"].tolist()[3])  # missing, not ""
    # Left to guess, pandas reads the model versions (one is missing) as floats from CSV.
    assert str(pd.read_csv(csv_folder / "data.csv").dtypes["model_version"]) == "float64"


def test_analysts_read_the_inclusion_probability_of_a_case(client, tokens, seed) -> None:
    auto, routed = seed.cases[0].id, seed.cases[1].id
    body = client.get(f"/api/v1/cases/{auto}", headers=auth(tokens["analyst"])).json
    assert body["inclusion_probability"] == 0.25
    body = client.get(f"/api/v1/cases/{routed}", headers=auth(tokens["admin"])).json
    assert body["inclusion_probability"] == 1.0
    # Applications are not told (like the audit flag, it belongs to the analysts' view).
    body = client.get(f"/api/v1/cases/{auto}", headers=auth(tokens["app"])).json
    assert "inclusion_probability" not in body
    spec = client.get("/api/v1/openapi.json").json["components"]["schemas"]["CaseDetail"]
    assert "inclusion_probability" in spec["properties"]
