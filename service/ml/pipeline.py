"""Build and train the per-task pipeline (docs/learning.md).

Why this shape: one ColumnTransformer (step ``"features"``) feeding one classifier (step
``"clf"``). The fast predictor in ``service.ml.fast`` knows exactly these blocks, so keep the
two in step when changing either.

Training budget (2 CPU cores): each candidate family is scored by stratified k-fold
(k=3 by default, fewer when a class has fewer than k examples) on at most
``MAX_CV_ROWS`` rows; the out-of-fold probabilities of the chosen family give the held-out
metrics, so the chosen family is never fitted twice for metrics. Total fits = 2*k + 1.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from service.ml.frame import Field, Row, field_types, rows_to_frame

FAMILIES = ("logistic_regression", "hist_gradient_boosting")
MISSING_CATEGORY = "__missing__"
#: Cross-validation (the family choice, the held-out metrics, the out-of-fold predictions the
#: readiness check reads) runs on a uniform random subsample of at most this many cases;
#: the chosen family is still refitted on every case. 20,000 (was 50,000): at 100,000
#: letter cases boosting's cross-validation took 38 of the 79 s, now 12 of 51 s (same run,
#: bench/README.md "Training"); the refitted model is the same whenever the family is, and
#: nothing changes up to 20,000 cases (docs/learning.md, "Training on many cases").
MAX_CV_ROWS = 20_000
CAT_MIN_FREQUENCY = 5
CAT_MAX_CATEGORIES = 100
TEXT_MAX_FEATURES = 50_000
TEXT_SVD_COMPONENTS = 100
PROBA_EPS = 1e-15


def fill_text(x: Any) -> np.ndarray:
    """One text column (n, 1) -> 1-D array of str with missing as "" (TF-IDF wants 1-D str)."""
    arr = np.asarray(x, dtype=object).reshape(-1)
    out = np.empty(arr.shape[0], dtype=object)
    out[:] = ["" if not isinstance(v, str) else v for v in arr]
    return out


class CompactTfidfVectorizer(TfidfVectorizer):
    """TfidfVectorizer whose fitted vocabulary is stored as one string array.

    Why: skops writes a dict node per vocabulary entry; 15k terms took 6 s and 9 MB. A
    ``<U`` numpy array (terms in column order) is stored as one .npy, and the dict is rebuilt
    on load. Behaviour is otherwise identical to TfidfVectorizer.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        vocab = state.pop("vocabulary_", None)
        if isinstance(vocab, dict):
            terms = [""] * len(vocab)
            for term, j in vocab.items():
                terms[j] = term
            state["vocabulary_terms_"] = np.array(terms, dtype=str)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        terms = state.pop("vocabulary_terms_", None)
        if terms is not None:
            state["vocabulary_"] = {str(t): j for j, t in enumerate(terms.tolist())}
        super().__setstate__(state)


def _text_vectorizer() -> TfidfVectorizer:
    # Unigrams+bigrams, min_df=2 drops typos/ids, cap keeps the model small at 100k rows.
    return CompactTfidfVectorizer(
        ngram_range=(1, 2),
        min_df=2,
        max_df=0.95,
        max_features=TEXT_MAX_FEATURES,
        sublinear_tf=True,
        dtype=np.float64,
    )


