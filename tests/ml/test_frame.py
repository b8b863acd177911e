import numpy as np
import pandas as pd

from service.ml.frame import rows_to_frame
from service.ml.pipeline import build_pipeline

FIELDS = [
    {"name": "t", "type": "text", "required": False},
    {"name": "c", "type": "category", "required": False},
    {"name": "n", "type": "number", "required": False},
    {"name": "b", "type": "boolean", "required": False},
]


def test_every_type_gets_nan_for_null_and_missing_key():
    frame = rows_to_frame(
        [{"t": None, "c": None, "n": None, "b": None}, {}, {"t": "x", "c": "y", "n": 2, "b": True}],
        FIELDS,
    )
    assert frame["t"].dtype == object and frame["c"].dtype == object
    assert frame["n"].dtype == np.float64 and frame["b"].dtype == np.float64
    for col in frame.columns:
        assert frame[col].iloc[:2].isna().all(), col
        assert all(isinstance(v, float) and np.isnan(v) for v in frame[col].iloc[:2])
    assert frame.iloc[2].tolist() == ["x", "y", 2.0, 1.0]


def test_boolean_and_category_coercions():
    frame = rows_to_frame(
        [{"b": False, "c": 3}, {"b": "yes", "c": True}, {"b": "maybe", "c": float("nan")}],
        FIELDS,
    )
    assert frame["b"].iloc[:2].tolist() == [0.0, 1.0] and np.isnan(frame["b"].iloc[2])
    assert frame["c"].iloc[:2].tolist() == ["3", "true"] and np.isnan(frame["c"].iloc[2])


def test_missing_categorical_matches_hand_built_frame(datasets):
    d = datasets["credit_data"]
    pipe = build_pipeline(d.fields, "logistic_regression")
    pipe.fit(rows_to_frame(d.rows[:1500], d.fields), d.labels[:1500])
    rows = [r for r in d.rows if r["Home"] is None or r["Job"] is None]
    assert rows, "credit_data has rows with missing categoricals"
    rows = [*rows, {**d.rows[0], "Home": None, "Marital": None}]
    hand = pd.DataFrame(
        {
            f["name"]: pd.Series(
                [np.nan if r.get(f["name"]) is None else r[f["name"]] for r in rows],
                dtype=object if f["type"] == "category" else np.float64,
            )
            for f in d.fields
        }
    )
    got = pipe.predict_proba(rows_to_frame(rows, d.fields))
    want = pipe.predict_proba(hand)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # One row at a time too (the hot path scores single rows).
    for i, row in enumerate(rows):
        np.testing.assert_allclose(
            pipe.predict_proba(rows_to_frame([row], d.fields))[0], want[i], atol=1e-12
        )
