"""Fast inference for the predict hot path.

Why: a scikit-learn Pipeline fed a one-row DataFrame costs ~2.4 ms, almost all per-call
overhead (pandas, ColumnTransformer, validation). ``compile_predictor`` reads the fitted
parameters once (imputer medians, scaler mean/scale, one-hot column maps, TF-IDF vocabulary
and idf, SVD components, LR coefficients) and builds features with numpy/scipy directly.

The Pipeline stays the source of truth: the compiler only accepts the exact structure built by
``service.ml.pipeline.build_pipeline``; anything else (or a failed self-check against the
Pipeline on probe rows) returns a predictor that simply calls the Pipeline.
"""

from __future__ import annotations

import abc
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service.ml.frame import (
    MAX_MAGNITUDE,
    Field,
    Row,
    field_types,
    to_boolean,
    to_number,
    to_text,
)
from service.ml.lazy import lazy_module

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
else:
    # Scoring a compiled model needs NumPy only (and SciPy's sparse matrices for text);
    # scikit-learn, pandas and the Pipeline are needed to compile one, and load there.
    pd = lazy_module("pandas")
    sp = lazy_module("scipy.sparse")

SELF_CHECK_TOL = 1e-9
_UNSEEN_PROBE = "\x00tandem-unseen-probe\x00"


class Predictor(abc.ABC):
    """Probabilities in ``label_set`` order for a list of JSON-like rows.

    ``compiled`` is False when the Pipeline itself is used (``reason`` says why).
    """

    compiled: bool = False
    reason: str | None = None

    def __init__(self, label_set: Sequence[str]) -> None:
        self.label_set = [str(x) for x in label_set]

    @abc.abstractmethod
    def predict_proba_rows(self, rows: Sequence[Row]) -> np.ndarray:
        """Probabilities, one row per input row, columns in ``label_set`` order."""


class PipelinePredictor(Predictor):
    """Fallback: calls the Pipeline through ``rows_to_frame`` (slow but always right)."""

    def __init__(
        self,
        pipeline: Pipeline,
        fields: Sequence[Field],
        label_set: Sequence[str],
        reason: str,
    ) -> None:
        super().__init__(label_set)
        self.pipeline = pipeline
        self.fields = list(fields)
        self.reason = reason

    def predict_proba_rows(self, rows: Sequence[Row]) -> np.ndarray:
        if not rows:
            return np.zeros((0, len(self.label_set)), dtype=np.float64)
        from service.ml.pipeline import pipeline_proba

        return pipeline_proba(self.pipeline, rows, self.fields, self.label_set)


class _Unsupported(Exception):
    """The compiler does not understand this pipeline; fall back to it."""


# --------------------------------------------------------------------------------- blocks
_NUMBER_TYPES = frozenset({float, int, bool, type(None)})
_BOOLEAN_TYPES = frozenset({bool, type(None)})


