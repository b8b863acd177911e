import io

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from service.ml.fast import (
    CompiledPredictor,
    PipelinePredictor,
    compile_predictor,
    load_predictor_state,
    predictor_state,
)
from service.ml.frame import rows_to_frame
from service.ml.pipeline import FAMILIES, build_pipeline, pipeline_proba

TOL = 1e-6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["credit_data", "fine_foods", "letter"])
def test_predictor_equals_pipeline_on_every_row(datasets, fitted, name, family):
    d = datasets[name]
    pipe = fitted[name, family]
    predictor = compile_predictor(pipe, d.fields, d.label_set)
    assert predictor.compiled, predictor.reason
    want = pipeline_proba(pipe, d.rows, d.fields, d.label_set)
    got = predictor.predict_proba_rows(d.rows)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOL
    rng = np.random.default_rng(0)
    sample = rng.choice(len(d.rows), size=300, replace=False)
    missing = [i for i, r in enumerate(d.rows) if any(v is None for v in r.values())][:50]
    for i in [*sample.tolist(), *missing]:
        one = predictor.predict_proba_rows([d.rows[i]])
        assert one.shape == (1, len(d.label_set))
        assert np.max(np.abs(one[0] - want[i])) <= TOL, i


def test_edge_rows(datasets, fitted):
    d = datasets["fine_foods"]
    rows = [{}, {"review": ""}, {"review": "zzzz qqqq"}, {"product": "new", "review": None}]
    for family in FAMILIES:
        pipe = fitted["fine_foods", family]
        predictor = compile_predictor(pipe, d.fields, d.label_set)
        want = pipeline_proba(pipe, rows, d.fields, d.label_set)
        np.testing.assert_allclose(predictor.predict_proba_rows(rows), want, atol=TOL)
        assert predictor.predict_proba_rows([]).shape == (0, 2)


def test_label_order_and_absent_label(datasets, fitted):
    d = datasets["credit_data"]
    labels = ["unknown", *reversed(d.label_set)]
    pipe = fitted["credit_data", "logistic_regression"]
    predictor = compile_predictor(pipe, d.fields, labels)
    assert predictor.compiled
    got = predictor.predict_proba_rows(d.rows[:100])
    assert np.all(got[:, 0] == 0)
    want = pipe.predict_proba(rows_to_frame(d.rows[:100], d.fields))
    np.testing.assert_allclose(got[:, 1:], want[:, ::-1], atol=TOL)


def test_unknown_structure_falls_back(datasets, fitted):
    d = datasets["credit_data"]
    base = build_pipeline(d.fields, "logistic_regression")
    pipe = Pipeline([("features", base.steps[0][1]), ("clf", RandomForestClassifier(5))])
    pipe.fit(rows_to_frame(d.rows[:300], d.fields), d.labels[:300])
    predictor = compile_predictor(pipe, d.fields, d.label_set)
    assert isinstance(predictor, PipelinePredictor) and not predictor.compiled
    assert "RandomForest" in (predictor.reason or "")
    np.testing.assert_array_equal(
        predictor.predict_proba_rows(d.rows[:20]),
        pipeline_proba(pipe, d.rows[:20], d.fields, d.label_set),
    )


def test_self_check_failure_falls_back(datasets, fitted, monkeypatch):
    d = datasets["credit_data"]
    pipe = fitted["credit_data", "logistic_regression"]
    monkeypatch.setattr(
        CompiledPredictor, "_proba_classes", lambda self, rows: np.full((len(rows), 2), 0.5)
    )
    predictor = compile_predictor(pipe, d.fields, d.label_set)
    assert isinstance(predictor, PipelinePredictor)
    assert "self-check" in (predictor.reason or "")


