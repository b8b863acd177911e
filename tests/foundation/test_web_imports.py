"""A web process loads what serving needs, not the training, export or statistics stack.

scikit-learn, SciPy's statistics, MAPIE, skops, pandas and pyarrow cost a web process ~200 MB
(bench/README.md, "Memory"); they load where a model is trained, an export written or a
statistic computed. Checked in a fresh interpreter: the test process itself has them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_env
from tests.helpers import SIMPLE_TASK, auth, install_model, make_token

#: Modules a web process must not hold after start-up.
TRAINING_STACK = (
    "sklearn",
    "sklearn.ensemble",
    "skops",
    "mapie",
    "pandas",
    "pyarrow",
    "scipy.stats",
    "joblib",
    "matplotlib",
)

PROBE = """
import json, sys
import tandem.cli, tandem.processes  # what `tandem serve` imports before it forks
from tandem.app import create_app

app = create_app()
client = app.test_client()
statuses = [client.get(path).status_code for path in ("/healthz", "/api/v1/openapi.json")]
print(json.dumps({"statuses": statuses, "loaded": [m for m in MODULES if m in sys.modules]}))
"""


def _run(code: str, tmp_path: Path) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
        "SECRET_KEY": "web-imports-test",
        "TANDEM_HOME": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", f"MODULES = {TRAINING_STACK!r}\n{code}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_web_app_does_not_import_the_training_stack(tmp_path: Path) -> None:
    result = _run(PROBE, tmp_path)
    assert result["statuses"] == [200, 200]
    assert result["loaded"] == []


LIVE_WATCH = """
import json, sys
import tandem.cli, tandem.processes
from tandem.app import create_app
from service.policy.bounds import weighted_rate
from service.policy.monitor import live_error_alarm

app = create_app()
before = "scipy.special" in sys.modules
tandem.processes.preload_for_requests()  # what `tandem serve` does before it forks
preloaded = "scipy.special" in sys.modules
status = live_error_alarm([0, 1, 0, 0] * 30, alpha=0.02, delta=0.01)
rate = weighted_rate([0.0, 1.0, 0.0], [0.1, 1.0, 1.0])
print(json.dumps({
    "before": before,
    "preloaded": preloaded,
    "alarm": bool(status.alarm),
    "loaded": [m for m in MODULES if m in sys.modules],
}))
"""


def test_the_live_watch_computes_its_bounds_without_scipy_stats(tmp_path: Path) -> None:
    """A reviewer's label on an audited automatic answer runs the live watch in the web
    process: its bounds come from ``scipy.special``, loaded before the workers fork, so that
    decision neither imports ``scipy.stats`` (~80 MB) nor waits for an import."""
    result = _run(LIVE_WATCH, tmp_path)
    assert result["before"] is False
    assert result["preloaded"] is True
    assert result["alarm"] is True
    assert result["loaded"] == []


SERVE_PREDICTS = """
import json, sys
from tandem.app import create_app

app = create_app()
client = app.test_client()
headers = {"Authorization": "Bearer " + TOKEN}
body = {"input": {"review": "paid on time", "state": "CA", "amount": 500.0, "verified": True}}
statuses = [
    client.post("/api/v1/tasks/loan-review/predict", json=body, headers=headers).status_code,
    client.post(
        "/api/v1/tasks/loan-review/predict/batch", json={"items": [body] * 5}, headers=headers
    ).status_code,
]
print(json.dumps({"statuses": statuses, "loaded": [m for m in MODULES if m in sys.modules]}))
"""


@pytest.mark.parametrize("stored", [True, False], ids=["stored-form", "artefact-only"])
def test_serving_predicts_scores_without_scikit_learn(flask_app, committed_db, settings, stored):
    """A version trained by the job carries its compiled predictor's stored form: the web
    process scores it with NumPy alone. A version without one (trained before it existed) is
    still served, compiled from its skops artefact, which does load scikit-learn."""
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    assert client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(admin)).status_code == 201
    install_model(committed_db, "loan-review", threshold=0.5, stored_predictor=stored)
    env = {**backend_env(settings)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"MODULES = {TRAINING_STACK!r}\nTOKEN = {app_token!r}\n{SERVE_PREDICTS}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [200, 200]
    if stored:
        assert result["loaded"] == []
    else:
        assert "sklearn" in result["loaded"]