class _NumericBlock:
    """SimpleImputer(add_indicator) -> StandardScaler over number/boolean columns."""

    def __init__(self, names: list[str], types: dict[str, str], pipe: Any) -> None:
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if not (
            isinstance(pipe, Pipeline)
            and [type(s) for _, s in pipe.steps] == [SimpleImputer, StandardScaler]
        ):
            raise _Unsupported("numeric block is not SimpleImputer -> StandardScaler")
        imputer, scaler = pipe.steps[0][1], pipe.steps[1][1]
        if imputer.keep_empty_features is not True and np.isnan(imputer.statistics_).any():
            raise _Unsupported("imputer dropped empty features")
        if not (isinstance(imputer.missing_values, float) and math.isnan(imputer.missing_values)):
            raise _Unsupported("imputer missing_values is not NaN")
        self.names = names
        self.convert: list[Callable[[Any], float]] = [
            to_boolean if types[n] == "boolean" else to_number for n in names
        ]
        self.medians = np.asarray(imputer.statistics_, dtype=np.float64)
        if np.isnan(self.medians).any():
            raise _Unsupported("imputer statistics contain NaN")
        ind = imputer.indicator_
        self.indicator = (
            np.asarray(ind.features_, dtype=np.intp) if ind is not None else np.zeros(0, np.intp)
        )
        n_out = len(names) + len(self.indicator)
        self.mean = (
            np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else np.zeros(n_out)
        )
        self.scale = (
            np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else np.ones(n_out)
        )
        self.width = n_out
        if self.mean.shape != (n_out,) or self.scale.shape != (n_out,):
            raise _Unsupported("scaler width does not match imputer output")

    def _plain(self, rows: Sequence[Row]) -> np.ndarray | None:
        """The values as floats when every one is what validated input holds (a JSON number,
        a boolean where the field is boolean, or null): NumPy converts those exactly as
        ``to_number`` / ``to_boolean`` do (null -> NaN), without a Python call per value.
        None when any value needs the converters (strings, a number in a boolean field)."""
        names = self.names
        values = [row.get(name) for row in rows for name in names]
        k = len(names)
        for j, conv in enumerate(self.convert):
            allowed = _BOOLEAN_TYPES if conv is to_boolean else _NUMBER_TYPES
            if not allowed.issuperset(map(type, values[j::k])):
                return None
        try:
            return np.array(values, dtype=np.float64).reshape(len(rows), k)
        except (OverflowError, ValueError, TypeError):  # e.g. an int beyond a double
            return None

    def dense(self, rows: Sequence[Row]) -> np.ndarray:
        x = self._plain(rows)
        if x is None:
            x = np.array(
                [
                    [
                        conv(row.get(name))
                        for name, conv in zip(self.names, self.convert, strict=True)
                    ]
                    for row in rows
                ],
                dtype=np.float64,
            ).reshape(len(rows), len(self.names))
        # As to_number reads them: numbers beyond MAX_MAGNITUDE are missing (NaN compares
        # false, so it stays as it is).
        with np.errstate(invalid="ignore"):
            x[np.abs(x) > MAX_MAGNITUDE] = np.nan
        missing = np.isnan(x)
        x = np.where(missing, self.medians, x)
        if len(self.indicator):
            x = np.hstack([x, missing[:, self.indicator].astype(np.float64)])
        x -= self.mean
        x /= self.scale
        return x


class _CategoryBlock:
    """Imputer + one-hot for one category field, reduced to value -> column (or -1)."""

    def __init__(self, name: str, pipe: Any) -> None:
        from sklearn.pipeline import Pipeline

        if not isinstance(pipe, Pipeline):
            raise _Unsupported("category block is not a Pipeline")
        encoder = pipe.steps[-1][1]
        known = [c for c in encoder.categories_[0].tolist() if isinstance(c, str)]
        probe = [*known, np.nan, _UNSEEN_PROBE]
        col = np.empty(len(probe), dtype=object)
        col[:] = probe
        out = pipe.transform(pd.DataFrame({name: pd.Series(col, dtype=object)}))
        out = sp.csr_matrix(out)
        self.width = out.shape[1]
        if np.any(np.diff(out.indptr) > 1) or np.any(out.data != 1.0):
            raise _Unsupported(f"category block {name!r} is not one-hot")
        cols = np.full(len(probe), -1, dtype=np.intp)
        for i in range(len(probe)):
            lo, hi = out.indptr[i], out.indptr[i + 1]
            if hi > lo:
                cols[i] = out.indices[lo]
        self.name = name
        self.map: dict[str, int] = {c: int(cols[i]) for i, c in enumerate(known)}
        self.missing_col = int(cols[len(known)])
        self.unknown_col = int(cols[len(known) + 1])

    def columns(self, rows: Sequence[Row]) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.intp)
        name, mapping = self.name, self.map
        unknown, missing = self.unknown_col, self.missing_col
        for i, row in enumerate(rows):
            v = row.get(name)
            if type(v) is not str:  # validated input holds str or None: the rest converts
                v = to_text(v)
            out[i] = mapping.get(v, unknown) if isinstance(v, str) else missing
        return out


