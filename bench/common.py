"""Set-up shared by the benchmark scripts (they never import the test package)."""

from __future__ import annotations

import hashlib
from typing import Any


def activate_model(
    session: Any,
    task: Any,
    trained: Any,
    artefact: bytes,
    rows: list[dict[str, Any]],
    *,
    threshold: float = 0.9,
    coverage: float = 0.5,
) -> Any:
    """Make a trained model the task's active, automating version without the training job
    or certification: a benchmark measures serving, not learning."""
    from service.ml.profile import build_profile
    from service.models import ModelVersion
    from service.services.training_run import stored_predictor

    version = ModelVersion(
        task_id=task.id,
        version=1,
        status="active",
        family=trained.family,
        artefact=artefact,
        artefact_sha256=hashlib.sha256(artefact).hexdigest(),
        # As the training job stores it: the web processes score with NumPy alone.
        predictor=stored_predictor(trained.pipeline, task.fields, task.labels),
        metrics=trained.metrics,
        profile={
            "fields_spec": task.fields,
            "labels": task.labels,
            "data": build_profile(rows, task.fields).to_dict(),
        },
        certification={},
        threshold=threshold,
        coverage=coverage,
    )
    session.add(version)
    session.flush()
    task.active_model_id = version.id
    task.threshold = threshold
    task.coverage = coverage
    task.automation_state = "automating"
    task.revision += 1
    return version


def reset_database(name: str, pg: str = "postgresql+psycopg://postgres@127.0.0.1:5432") -> str:
    """Drop and create the benchmark database ``name``; its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{pg}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{pg}/{name}"


def bare_granian_argv(app: str, port: int) -> list[str]:
    """granian serving ``app`` (``module:callable``) as ``tandem serve`` serves Tandem: WSGI,
    2 worker processes x 4 request threads, no access log — the same-run limit's server."""
    import sys
    from pathlib import Path

    return [
        str(Path(sys.executable).parent / "granian"),
        "--interface",
        "wsgi",
        "--workers",
        "2",
        "--blocking-threads",
        "4",
        "--no-access-log",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        app,
    ]
