"""Serialise trained pipelines with skops, loading only an explicit allow-list of types.

Why: pickle executes arbitrary code on load; a model artefact read back from the database
must not be able to do that. skops trusts its own safe defaults (scikit-learn estimators,
numpy arrays, scipy sparse matrices, builtins); ``TRUSTED_TYPES`` adds exactly the extra
types our trainer produces, found once with ``skops.io.get_untrusted_types`` over freshly
trained models of every family on every bundled dataset (re-checked by tests/ml).
"""

from __future__ import annotations

import skops.io as sio
from sklearn.pipeline import Pipeline

TRUSTED_TYPES: list[str] = [
    "numpy.dtype",
    "service.ml.pipeline.CompactTfidfVectorizer",
    "service.ml.pipeline.fill_text",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


def dump_model(pipeline: Pipeline) -> bytes:
    """Pipeline -> skops bytes (never pickle)."""
    return sio.dumps(pipeline)


def load_model(data: bytes) -> Pipeline:
    """skops bytes -> Pipeline; raises ``skops.io.exceptions.UntrustedTypesFoundException``
    when the artefact holds any type outside skops' defaults and ``TRUSTED_TYPES``."""
    obj = sio.loads(data, trusted=TRUSTED_TYPES)
    if not isinstance(obj, Pipeline):
        raise TypeError(f"artefact is a {type(obj).__name__}, not a Pipeline")
    return obj