class _TextBlock:
    """fill "" -> TF-IDF (-> TruncatedSVD) for one text field."""

    def __init__(self, name: str, pipe: Any) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        from service.ml.pipeline import fill_text

        steps = pipe.steps if isinstance(pipe, Pipeline) else []
        kinds = [type(s) for _, s in steps]
        if len(steps) not in (2, 3) or not (
            kinds[0] is FunctionTransformer
            and getattr(steps[0][1], "func", None) is fill_text
            and isinstance(steps[1][1], TfidfVectorizer)
            and (len(steps) == 2 or kinds[2] is TruncatedSVD)
        ):
            raise _Unsupported(f"text block {name!r} has an unknown structure")
        vec: TfidfVectorizer = steps[1][1]
        if vec.binary or vec.norm not in ("l2", None) or vec.input != "content":
            raise _Unsupported(f"text block {name!r} uses unsupported TF-IDF options")
        self.name = name
        self.analyzer = vec.build_analyzer()
        self.vocab: dict[str, int] = vec.vocabulary_
        self.n_terms = len(self.vocab)
        self.idf = np.asarray(vec.idf_, dtype=np.float64) if vec.use_idf else None
        self.sublinear = bool(vec.sublinear_tf)
        self.l2 = vec.norm == "l2"
        self.vectorizer = vec
        self.svd: TruncatedSVD | None = steps[2][1] if len(steps) == 3 else None
        self.components: np.ndarray | None = None
        if len(steps) == 3:
            self.components = np.ascontiguousarray(steps[2][1].components_.T)
        self.width = self.n_terms if self.components is None else self.components.shape[1]

    def tfidf(self, rows: Sequence[Row]) -> sp.csr_matrix:
        indptr = [0]
        indices: list[int] = []
        data: list[float] = []
        vocab, analyzer = self.vocab, self.analyzer
        for row in rows:
            v = to_text(row.get(self.name))
            counts: dict[int, int] = {}
            if isinstance(v, str) and v:
                for tok in analyzer(v):
                    j = vocab.get(tok)
                    if j is not None:
                        counts[j] = counts.get(j, 0) + 1
            indices.extend(counts.keys())
            data.extend(counts.values())
            indptr.append(len(indices))
        idx = np.asarray(indices, dtype=np.intp)
        val = np.asarray(data, dtype=np.float64)
        if self.sublinear:
            np.log(val, out=val)
            val += 1.0
        if self.idf is not None:
            val *= self.idf[idx]
        ptr = np.asarray(indptr, dtype=np.intp)
        if self.l2 and len(val):
            nnz = np.diff(ptr)
            row_of = np.repeat(np.arange(len(rows)), nnz)
            norms = np.sqrt(np.bincount(row_of, weights=val * val, minlength=len(rows)))
            norms[norms == 0.0] = 1.0
            val /= np.repeat(norms, nnz)
        return sp.csr_matrix((val, idx, ptr), shape=(len(rows), self.n_terms))

    def features_exact(self, rows: Sequence[Row]) -> sp.csr_matrix | np.ndarray:
        """Bit-identical to the Pipeline (fitted vectorizer/SVD): tree models compare
        features against thresholds, so a last-bit difference could flip a split."""
        docs = [v if isinstance(v, str) else "" for v in (to_text(r.get(self.name)) for r in rows)]
        x = self.vectorizer.transform(docs)
        return x if self.svd is None else self.svd.transform(x)

    def features(self, rows: Sequence[Row]) -> sp.csr_matrix | np.ndarray:
        """Hand-built TF-IDF (+SVD): equal to ~1e-15, fine for smooth linear scoring."""
        x = self.tfidf(rows)
        if self.components is None:
            return x
        return np.asarray(x @ self.components)


