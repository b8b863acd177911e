"""The peer in bench/predict.py: the minimal Flask app a team writes to serve a scikit-learn
Pipeline — one `predict_proba` per request, nothing validated, routed or persisted."""

from __future__ import annotations

import os

import pandas as pd
from flask import Flask, jsonify, request

from service.ml.artifacts import load_model

with open(os.environ["PEER_MODEL"], "rb") as fh:
    pipeline = load_model(fh.read())
labels = [str(c) for c in pipeline.classes_]
app = Flask(__name__)


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    row = request.get_json()["input"]
    frame = pd.DataFrame([row])
    proba = pipeline.predict_proba(frame)[0]
    return jsonify({"scores": dict(zip(labels, map(float, proba), strict=True))})