def build_pipeline(
    fields: Sequence[Field],
    classifier: str,
    *,
    random_state: int = 0,
    hgb_max_iter: int = 200,
    n_rows: int | None = None,
    text_vocab: dict[str, int] | None = None,
) -> Pipeline:
    """Unfitted pipeline for ``classifier`` in ``FAMILIES``.

    Text: fill "" -> TF-IDF (LR) or TF-IDF -> SVD (HGB, which needs dense input). Category:
    missing as its own value -> one-hot with infrequent bucket (unknown -> infrequent).
    Number/boolean: median imputation + missing indicator -> standard scaling.
    """
    if classifier not in FAMILIES:
        raise ValueError(f"unknown classifier family {classifier!r}")
    ftypes = field_types(fields)
    transformers: list[tuple[str, Any, Any]] = []
    numeric = [name for name, typ in ftypes if typ in ("number", "boolean")]
    if numeric:
        transformers.append(
            (
                "num",
                Pipeline(
                    [
                        (
                            "impute",
                            SimpleImputer(
                                strategy="median", add_indicator=True, keep_empty_features=True
                            ),
                        ),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
    for i, (name, typ) in enumerate(ftypes):
        if typ == "category":
            transformers.append(
                (
                    f"cat{i}",
                    Pipeline(
                        [
                            (
                                "impute",
                                SimpleImputer(
                                    strategy="constant",
                                    fill_value=MISSING_CATEGORY,
                                    missing_values=np.nan,
                                ),
                            ),
                            (
                                "onehot",
                                OneHotEncoder(
                                    handle_unknown="infrequent_if_exist",
                                    min_frequency=CAT_MIN_FREQUENCY,
                                    max_categories=CAT_MAX_CATEGORIES,
                                    sparse_output=True,
                                    dtype=np.float64,
                                ),
                            ),
                        ]
                    ),
                    [name],
                )
            )
        elif typ == "text":
            steps: list[tuple[str, Any]] = [
                ("fill", FunctionTransformer(fill_text, validate=False)),
                ("tfidf", _text_vectorizer()),
            ]
            if classifier == "hist_gradient_boosting":
                n_comp = TEXT_SVD_COMPONENTS
                if n_rows is not None:
                    n_comp = max(1, min(n_comp, n_rows // 4))
                if text_vocab and name in text_vocab:
                    # SVD needs fewer components than terms; a cross-validation fold sees a
                    # smaller vocabulary than all rows, hence the margin.
                    n_comp = max(1, min(n_comp, text_vocab[name] // 3))
                steps.append(("svd", TruncatedSVD(n_components=n_comp, random_state=random_state)))
            transformers.append((f"text{i}", Pipeline(steps), [name]))
    features = ColumnTransformer(
        transformers,
        remainder="drop",
        sparse_threshold=0.0 if classifier == "hist_gradient_boosting" else 0.3,
    )
    clf: Any
    if classifier == "logistic_regression":
        clf = LogisticRegression(C=1.0, max_iter=2000)
    else:
        clf = HistGradientBoostingClassifier(
            max_iter=hgb_max_iter,
            learning_rate=0.1,
            early_stopping="auto",
            random_state=random_state,
        )
    return Pipeline([("features", features), ("clf", clf)])


def pipeline_proba(
    pipeline: Pipeline, rows: Sequence[Row], fields: Sequence[Field], label_set: Sequence[str]
) -> np.ndarray:
    """Pipeline probabilities in ``label_set`` order (labels unseen in training get 0)."""
    proba = pipeline.predict_proba(rows_to_frame(rows, fields))
    return reorder_proba(proba, pipeline.classes_, label_set)


def reorder_proba(
    proba: np.ndarray, classes: Sequence[Any], label_set: Sequence[str]
) -> np.ndarray:
    """Map columns from estimator ``classes`` order to ``label_set`` order."""
    index = {label: j for j, label in enumerate(label_set)}
    out = np.zeros((proba.shape[0], len(label_set)), dtype=np.float64)
    for k, cls in enumerate(classes):
        out[:, index[str(cls)]] = proba[:, k]
    return out


@dataclass
class TrainedModel:
    """Result of ``train_model``: the refitted pipeline plus held-out metrics and timings.

    ``oof_proba`` are the chosen family's out-of-fold probabilities (label order) with
    ``oof_labels`` the matching true labels and ``oof_index`` the positions of those rows in
    the training rows: the certification readiness check reads them (docs/policy.md).
    """

    pipeline: Pipeline
    family: str
    label_set: list[str]
    metrics: dict[str, Any]
    timings: dict[str, float]
    oof_proba: np.ndarray = field(repr=False)
    oof_labels: list[str] = field(repr=False)
    oof_index: list[int] = field(repr=False, default_factory=list)


def log_loss_labels(y_idx: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log probability of the true label, clipped at ``PROBA_EPS``."""
    p = np.clip(proba[np.arange(len(y_idx)), y_idx], PROBA_EPS, 1.0)
    return float(-np.mean(np.log(p)))


def expected_calibration_error(y_idx: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_idx).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def _n_splits(y_idx: np.ndarray, requested: int) -> int:
    counts = np.bincount(y_idx)
    counts = counts[counts > 0]
    return int(max(2, min(requested, counts.min())))


def _oof_proba(
    template: Pipeline,
    frame: Any,
    y: np.ndarray,
    y_idx: np.ndarray,
    label_set: Sequence[str],
    n_splits: int,
    random_state: int,
) -> np.ndarray:
    """Out-of-fold probabilities in label order; a fold missing a class gives it 0."""
    out = np.zeros((len(y), len(label_set)), dtype=np.float64)
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    for train_idx, test_idx in skf.split(np.zeros(len(y)), y_idx):
        model = clone(template)
        model.fit(frame.iloc[train_idx], y[train_idx])
        proba = model.predict_proba(frame.iloc[test_idx])
        out[test_idx] = reorder_proba(proba, model.classes_, label_set)
    return out


def _text_vocabulary_sizes(frame: Any, fields: Sequence[Field]) -> dict[str, int]:
    """Terms each text field's vectorizer would keep on these rows (bounds the SVD size)."""
    sizes: dict[str, int] = {}
    for name, typ in field_types(fields):
        if typ == "text":
            try:
                sizes[name] = len(_text_vectorizer().fit(fill_text(frame[[name]])).vocabulary_)
            except ValueError:  # empty vocabulary: every text missing or stop words only
                sizes[name] = 0
    return sizes


class TrainingStore(Protocol):
    """Where :func:`train_model` finds and keeps finished trainings (``tandem simulate
    --cache``: ``tandem.simulate.cache.FolderCache``)."""

    def load(self, key: str) -> TrainedModel | None: ...

    def save(self, key: str, trained: TrainedModel) -> None: ...


_TRAINING_STORE: ContextVar[TrainingStore | None] = ContextVar("tandem_training", default=None)


@contextmanager
def training_store(store: TrainingStore) -> Iterator[None]:
    """Reuse trainings on identical inputs in this context.

    Why: training is most of a replay's time, and replays of two policies with the same seed
    and seeded ids (``service.models.seeded_ids``) train on identical case sets until their
    routing first differs. Training is deterministic given its inputs (fixed random state),
    so a stored result is exactly what training again would give. The library never reads a
    stored training itself (it reads no pickles); the simulator's store does.
    """
    token = _TRAINING_STORE.set(store)
    try:
        yield
    finally:
        _TRAINING_STORE.reset(token)


def training_key(rows: Sequence[Row], labels_y: Sequence[str], **params: Any) -> str:
    """SHA-256 of everything a training depends on: cases, labels, knobs, scikit-learn."""
    import sklearn

    digest = hashlib.sha256()
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(sklearn.__version__.encode())
    for row, label in zip(rows, labels_y, strict=True):
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\x00" + str(label).encode() + b"\x00")
    return digest.hexdigest()


def train_model(
    rows: Sequence[Row],
    labels_y: Sequence[str],
    fields: Sequence[Field],
    label_set: Sequence[str],
    *,
    random_state: int = 0,
    families: Sequence[str] = FAMILIES,
    n_splits: int = 3,
    hgb_max_iter: int = 200,
    max_cv_rows: int = MAX_CV_ROWS,
) -> TrainedModel:
    """Choose the family with the lowest cross-validated log loss, refit it on all rows
    (:func:`_train_model`); from the :func:`training_store` when one is set and holds it.
    """
    params: dict[str, Any] = {
        "random_state": random_state,
        "families": tuple(families),
        "n_splits": n_splits,
        "hgb_max_iter": hgb_max_iter,
        "max_cv_rows": max_cv_rows,
    }
    store = _TRAINING_STORE.get()
    if store is None or len(rows) != len(labels_y):
        return _train_model(rows, labels_y, fields, label_set, **params)
    key = training_key(rows, labels_y, fields=list(fields), label_set=list(label_set), **params)
    cached = store.load(key)
    if cached is not None:
        return cached
    trained = _train_model(rows, labels_y, fields, label_set, **params)
    store.save(key, trained)
    return trained


def _train_model(
    rows: Sequence[Row],
    labels_y: Sequence[str],
    fields: Sequence[Field],
    label_set: Sequence[str],
    *,
    random_state: int = 0,
    families: Sequence[str] = FAMILIES,
    n_splits: int = 3,
    hgb_max_iter: int = 200,
    max_cv_rows: int = MAX_CV_ROWS,
) -> TrainedModel:
    """Choose the family with the lowest cross-validated log loss, refit it on all rows.

    Raises ValueError when fewer than two labels have examples or a label is not in
    ``label_set``. Labels of ``label_set`` without examples get probability 0 and are listed
    in ``metrics["absent_labels"]``.
    """
    t_start = time.perf_counter()
    label_list = [str(x) for x in label_set]
    if len(rows) != len(labels_y):
        raise ValueError("rows and labels_y differ in length")
    index = {label: j for j, label in enumerate(label_list)}
    unknown = sorted({str(y) for y in labels_y} - set(index))
    if unknown:
        raise ValueError(f"labels not in label_set: {unknown}")
    y = np.array([str(v) for v in labels_y], dtype=object)
    y_idx = np.array([index[v] for v in y], dtype=np.int64)
    present = sorted(set(y_idx.tolist()))
    if len(present) < 2:
        raise ValueError("need examples of at least two labels to train")
    absent = [label_list[j] for j in range(len(label_list)) if j not in present]

    frame = rows_to_frame(rows, fields)
    timings: dict[str, float] = {"frame": time.perf_counter() - t_start}

    # Cross-validate on a stratified-by-shuffle subsample when the data is large.
    rng = np.random.default_rng(random_state)
    cv_idx = np.arange(len(y))
    if len(y) > max_cv_rows:
        cv_idx = np.sort(rng.choice(len(y), size=max_cv_rows, replace=False))
    cv_frame, cv_y, cv_y_idx = frame.iloc[cv_idx], y[cv_idx], y_idx[cv_idx]
    k = _n_splits(cv_y_idx, n_splits)

    vocab = _text_vocabulary_sizes(frame, fields)
    cv_loss: dict[str, float] = {}
    oof: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for family in families:
        t0 = time.perf_counter()
        template = build_pipeline(
            fields,
            family,
            random_state=random_state,
            hgb_max_iter=hgb_max_iter,
            n_rows=int(len(cv_y) * (k - 1) / k),
            text_vocab=vocab,
        )
        try:
            oof[family] = _oof_proba(
                template, cv_frame, cv_y, cv_y_idx, label_list, k, random_state
            )
        except ValueError as exc:  # a family that cannot fit this data is not a candidate
            failed[family] = str(exc)[:300]
            continue
        cv_loss[family] = log_loss_labels(cv_y_idx, oof[family])
        timings[f"cv_{family}"] = time.perf_counter() - t0
    if not cv_loss:
        raise ValueError(f"no model family could be trained: {failed}")
    chosen = min(cv_loss, key=lambda fam: cv_loss[fam])

    t0 = time.perf_counter()
    pipeline = build_pipeline(
        fields,
        chosen,
        random_state=random_state,
        hgb_max_iter=hgb_max_iter,
        n_rows=len(y),
        text_vocab=vocab,
    )
    pipeline.fit(frame, y)
    timings["refit"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    metrics = held_out_metrics(cv_y_idx, oof[chosen], label_list)
    metrics.update(
        {
            "family": chosen,
            "cv_log_loss": cv_loss,
            "failed_families": failed,
            "n_splits": k,
            "n_rows": len(y),
            "n_cv_rows": len(cv_y),
            "absent_labels": absent,
            "label_counts": {
                label_list[j]: int(c)
                for j, c in enumerate(np.bincount(y_idx, minlength=len(label_list)))
            },
        }
    )
    return TrainedModel(
        pipeline=pipeline,
        family=chosen,
        label_set=label_list,
        metrics=metrics,
        timings=timings,
        oof_proba=oof[chosen],
        oof_labels=[str(v) for v in cv_y],
        oof_index=[int(i) for i in cv_idx],
    )


def held_out_metrics(
    y_idx: np.ndarray, proba: np.ndarray, label_set: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, log loss, ECE and per-label precision/recall from held-out probabilities."""
    pred = proba.argmax(axis=1)
    per_label: dict[str, Mapping[str, float | int | None]] = {}
    for j, label in enumerate(label_set):
        tp = int(np.sum((pred == j) & (y_idx == j)))
        n_pred = int(np.sum(pred == j))
        n_true = int(np.sum(y_idx == j))
        per_label[label] = {
            "precision": tp / n_pred if n_pred else None,
            "recall": tp / n_true if n_true else None,
            "support": n_true,
        }
    return {
        "accuracy": float(np.mean(pred == y_idx)),
        "log_loss": log_loss_labels(y_idx, proba),
        "ece": expected_calibration_error(y_idx, proba),
        "per_label": per_label,
    }