_Block = _NumericBlock | _CategoryBlock | _TextBlock


# ------------------------------------------------------------------------------ predictor
class CompiledPredictor(Predictor):
    """Features built straight from rows; LR scored in numpy, HGB via its predict_proba."""

    compiled = True

    def __init__(
        self,
        pipeline: Pipeline,
        fields: Sequence[Field],
        label_set: Sequence[str],
    ) -> None:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        super().__init__(label_set)
        if [n for n, _ in pipeline.steps] != ["features", "clf"]:
            raise _Unsupported("pipeline steps are not ['features', 'clf']")
        ct, clf = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(ct, ColumnTransformer):
            raise _Unsupported("first step is not a ColumnTransformer")
        types = dict(field_types(fields))
        self.blocks: list[tuple[_Block, int]] = []
        offset = 0
        for name, trans, cols in ct.transformers_:
            if trans == "drop" or (isinstance(cols, list) and not cols):
                continue
            if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
                raise _Unsupported(f"transformer {name!r} does not select columns by name")
            if any(c not in types for c in cols):
                raise _Unsupported(f"transformer {name!r} uses columns that are not fields")
            block: _Block
            kinds = {types[c] for c in cols}
            if kinds <= {"number", "boolean"}:
                block = _NumericBlock(cols, types, trans)
            elif kinds == {"category"} and len(cols) == 1:
                block = _CategoryBlock(cols[0], trans)
            elif kinds == {"text"} and len(cols) == 1:
                block = _TextBlock(cols[0], trans)
            else:
                raise _Unsupported(f"transformer {name!r} mixes field types")
            self.blocks.append((block, offset))
            offset += block.width
        self.n_features = offset
        if getattr(clf, "n_features_in_", None) != offset:
            raise _Unsupported("feature width does not match the classifier")
        classes = [str(c) for c in clf.classes_]
        index = {label: j for j, label in enumerate(self.label_set)}
        if any(c not in index for c in classes):
            raise _Unsupported("classifier has classes outside label_set")
        self.out_cols = np.array([index[c] for c in classes], dtype=np.intp)
        self.clf = clf
        if type(clf) is LogisticRegression:
            self.kind = "lr"
            self.coef_t = np.ascontiguousarray(np.asarray(clf.coef_, dtype=np.float64).T)
            self.intercept = np.asarray(clf.intercept_, dtype=np.float64)
            if len(classes) == 2 and self.coef_t.shape[1] != 1:
                raise _Unsupported("binary LR with unexpected coefficient shape")
        elif type(clf) is HistGradientBoostingClassifier:
            self.kind = "hgb"
        else:
            raise _Unsupported(f"classifier {type(clf).__name__} is not compiled")

    def _decision_lr(self, rows: Sequence[Row]) -> np.ndarray:
        n = len(rows)
        dec = np.tile(self.intercept, (n, 1))
        w = self.coef_t
        for block, off in self.blocks:
            if isinstance(block, _CategoryBlock):
                cols = block.columns(rows)
                hit = cols >= 0
                if hit.all():
                    dec += w[off + cols]
                elif hit.any():
                    dec[hit] += w[off + cols[hit]]
            elif isinstance(block, _NumericBlock):
                dec += block.dense(rows) @ w[off : off + block.width]
            else:
                dec += block.features(rows) @ w[off : off + block.width]
        return dec

    def _dense(self, rows: Sequence[Row]) -> np.ndarray:
        n = len(rows)
        x = np.zeros((n, self.n_features), dtype=np.float64)
        for block, off in self.blocks:
            if isinstance(block, _CategoryBlock):
                cols = block.columns(rows)
                hit = np.flatnonzero(cols >= 0)
                x[hit, off + cols[hit]] = 1.0
            elif isinstance(block, _NumericBlock):
                x[:, off : off + block.width] = block.dense(rows)
            else:
                feats = block.features_exact(rows)
                x[:, off : off + block.width] = (
                    feats.toarray() if isinstance(feats, sp.spmatrix | sp.sparray) else feats
                )
        return x

    def _proba_classes(self, rows: Sequence[Row]) -> np.ndarray:
        if self.kind == "lr":
            dec = self._decision_lr(rows)
            if dec.shape[1] == 1:
                p = _expit(dec[:, 0])
                return np.column_stack([1.0 - p, p])
            dec -= dec.max(axis=1, keepdims=True)
            np.exp(dec, out=dec)
            dec /= dec.sum(axis=1, keepdims=True)
            return dec
        return np.asarray(self.clf.predict_proba(self._dense(rows)), dtype=np.float64)

    def _one_plan(self) -> tuple[list[float], list[list[float]], list[tuple[Any, ...]]] | None:
        """What ``_proba_one`` needs as Python lists, built on first use; None: not LR, or a
        text field (TF-IDF stays vectorised)."""
        if "_plan" not in self.__dict__:
            plan: Any = None
            if self.kind == "lr" and not any(isinstance(b, _TextBlock) for b, _ in self.blocks):
                steps: list[tuple[Any, ...]] = []
                for block, off in self.blocks:
                    if isinstance(block, _CategoryBlock):
                        steps.append(
                            ("category", off, block.name, block.map, block.unknown_col,
                             block.missing_col)
                        )  # fmt: skip
                    elif isinstance(block, _NumericBlock):
                        steps.append(
                            ("numeric", off, list(zip(block.names, block.convert, strict=True)),
                             block.medians.tolist(), block.indicator.tolist(),
                             list(zip(block.mean.tolist(), block.scale.tolist(), strict=True)))
                        )  # fmt: skip
                plan = (self.intercept.tolist(), self.coef_t.tolist(), steps)
            self.__dict__["_plan"] = plan
        result: tuple[list[float], list[list[float]], list[tuple[Any, ...]]] | None
        result = self.__dict__["_plan"]
        return result

    def _proba_one(self, row: Row) -> np.ndarray | None:
        """One row of a logistic regression without text fields, in Python floats.

        Why: a single predict is one row, and the vectorised path spent ~25 NumPy calls
        (~3 µs each) on it. The same operations in the same order: imputing, scaling and the
        one-hot columns are bit-identical; only the dot product may sum in another order
        (last bits), which the self-check compares like everything else. None: use NumPy.
        """
        plan = self._one_plan()
        if plan is None:
            return None
        intercept, w, steps = plan
        dec = list(intercept)
        width = len(dec)
        for step in steps:
            off = step[1]
            if step[0] == "category":
                _, _, name, mapping, unknown, missing_col = step
                v = row.get(name)
                if type(v) is not str:
                    v = to_text(v)
                col = mapping.get(v, unknown) if isinstance(v, str) else missing_col
                if col >= 0:
                    wc = w[off + col]
                    for k in range(width):
                        dec[k] += wc[k]
                continue
            _, _, convert, medians, indicator, standard = step
            x = [conv(row.get(name)) for name, conv in convert]
            missing = [v != v for v in x]  # NaN
            x = [m if miss else v for v, m, miss in zip(x, medians, missing, strict=True)]
            x += [1.0 if missing[i] else 0.0 for i in indicator]
            sums = [0.0] * width
            for j, (v, (mean, scale)) in enumerate(zip(x, standard, strict=True)):
                z = (v - mean) / scale
                wj = w[off + j]
                for k in range(width):
                    sums[k] += z * wj[k]
            for k in range(width):
                dec[k] += sums[k]
        if width == 1:
            try:
                p = 1.0 / (1.0 + math.exp(-dec[0]))
            except OverflowError:  # e^-x beyond a double: p = 0, as NumPy's path gives
                p = 0.0
            return np.array([[1.0 - p, p]])
        top = max(dec)
        exps = [math.exp(d - top) for d in dec]
        total = sum(exps)
        return np.array([[e / total for e in exps]])

    def _classes_in_order(self) -> bool:
        """Whether the model's classes are the task's labels in order (checked once per
        ``out_cols``: ~10 µs a single predict)."""
        cached = self.__dict__.get("_in_order")
        if cached is None or cached[0] is not self.out_cols:
            same = len(self.out_cols) == len(self.label_set) and np.array_equal(
                self.out_cols, np.arange(len(self.label_set))
            )
            cached = self.__dict__["_in_order"] = (self.out_cols, bool(same))
        return bool(cached[1])

    def predict_proba_rows(self, rows: Sequence[Row]) -> np.ndarray:
        if not rows:
            return np.zeros((0, len(self.label_set)), dtype=np.float64)
        proba = self._proba_one(rows[0]) if len(rows) == 1 else None
        if proba is None:
            proba = self._proba_classes(rows)
        if self._classes_in_order():
            return proba
        out = np.zeros((len(rows), len(self.label_set)), dtype=np.float64)
        out[:, self.out_cols] = proba
        return out


