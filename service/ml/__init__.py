"""Pure machine-learning package for Tandem: frames, pipelines, artefacts, fast inference, profiles.

Nothing here imports Flask, the database or other ``service`` modules, so workers and the API
can both call it and it can be tested in isolation.
"""

from service.ml.artifacts import TRUSTED_TYPES, dump_model, load_model
from service.ml.fast import Predictor, compile_predictor
from service.ml.frame import rows_to_frame
from service.ml.pipeline import TrainedModel, build_pipeline, pipeline_proba, train_model
from service.ml.profile import DataProfile, FieldProfile, build_profile, drift_report, out_of_range

__all__ = [
    "TRUSTED_TYPES",
    "DataProfile",
    "FieldProfile",
    "Predictor",
    "TrainedModel",
    "build_pipeline",
    "build_profile",
    "compile_predictor",
    "drift_report",
    "dump_model",
    "load_model",
    "out_of_range",
    "pipeline_proba",
    "rows_to_frame",
    "train_model",
]
