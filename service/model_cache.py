"""Per-process cache of loaded model versions.

A model version is immutable once trained, so its compiled predictor can be cached forever
by id; the only per-request cost is noticing that the task now points at another version,
which the task's ``revision`` column tells us.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.ml.fast import Predictor, compile_predictor, load_predictor_state
from service.ml.profile import DataProfile, RangeChecker, range_checker
from service.models import ModelVersion


@dataclass
class LoadedModel:
    """A version ready to score: compiled predictor, training profile, per-label thresholds."""

    id: int
    version: int
    predictor: Predictor
    profile: DataProfile | None
    label_thresholds: dict[str, float]
    labels: list[str]
    # Fields of a row far outside the training data (None when no profile was stored).
    out_of_range: RangeChecker | None = None


_lock = threading.Lock()
_models: dict[int, LoadedModel] = {}
MAX_MODELS = 32


def load(
    session: Session, model_id: int, fields: list[dict[str, Any]], labels: list[str]
) -> LoadedModel:
    cached = _models.get(model_id)
    if cached is not None:
        # A version may be re-certified at a later checkpoint: its per-label thresholds can
        # change while the artefact cannot, so refresh just those (load runs only when the
        # task's revision moved).
        cert = session.scalar(select(ModelVersion.certification).where(ModelVersion.id == model_id))
        cached.label_thresholds = dict((cert or {}).get("label_thresholds") or {})
        return cached
    row = session.execute(
        select(
            ModelVersion.predictor,
            ModelVersion.version,
            ModelVersion.profile,
            ModelVersion.certification,
        ).where(ModelVersion.id == model_id)
    ).one()
    # The model was trained on the fields the task had then; later optional fields are
    # ignored by the pipeline, so compile against the training-time field list if known.
    train_fields = (row.profile or {}).get("fields_spec") or fields
    train_labels = (row.profile or {}).get("labels") or labels
    predictor = _stored(row.predictor) or _compiled(session, model_id, train_fields, train_labels)
    profile = (
        DataProfile.from_dict(row.profile["data"]) if (row.profile or {}).get("data") else None
    )
    loaded = LoadedModel(
        id=model_id,
        version=row.version,
        predictor=predictor,
        profile=profile,
        label_thresholds=dict((row.certification or {}).get("label_thresholds") or {}),
        labels=list(train_labels),
        out_of_range=range_checker(profile) if profile is not None else None,
    )
    with _lock:
        if len(_models) >= MAX_MODELS:
            _models.pop(next(iter(_models)))
        _models[model_id] = loaded
    return loaded


def _stored(data: bytes | None) -> Predictor | None:
    """The version's stored compiled form: NumPy only, no scikit-learn in this process."""
    if data is None:
        return None
    try:
        return load_predictor_state(data)
    except (ValueError, KeyError, OSError):  # another format: compile from the artefact
        return None


def _compiled(
    session: Session, model_id: int, fields: list[dict[str, Any]], labels: list[str]
) -> Predictor:
    """Load the skops artefact and compile it (boosted trees, versions stored before the
    compiled form was): this loads scikit-learn, skops and pandas into the process."""
    from service.ml.artifacts import load_model

    artefact = session.scalar(select(ModelVersion.artefact).where(ModelVersion.id == model_id))
    if artefact is None:
        raise RuntimeError(f"model version {model_id} has no artefact")
    return compile_predictor(load_model(artefact), fields, labels)


def clear() -> None:
    with _lock:
        _models.clear()