def _expit(x: np.ndarray) -> np.ndarray:
    """The logistic function as ``scipy.special.expit`` computes it (1 / (1 + e^-x), to the
    last bits; the self-check below compares), without loading SciPy into a process that
    only scores."""
    with np.errstate(over="ignore"):  # e^-x overflows to inf for x < -709: p = 0, as expit
        return 1.0 / (1.0 + np.exp(-x))


def _probe_rows(predictor: CompiledPredictor, fields: Sequence[Field]) -> list[dict[str, Any]]:
    """Rows that exercise missing, known, unknown and extreme values of every field."""
    options: dict[str, list[Any]] = {}
    for block, _ in predictor.blocks:
        if isinstance(block, _NumericBlock):
            for j, name in enumerate(block.names):
                med = float(block.medians[j])
                spread = float(block.scale[j]) if block.scale[j] > 0 else 1.0
                if block.convert[j] is to_boolean:
                    options[name] = [None, True, False]
                else:
                    options[name] = [None, med, med + 3 * spread, med - 7.5 * spread]
        elif isinstance(block, _CategoryBlock):
            known = list(block.map)[:3]
            options[block.name] = [None, *known, "never seen value"]
        else:
            terms = list(block.vocab)[:12]
            options[block.name] = [
                None,
                "",
                " ".join(terms),
                " ".join(terms[:3] + terms[:1] + ["unseen-word"]),
            ]
    width = max((len(v) for v in options.values()), default=1)
    rows = []
    for i in range(width * 2):
        rows.append(
            {name: vals[(i + k) % len(vals)] for k, (name, vals) in enumerate(options.items())}
        )
    rows.append({})
    return rows


