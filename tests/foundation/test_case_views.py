"""A batch's answers (``predict.new_case_views``) are the single predict's view of each row
(``predict.case_view``) marked ``replayed: false``, the arrival time written once per run of
rows that share it and again whenever it changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.services.predict import case_view, new_case_views


def _row(i: int, created: datetime, **extra: object) -> dict[str, object]:
    return {
        "id": f"{i:032x}",
        "external_id": f"x{i}" if i % 2 else None,
        "status": ("auto", "pending", "resolved")[i % 3],
        "route": "auto" if i % 3 == 0 else "review",
        "reason": "confident" if i % 3 == 0 else "low_confidence",
        "final_label": "good",
        "suggestion_label": "good" if i % 4 else None,
        "confidence": 0.8123456789,
        "scores": {"good": 0.812346, "bad": 0.187654},
        "model_version": 3,
        "threshold": 0.7 if i % 3 == 0 else None,
        "created_at": created,
        **extra,
    }


def test_a_batch_answers_as_each_case_would_alone() -> None:
    first = datetime(2026, 12, 1, 6, 0, 0, 123456, tzinfo=UTC)
    later = first + timedelta(seconds=1)
    rows = [_row(i, first) for i in range(5)] + [_row(i, later) for i in range(5, 9)]
    rows.append(_row(9, first))  # back to an earlier time: written again, not reused
    views = new_case_views(rows)
    assert views == [{**case_view(row), "replayed": False} for row in rows]
    assert views[0]["created_at"] == "2026-12-01T06:00:00.123456Z"
    assert views[5]["created_at"] == "2026-12-01T06:00:01.123456Z"
    assert views[9]["created_at"] == views[0]["created_at"]
    assert [v["label"] for v in views[:3]] == ["good", None, "good"]
    assert views[0]["suggestion"] is None and views[1]["suggestion"]["confidence"] == 0.812346
    assert new_case_views([]) == []
