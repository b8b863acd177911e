import numpy as np
import pytest

from service.ml.frame import rows_to_frame
from service.ml.pipeline import FAMILIES, pipeline_proba, train_model


@pytest.mark.parametrize("name", ["credit_data", "fine_foods", "letter"])
def test_train_model_trains_and_predicts(datasets, name):
    d = datasets[name]
    n = 1200
    model = train_model(
        d.rows[:n], d.labels[:n], d.fields, d.label_set, random_state=0, hgb_max_iter=15
    )
    m = model.metrics
    assert model.family in FAMILIES and m["family"] == model.family
    assert set(m["cv_log_loss"]) == set(FAMILIES)
    assert m["cv_log_loss"][model.family] == min(m["cv_log_loss"].values())
    assert m["log_loss"] == pytest.approx(m["cv_log_loss"][model.family])
    assert 0 <= m["ece"] <= 1 and 0 <= m["accuracy"] <= 1
    assert set(m["per_label"]) == set(d.label_set)
    assert m["accuracy"] > 0.55 if name != "letter" else m["accuracy"] > 0.5
    assert model.timings["total"] > 0 and "refit" in model.timings
    assert model.oof_proba.shape == (n, len(d.label_set))
    proba = pipeline_proba(model.pipeline, d.rows[n : n + 50], d.fields, d.label_set)
    assert proba.shape == (50, len(d.label_set))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_absent_label_gets_zero_probability(datasets):
    d = datasets["credit_data"]
    labels = [*d.label_set, "unknown"]
    model = train_model(
        d.rows[:400], d.labels[:400], d.fields, labels, families=["logistic_regression"]
    )
    assert model.metrics["absent_labels"] == ["unknown"]
    assert model.metrics["per_label"]["unknown"]["support"] == 0
    proba = pipeline_proba(model.pipeline, d.rows[:10], d.fields, labels)
    assert proba.shape == (10, 3) and np.all(proba[:, 2] == 0)


def test_selection_is_by_cv_log_loss(datasets):
    # letter is far easier for boosted trees than for a linear model.
    d = datasets["letter"]
    model = train_model(d.rows[:1500], d.labels[:1500], d.fields, d.label_set, hgb_max_iter=30)
    losses = model.metrics["cv_log_loss"]
    assert losses["hist_gradient_boosting"] < losses["logistic_regression"]
    assert model.family == "hist_gradient_boosting"


def test_bad_labels_rejected(datasets):
    d = datasets["credit_data"]
    with pytest.raises(ValueError, match="not in label_set"):
        train_model(d.rows[:50], ["maybe"] * 50, d.fields, d.label_set)
    with pytest.raises(ValueError, match="two labels"):
        train_model(d.rows[:50], ["good"] * 50, d.fields, d.label_set)


def test_rare_class_reduces_folds(datasets):
    d = datasets["credit_data"]
    labels = ["good"] * 58 + ["bad"] * 2
    model = train_model(
        d.rows[:60], labels, d.fields, d.label_set, families=["logistic_regression"]
    )
    assert model.metrics["n_splits"] == 2
    assert model.pipeline.predict_proba(rows_to_frame(d.rows[:3], d.fields)).shape == (3, 2)


def test_gradient_boosting_trains_on_a_tiny_text_vocabulary():
    """SVD components are bounded by the vocabulary (it once asked for 71 of 19 terms)."""
    import random

    from service.ml.pipeline import train_model

    rng = random.Random(1)
    fields = [{"name": "note", "type": "text"}, {"name": "x", "type": "number"}]
    rows, labels = [], []
    for _ in range(400):
        good = rng.random() < 0.5
        rows.append(
            {
                "note": rng.choice(
                    ["paid on time", "stable job"] if good else ["missed payment", "default"]
                ),
                "x": rng.gauss(1.0 if good else -1.0, 1.0),
            }
        )
        labels.append("good" if good else "bad")
    trained = train_model(
        rows, labels, fields, ["good", "bad"], families=("hist_gradient_boosting",), hgb_max_iter=10
    )
    assert trained.family == "hist_gradient_boosting"
    assert trained.metrics["failed_families"] == {}
    assert trained.metrics["accuracy"] > 0.9


def test_cross_validation_on_a_subsample_above_max_cv_rows(datasets):
    """Above ``max_cv_rows`` the family is chosen, and the out-of-fold predictions the
    readiness check reads are made, on a uniform random subsample: each one held out from
    the fold model that made it, with its own case's label; the refit uses every case. At
    or below the limit every case is cross-validated, as always."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    from service.ml.pipeline import MAX_CV_ROWS, build_pipeline, reorder_proba

    assert MAX_CV_ROWS == 20_000  # the simulations (at most 20,000 cases) never subsample
    d = datasets["credit_data"]
    rows, labels = d.rows[:900], d.labels[:900]
    kwargs = {"families": ["logistic_regression"], "random_state": 3}
    model = train_model(rows, labels, d.fields, d.label_set, max_cv_rows=400, **kwargs)
    index = model.oof_index
    assert len(index) == 400 == model.metrics["n_cv_rows"] and model.metrics["n_rows"] == 900
    assert index == sorted(set(index)) and 0 <= index[0] and index[-1] < 900
    assert index[-1] - index[0] > 700  # spread over all the cases, not the first 400
    assert model.oof_labels == [labels[i] for i in index]
    # The out-of-fold predictions are those of fold models that never saw the case.
    label_index = np.array([d.label_set.index(labels[i]) for i in index])
    frame = rows_to_frame([rows[i] for i in index], d.fields)
    y = np.array([labels[i] for i in index], dtype=object)
    template = build_pipeline(d.fields, "logistic_regression", random_state=3, n_rows=266)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=3)
    for train_idx, test_idx in folds.split(np.zeros(len(y)), label_index):
        fold = clone(template).fit(frame.iloc[train_idx], y[train_idx])
        expected = reorder_proba(
            fold.predict_proba(frame.iloc[test_idx]), fold.classes_, d.label_set
        )
        np.testing.assert_allclose(model.oof_proba[test_idx], expected)
    # The refitted model learnt from all 900 cases; at the limit nothing is left out.
    refit = build_pipeline(d.fields, "logistic_regression", random_state=3, n_rows=900)
    refit.fit(rows_to_frame(rows, d.fields), np.array(labels, dtype=object))
    probe = rows_to_frame(d.rows[900:950], d.fields)
    np.testing.assert_allclose(
        model.pipeline.predict_proba(probe), refit.predict_proba(probe), rtol=1e-6
    )
    whole = train_model(rows, labels, d.fields, d.label_set, max_cv_rows=900, **kwargs)
    assert whole.oof_index == list(range(900)) and whole.metrics["n_cv_rows"] == 900