def compile_predictor(
    pipeline: Pipeline,
    fields: Sequence[Field],
    label_set: Sequence[str],
    *,
    check_rows: Sequence[Row] | None = None,
) -> Predictor:
    """Compile ``pipeline`` for fast scoring; on anything unexpected return a
    ``PipelinePredictor``. The result is self-checked against the Pipeline on probe rows
    (plus ``check_rows`` if given) and only used if it agrees within ``SELF_CHECK_TOL``."""
    try:
        predictor = CompiledPredictor(pipeline, fields, label_set)
    except _Unsupported as exc:
        return PipelinePredictor(pipeline, fields, label_set, reason=str(exc))
    from service.ml.pipeline import pipeline_proba

    rows = _probe_rows(predictor, fields) + list(check_rows or [])
    try:
        expected = pipeline_proba(pipeline, rows, fields, label_set)
        got = predictor.predict_proba_rows(rows)
        ok = got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= SELF_CHECK_TOL))
        one = np.vstack([predictor.predict_proba_rows([row]) for row in rows])  # single path
        ok = ok and bool(np.all(np.abs(one - expected) <= SELF_CHECK_TOL))
    except Exception as exc:  # compiled path broke on probes: the Pipeline decides
        return PipelinePredictor(pipeline, fields, label_set, reason=f"self-check error: {exc}")
    if not ok:
        return PipelinePredictor(
            pipeline, fields, label_set, reason="self-check disagreed with the Pipeline"
        )
    return predictor


