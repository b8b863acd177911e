"""On PostgreSQL an export reads its rows with ``COPY (…) TO STDOUT`` and parses them with
Arrow's CSV reader (``_copy_columns``); on SQLite it reads them as Python values. Both must
write the same bytes. Here the COPY path is held to the row path run on the same PostgreSQL
rows, on the values where PostgreSQL's CSV and Python's values could part: NaN, infinities,
-0 and the smallest float; empty text against a missing value; quotes, commas, newlines,
carriage returns and COPY's own markers in text; times before 1970 and in year 9999; inputs
stored before a field's type was enforced (the JSON reader's row-by-row fallback)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from service.models import Case, Review, Task
from service.services import export as export_service
from tests.export.conftest import Seed, _case

pytestmark = pytest.mark.postgres_only(
    "the COPY path is PostgreSQL's; SQLite always reads rows as Python values"
)

ODD_TEXT = ['a "quoted", value', "line\nbreak", "carriage\rreturn", "\\.", "\\N", "", " pad ",
            "NaN", "null", "t", "Ünïcødé ✓"]  # fmt: skip


def _odd_cases(db: Any, seed: Seed) -> None:
    """Cases whose values test the COPY path's parsing (after the seeded seven)."""
    task = db.scalar(select(Task).where(Task.name == seed.task.name))
    floats = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 0.1 + 0.2, 1e300]
    cases = []
    for i, text in enumerate(ODD_TEXT):
        n = 10 + i
        cases.append(
            _case(task, n, external_id=text, confidence=floats[i % len(floats)],
                  label_probability=floats[(i + 3) % len(floats)],
                  input={"review": text, "state": text, "amount": -0.0, "verified": False},
                  scores={"good": 5e-324, "bad": 1.0}, human_label=text or None)
        )  # fmt: skip
    # Inputs stored before the fields' types were enforced: the JSON reader cannot read the
    # batch typed, which then goes row by row (a number in a text field, text in a number
    # field, an integer beyond 64 bits, a list).
    cases.append(_case(task, 30, input={"review": 5, "state": ["x", 1], "amount": "lots",
                                        "verified": "yes"}))  # fmt: skip
    cases.append(_case(task, 31, input={"review": "ok", "state": "CA", "amount": 2**70}))
    cases.append(_case(task, 32, created_at=datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)))
    far = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    cases.append(_case(task, 33, created_at=far, updated_at=far, resolved_at=far))
    db.add_all(cases)
    db.flush()
    reviewer = seed.users["alice"].id
    db.add_all(
        [
            Review(case_id=case.id, task_id=task.id, reviewer_id=reviewer, label="bad",
                   comment=text or None, suggested_label="good", agreed_with_model=False,
                   claimed_at=datetime(1960, 1, 1, 0, 0, 0, 7, tzinfo=UTC),
                   decided_at=datetime(2024, 3, 1, 9, 0, 0, 999999, tzinfo=UTC),
                   duration_ms=-1 if i % 2 else 2**31 - 1)
            for i, (case, text) in enumerate(zip(cases, ODD_TEXT, strict=False))
        ]
    )  # fmt: skip
    db.commit()


def _row_path(session: Any, task: Any, spec: Any, reviews: bool) -> bytes:
    """The file as the row path writes it from the same PostgreSQL rows (Python values)."""
    if reviews:
        schema = export_service.reviews_schema(task)
        stmt = export_service.build_reviews_query(task, spec)
        convert = export_service._reviews_batch
    else:
        schema = export_service.export_schema(task)
        stmt = export_service.build_query(task, spec)

        def convert(columns: Any, schema: Any) -> Any:
            return export_service._to_batch(columns, task, schema)

    batches = (
        convert(columns, schema) for columns in export_service._row_columns(session, stmt, 4)
    )
    stats = export_service.ExportStats()
    return b"".join(export_service._encode(schema, batches, spec.format, stats))


@pytest.mark.parametrize("fmt", export_service.FORMATS)
@pytest.mark.parametrize("identity", ["pseudonym", "real"])
def test_copy_path_writes_the_bytes_of_the_row_path(app, db, seed, fmt, identity) -> None:
    _odd_cases(db, seed)
    session = db()
    task = session.scalar(select(Task).where(Task.name == seed.task.name))
    spec = export_service.ExportSpec(fmt, export_service.ExportFilters(), identity=identity)
    assert session.get_bind().dialect.name == "postgresql"

    copied = b"".join(export_service.stream_export(session, task, spec, batch_rows=4))
    assert copied == _row_path(session, task, spec, reviews=False)
    reviews = b"".join(export_service.stream_reviews(session, task, spec, batch_rows=4))
    assert reviews == _row_path(session, task, spec, reviews=True)
    assert session.scalar(select(Case.id).limit(1)) is not None  # the transaction is usable


def test_copy_path_keeps_the_values(app, db, seed) -> None:
    """Not merely the same as the row path: the odd values arrive as they were stored."""
    import pyarrow.parquet as pq

    _odd_cases(db, seed)
    session = db()
    task = session.scalar(select(Task).where(Task.name == seed.task.name))
    spec = export_service.ExportSpec("parquet", export_service.ExportFilters())
    data = b"".join(export_service.stream_export(session, task, spec, batch_rows=4))
    rows = {r["external_id"]: r for r in pq.read_table(io.BytesIO(data)).to_pylist()}
    for text in ODD_TEXT:
        assert rows[text]["input.review"] == text and rows[text]["input.state"] == text
        assert rows[text]["human_label"] == (text or None)
        assert rows[text]["score.good"] == 5e-324
    assert str(rows['a "quoted", value']["confidence"]) == "nan"
    assert rows["line\nbreak"]["confidence"] == float("inf")
    assert str(rows["\\."]["confidence"]) == "-0.0"
    legacy = rows["ext-30"]
    assert legacy["input.review"] == "5" and legacy["input.state"] == '["x", 1]'
    assert legacy["input.amount"] is None and legacy["input.verified"] is None
    assert rows["ext-31"]["input.amount"] == float(2**70)
    assert rows["ext-32"]["created_at"] == datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
    assert rows["ext-33"]["time_to_decision_seconds"] == 0.0


def test_a_copy_closed_early_leaves_the_connection_usable(app, db, seed) -> None:
    """A download cut short closes the stream mid-COPY: psycopg ends the COPY (it cancels it
    and reads what is left), and once the transaction is rolled back, as every caller does
    after a failure, the same connection serves the next statement."""
    task = db.scalar(select(Task).where(Task.name == seed.task.name))
    db.add_all([_case(task, 100 + n) for n in range(60)])
    db.commit()
    session = db()
    spec = export_service.ExportSpec("csv", export_service.ExportFilters())
    stream = export_service.stream_export(session, task, spec, batch_rows=2)
    assert next(stream).startswith(b'"case_id",')
    stream.close()
    session.rollback()
    assert session.scalar(select(Case.id).where(Case.task_id == task.id).limit(1)) is not None
    copied = b"".join(export_service.stream_export(session, task, spec, batch_rows=2))
    rows = list(csv.reader(io.StringIO(copied.decode(), newline="")))
    assert len(rows) == 1 + 7 + 60  # the header, the seeded cases, these