@pytest.mark.parametrize("name", ["credit_data", "fine_foods", "letter"])
def test_stored_form_equals_pipeline_on_every_row(datasets, fitted, name):
    """What a web process scores with (NumPy only, no scikit-learn): the stored form of the
    compiled logistic regression, exact to the Pipeline on every row."""
    d = datasets[name]
    pipe = fitted[name, "logistic_regression"]
    predictor = compile_predictor(pipe, d.fields, d.label_set)
    data = predictor_state(predictor, pipe, d.fields, d.label_set)
    assert data is not None
    stored = load_predictor_state(data)
    want = pipeline_proba(pipe, d.rows, d.fields, d.label_set)
    got = stored.predict_proba_rows(d.rows)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOL
    for row in [{}, {"review": ""}, {"review": "zzzz qqqq"}, d.rows[0]]:
        np.testing.assert_allclose(
            stored.predict_proba_rows([row]),
            pipeline_proba(pipe, [row], d.fields, d.label_set),
            atol=TOL,
        )


def test_stored_form_only_for_what_it_reproduces(datasets, fitted):
    d = datasets["fine_foods"]
    hgb = fitted["fine_foods", "hist_gradient_boosting"]
    predictor = compile_predictor(hgb, d.fields, d.label_set)
    assert predictor_state(predictor, hgb, d.fields, d.label_set) is None  # trees: sklearn
    lr = fitted["fine_foods", "logistic_regression"]
    predictor = compile_predictor(lr, d.fields, d.label_set)
    data = predictor_state(predictor, lr, d.fields, d.label_set)
    assert data is not None
    text_block = next(b for b, _ in predictor.blocks if hasattr(b, "vectorizer"))
    text_block.vectorizer.set_params(strip_accents="unicode")
    try:  # an option the stored analyzer does not reproduce: nothing is stored
        assert predictor_state(predictor, lr, d.fields, d.label_set) is None
    finally:
        text_block.vectorizer.set_params(strip_accents=None)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["header"] = np.array(str(arrays["header"]).replace('"format": 1', '"format": 9'))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(ValueError, match="format"):
        load_predictor_state(buf.getvalue())


@pytest.mark.parametrize("family", FAMILIES)
def test_numbers_too_large_to_learn_from_are_missing_to_the_models(datasets, family):
    """The API accepts any finite JSON number; a few up to ~1.7e308 among the labels made
    the scaler overflow and every training of the task fail. Beyond ``MAX_MAGNITUDE`` the
    models read a number as missing, in training and in the compiled predictor alike, and
    the out-of-range check flags it (its case goes to a person)."""
    from service.ml.frame import MAX_MAGNITUDE
    from service.ml.profile import build_profile, range_checker

    d = datasets["credit_data"]
    number = next(f["name"] for f in d.fields if f["type"] == "number")
    rows = [dict(r) for r in d.rows[:600]]
    for i, value in enumerate((1.7e308, -1.7e308, 1e154, 10**400, MAX_MAGNITUDE * 10)):
        rows[i * 7][number] = value
    pipe = build_pipeline(d.fields, family, hgb_max_iter=10, n_rows=len(rows))
    pipe.fit(rows_to_frame(rows, d.fields), d.labels[:600])
    predictor = compile_predictor(pipe, d.fields, d.label_set)
    assert predictor.compiled, predictor.reason
    probe = [dict(rows[i * 7]) for i in range(5)]
    probe.append({**rows[1], number: MAX_MAGNITUDE})  # the largest a model reads
    want = pipeline_proba(pipe, probe, d.fields, d.label_set)
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(predictor.predict_proba_rows(probe), want, atol=TOL)
    for i, row in enumerate(probe):  # one at a time: floats alone take NumPy's own conversion
        np.testing.assert_allclose(predictor.predict_proba_rows([row]), want[i : i + 1], atol=TOL)
    as_missing = pipeline_proba(pipe, [{**rows[0], number: None}], d.fields, d.label_set)
    np.testing.assert_allclose(want[:1], as_missing, atol=TOL)
    check = range_checker(build_profile(rows, d.fields))
    assert all(number in check(row) for row in probe[:5])
    assert all(
        number in flags for flags in check.many([r for r in probe[:5] if type(r[number]) is float])
    )