# --------------------------------------------------------------------------- stored form
#: Bumped when the layout below changes; a form of another version is not used (the model is
#: then compiled from its skops artefact, as before stored forms existed).
STATE_FORMAT = 1


def _word_analyzer(lowercase: bool, pattern: str, ngram_range: tuple[int, int]) -> Callable:
    """scikit-learn's word analyzer (``_VectorizerMixin.build_analyzer`` for ``analyzer="word"``
    with no stop words, accents kept, no custom preprocessor or tokenizer), without
    scikit-learn: lower-case, ``re.findall`` of the token pattern, then n-grams joined by a
    space in the order ``_word_ngrams`` makes them."""
    import re

    findall = re.compile(pattern).findall
    min_n, max_n = ngram_range

    def analyze(doc: str) -> list[str]:
        tokens: list[str] = findall(doc.lower() if lowercase else doc)
        if max_n == 1:
            return tokens
        out = list(tokens) if min_n == 1 else []
        for n in range(max(min_n, 2), min(max_n + 1, len(tokens) + 1)):
            out.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        return out

    return analyze


def _text_options(vec: Any) -> dict[str, Any] | None:
    """The TF-IDF options ``_word_analyzer`` reproduces, or None when it cannot."""
    if not (
        vec.analyzer == "word"
        and vec.preprocessor is None
        and vec.tokenizer is None
        and vec.stop_words is None
        and vec.strip_accents is None
        and vec.input == "content"
    ):
        return None
    pattern = vec.token_pattern
    if pattern is None or re.compile(pattern).groups > 1:
        return None
    return {
        "lowercase": bool(vec.lowercase),
        "token_pattern": str(pattern),
        "ngram_range": [int(vec.ngram_range[0]), int(vec.ngram_range[1])],
    }


def predictor_state(
    predictor: Predictor, pipeline: Pipeline, fields: Sequence[Field], label_set: Sequence[str]
) -> bytes | None:
    """The compiled logistic-regression predictor as an ``.npz`` (NumPy arrays and one JSON
    header: no pickle), so a web process scores with NumPy alone and never loads
    scikit-learn, skops or pandas to read the skops artefact (bench/README.md, "Memory").

    None when there is nothing to store: boosted trees (scored by scikit-learn itself), a
    Pipeline fallback, TF-IDF options the stored analyzer does not reproduce, or a stored
    form that does not agree with the Pipeline within ``SELF_CHECK_TOL`` on the probe rows.
    """
    if not isinstance(predictor, CompiledPredictor) or predictor.kind != "lr":
        return None
    arrays: dict[str, np.ndarray] = {
        "coef_t": predictor.coef_t,
        "intercept": predictor.intercept,
        "out_cols": predictor.out_cols,
    }
    blocks: list[dict[str, Any]] = []
    for i, (block, off) in enumerate(predictor.blocks):
        key = f"b{i}_"
        if isinstance(block, _NumericBlock):
            blocks.append(
                {
                    "kind": "numeric",
                    "names": block.names,
                    "boolean": [conv is to_boolean for conv in block.convert],
                }
            )
            arrays |= {
                key + "medians": block.medians,
                key + "indicator": block.indicator,
                key + "mean": block.mean,
                key + "scale": block.scale,
            }
        elif isinstance(block, _CategoryBlock):
            blocks.append(
                {
                    "kind": "category",
                    "name": block.name,
                    "map": block.map,
                    "missing_col": block.missing_col,
                    "unknown_col": block.unknown_col,
                }
            )
        else:
            options = _text_options(block.vectorizer)
            if options is None:
                return None
            terms = [""] * block.n_terms
            for term, j in block.vocab.items():
                terms[j] = term
            blocks.append(
                {
                    "kind": "text",
                    "name": block.name,
                    "sublinear": block.sublinear,
                    "l2": block.l2,
                    **options,
                }
            )
            arrays[key + "terms"] = np.array(terms, dtype=str)
            if block.idf is not None:
                arrays[key + "idf"] = block.idf
            if block.components is not None:
                arrays[key + "components"] = block.components
        blocks[-1] |= {"offset": off, "width": block.width}
    header = {
        "format": STATE_FORMAT,
        "label_set": predictor.label_set,
        "n_features": predictor.n_features,
        "blocks": blocks,
    }
    arrays["header"] = np.array(json.dumps(header))
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    data = buf.getvalue()
    # The stored form must score exactly as the Pipeline does, like the compiled one.
    from service.ml.pipeline import pipeline_proba

    rows = _probe_rows(predictor, fields)
    expected = pipeline_proba(pipeline, rows, fields, label_set)
    stored = load_predictor_state(data)
    got = stored.predict_proba_rows(rows)
    if got.shape != expected.shape or not np.all(np.abs(got - expected) <= SELF_CHECK_TOL):
        return None
    one = np.vstack([stored.predict_proba_rows([row]) for row in rows])
    if not np.all(np.abs(one - expected) <= SELF_CHECK_TOL):
        return None
    return data


