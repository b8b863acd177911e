"""Background export snapshots (docs/export.md): a stored file with its manifest.

The file and ``manifest.json`` are written into a temporary folder and renamed into place in
one step; only then is the Export row marked ``done`` (with the manifest) in one commit. A
failure removes the temporary folder, marks the row ``failed`` with the error and re-raises,
so RQ retries (queue ``exports``); a half-written snapshot is never marked done.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from service.db import db_session, utcnow
from service.models import Export, Job, Task
from service.services import audit
from service.services import export as export_service
from service.services.audit import SYSTEM, Actor
from service.uow import unit_of_work
from workers.context import job


def _creator(export: Export) -> Actor:
    """The person or token who asked for the snapshot, as recorded (``kind:name``)."""
    kind, _, name = (export.created_by or "").partition(":")
    if kind in ("user", "token", "system") and name:
        return Actor(kind=kind, id=None, name=name, role="analyst")
    return SYSTEM


@job
def run_export(export_id: str) -> dict[str, Any]:
    export_dir = current_app.config["TANDEM"].export_dir
    with unit_of_work() as session:
        export = session.get(Export, export_id, with_for_update=True)
        if export is None:
            return {"export_id": export_id, "state": "missing"}
        if export.state == "done":  # a duplicate delivery of a finished job
            return {"export_id": export_id, "state": "done"}
        export.state = "running"
        export.error = None
        job_row = session.get(Job, export.job_id) if export.job_id else None
        if job_row is not None:
            job_row.state = "started"
            job_row.attempts += 1
            job_row.started_at = utcnow()
            job_row.error = None
    try:
        with unit_of_work() as session:
            export = session.get(Export, export_id)
            task = session.get(Task, export.task_id) if export is not None else None
            if export is None or task is None:
                raise RuntimeError(f"export {export_id} or its task disappeared")
            manifest = export_service.write_snapshot(session, export, task, export_dir)
            now = utcnow()
            export.state = "done"
            export.row_count = manifest["row_count"]
            export.sha256 = manifest["sha256"]
            export.path = f"{export.id}/{manifest['file']}"
            export.manifest = manifest
            export.finished_at = now
            job_row = session.get(Job, export.job_id) if export.job_id else None
            if job_row is not None:
                job_row.state = "finished"
                job_row.finished_at = now
                job_row.result = {"export_id": export.id, "row_count": export.row_count}
            audit.record(
                session,
                "export.created",
                _creator(export),
                task_id=task.id,
                details={
                    "channel": "snapshot",
                    "export_id": export.id,
                    "format": export.format,
                    "filters": manifest["filters"],
                    "reviewer_identity": manifest["reviewer_identity"],
                    "row_count": manifest["row_count"],
                    "sha256": manifest["sha256"],
                },
            )
    except BaseException as exc:
        # The commit may have failed after the rename: never leave files for an export that
        # is not marked done.
        db_session.remove()
        export_service.remove_snapshot(export_dir, export_id)
        _mark_failed(export_id, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return {"export_id": export_id, "state": "done", "row_count": manifest["row_count"]}


def _mark_failed(export_id: str, error: str) -> None:
    with unit_of_work() as session:
        export = session.get(Export, export_id)
        if export is None:
            return
        export.state = "failed"
        export.error = error
        export.finished_at = utcnow()
        job_row = session.get(Job, export.job_id) if export.job_id else None
        if job_row is not None:
            job_row.state = "failed"
            job_row.error = error
            job_row.finished_at = export.finished_at
        audit.record(
            session,
            "export.failed",
            SYSTEM,
            task_id=export.task_id,
            details={"export_id": export_id, "error": error},
        )