def load_predictor_state(data: bytes) -> CompiledPredictor:
    """The predictor ``predictor_state`` stored; NumPy only (SciPy's sparse matrices for text).
    Raises ``ValueError`` for a form of another ``STATE_FORMAT``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(str(arrays.pop("header")))
    if header.get("format") != STATE_FORMAT:
        raise ValueError(f"stored predictor format {header.get('format')!r} is not {STATE_FORMAT}")
    predictor = CompiledPredictor.__new__(CompiledPredictor)
    Predictor.__init__(predictor, header["label_set"])
    predictor.blocks = []
    for i, spec in enumerate(header["blocks"]):
        key = f"b{i}_"
        block: _Block
        if spec["kind"] == "numeric":
            block = _NumericBlock.__new__(_NumericBlock)
            block.names = list(spec["names"])
            block.convert = [to_boolean if b else to_number for b in spec["boolean"]]
            block.medians = arrays[key + "medians"]
            block.indicator = arrays[key + "indicator"].astype(np.intp)
            block.mean = arrays[key + "mean"]
            block.scale = arrays[key + "scale"]
        elif spec["kind"] == "category":
            block = _CategoryBlock.__new__(_CategoryBlock)
            block.name = spec["name"]
            block.map = {str(k): int(v) for k, v in spec["map"].items()}
            block.missing_col = int(spec["missing_col"])
            block.unknown_col = int(spec["unknown_col"])
        elif spec["kind"] == "text":
            block = _TextBlock.__new__(_TextBlock)
            block.name = spec["name"]
            block.analyzer = _word_analyzer(
                bool(spec["lowercase"]), spec["token_pattern"], tuple(spec["ngram_range"])
            )
            block.vocab = {str(t): j for j, t in enumerate(arrays[key + "terms"].tolist())}
            block.n_terms = len(block.vocab)
            block.idf = arrays.get(key + "idf")
            block.sublinear = bool(spec["sublinear"])
            block.l2 = bool(spec["l2"])
            block.vectorizer = None
            block.svd = None
            block.components = arrays.get(key + "components")
        else:
            raise ValueError(f"unknown block kind {spec['kind']!r}")
        block.width = int(spec["width"])
        predictor.blocks.append((block, int(spec["offset"])))
    predictor.n_features = int(header["n_features"])
    predictor.out_cols = arrays["out_cols"].astype(np.intp)
    predictor.clf = None
    predictor.kind = "lr"
    predictor.coef_t = arrays["coef_t"]
    predictor.intercept = arrays["intercept"]
    return predictor
