"""Background snapshots on the exports queue (real Redis, RQ SimpleWorker in burst mode),
manifests, SHA-256 reproducibility, failure handling, and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import select

from service.models import AuditEvent, Export, Job
from service.queues import rq_queue
from tests.export.conftest import run_worker
from tests.helpers import auth


def request(client: Any, token: str, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/tasks/loan-review/exports", json=body, headers=auth(token))


def test_snapshot_end_to_end_with_manifest(client, tokens, seed, db, redis_conn, worker_app):
    body = {"format": "parquet", "filters": {"route": "review", "audit": False}}
    resp = request(client, tokens["analyst"], body)
    assert resp.status_code == 202, resp.json
    export_id, job_id = resp.json["export_id"], resp.json["job_id"]
    queued = client.get(f"/api/v1/exports/{export_id}", headers=auth(tokens["analyst"])).json
    assert queued["state"] == "queued" and queued["download_url"] is None
    assert rq_queue("exports", redis_conn).job_ids == [job_id]

    run_worker(redis_conn)

    view = client.get(f"/api/v1/exports/{export_id}", headers=auth(tokens["analyst"])).json
    assert view["state"] == "done", view
    manifest = view["manifest"]
    assert manifest["row_count"] == 4 == view["row_count"]
    assert manifest["filters"] == {"route": "review", "audit": False}
    assert manifest["model_versions"] == [1, 2]
    assert manifest["time_range"] == {
        "first_created_at": "2024-03-01T10:00:00.123456Z",
        "last_created_at": "2024-03-01T15:00:00.123456Z",
    }
    assert manifest["creator"] == "token:test-analyst"
    assert [c["name"] for c in manifest["schema"]][:3] == ["case_id", "external_id", "input.review"]
    download = client.get(view["download_url"], headers=auth(tokens["analyst"]), buffered=True)
    assert download.status_code == 200
    data = download.get_data()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"] == view["sha256"]
    assert download.headers["X-Content-SHA256"] == manifest["sha256"]
    table = pq.read_table(io.BytesIO(data))
    assert table.column("case_id").to_pylist() == [seed.cases[n].id for n in (1, 3, 4, 6)]
    # The manifest is stored beside the file, and the file equals the streamed export.
    folder = worker_app.config["TANDEM"].export_dir / export_id
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    streamed = client.get(
        "/api/v1/tasks/loan-review/export?format=parquet&route=review&audit=false",
        headers=auth(tokens["analyst"]),
        buffered=True,
    ).get_data()
    assert streamed == data
    assert db.get(Job, job_id).state == "finished"
    listed = client.get("/api/v1/tasks/loan-review/exports", headers=auth(tokens["analyst"]))
    assert [e["export_id"] for e in listed.json["exports"]] == [export_id]
    actions = [e.action for e in db.query(AuditEvent).order_by(AuditEvent.id)]
    assert {"export.requested", "export.created", "export.downloaded"} <= set(actions)


def test_identical_reexport_gives_the_same_sha256(client, tokens, seed, redis_conn, worker_app):
    shas = {}
    for fmt in ("csv", "jsonl", "parquet"):
        ids = [request(client, tokens["analyst"], {"format": fmt}).json["export_id"]
               for _ in range(2)]  # fmt: skip
        run_worker(redis_conn)
        views = [client.get(f"/api/v1/exports/{i}", headers=auth(tokens["analyst"])).json
                 for i in ids]  # fmt: skip
        assert all(v["state"] == "done" for v in views)
        assert views[0]["sha256"] == views[1]["sha256"]
        shas[fmt] = views[0]["sha256"]
    assert len(set(shas.values())) == 3


def test_failing_job_leaves_no_snapshot_marked_done(
    client, tokens, seed, db, redis_conn, worker_app, monkeypatch
):
    from service.services import export as export_service
    from workers.jobs.exports import run_export

    export_dir: Path = worker_app.config["TANDEM"].export_dir
    monkeypatch.setattr(export_service, "BATCH_ROWS", 2)
    calls = {"n": 0}
    original = export_service._ParquetWriter.write

    def write_then_fail(self: Any, batch: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        original(self, batch)

    monkeypatch.setattr(export_service._ParquetWriter, "write", write_then_fail)
    export_id = request(client, tokens["analyst"], {"format": "parquet"}).json["export_id"]
    run_worker(redis_conn)

    assert calls["n"] == 2  # it failed half way through
    row = db.get(Export, export_id)
    db.refresh(row)
    assert row.state == "failed" and "disk full" in row.error
    assert row.sha256 is None and row.manifest is None and row.path is None
    assert not (export_dir / export_id).exists()
    assert not [p for p in export_dir.glob(f".tmp-{export_id}-*")]
    assert db.get(Job, row.job_id).state == "failed"
    view = client.get(f"/api/v1/exports/{export_id}", headers=auth(tokens["analyst"])).json
    assert view["state"] == "failed" and view["download_url"] is None
    missing = client.get(
        f"/api/v1/exports/{export_id}/download", headers=auth(tokens["analyst"]), buffered=True
    )
    assert missing.status_code == 404
    # RQ keeps it for a retry; the retry (here run directly) completes it.
    monkeypatch.setattr(export_service._ParquetWriter, "write", original)
    assert run_export(export_id)["state"] == "done"
    row = db.get(Export, export_id)
    assert row.state == "done" and row.row_count == 7
    assert (export_dir / export_id / "data.parquet").is_file()


def test_snapshot_validation_and_roles(client, tokens, seed, db) -> None:
    before = db.query(Export).count()
    bad = request(client, tokens["analyst"], {"format": "csv", "filters": {"route": "up"}})
    assert bad.status_code == 422 and "route" in bad.json["error"]["details"]
    bad = request(client, tokens["analyst"], {"format": "csv", "colour": 1})
    assert bad.status_code == 422 and "colour" in bad.json["error"]["details"]
    bad = request(client, tokens["analyst"], {"format": "zip"})
    assert bad.status_code == 422 and "format" in bad.json["error"]["details"]
    for role in ("app", "reviewer"):
        assert request(client, tokens[role], {"format": "csv"}).status_code == 403
    assert (
        request(client, tokens["analyst"], {"format": "csv", "identity": "real"}).status_code == 403
    )
    assert db.query(Export).count() == before
    ok = request(client, tokens["admin"], {"format": "csv", "identity": "real"})
    assert ok.status_code == 202
    resp = client.get(f"/api/v1/exports/{ok.json['export_id']}", headers=auth(tokens["reviewer"]))
    assert resp.status_code == 403
    assert client.get("/api/v1/exports/nope", headers=auth(tokens["admin"])).status_code == 404


def test_cli_export_writes_the_same_bytes_as_the_api(
    committed_db, flask_app, settings, tmp_path, monkeypatch
) -> None:
    from click.testing import CliRunner

    from service.schemas.tasks import TaskCreateSchema
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work
    from tandem.cli import main
    from tests.helpers import SIMPLE_TASK, make_token

    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        from tests.export.conftest import _case

        session.add_all(
            [_case(task, n, input={"review": f"r{n}", "state": "CA"}) for n in range(5)]
        )
    token = make_token("analyst")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", str(settings.redis_url))
    monkeypatch.setenv("SECRET_KEY", "cli-test")
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    out = tmp_path / "out" / "cases.parquet"
    result = CliRunner().invoke(
        main, ["export", "loan-review", "--format", "parquet", "--out", str(out), "--to",
               "2024-03-01T12:00:00Z"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stderr)
    data = out.read_bytes()
    assert manifest["row_count"] == 3 and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    api = flask_app.test_client().get(
        "/api/v1/tasks/loan-review/export?format=parquet&to=2024-03-01T12:00:00Z",
        headers=auth(token),
        buffered=True,
    )
    assert api.get_data() == data
    bad = CliRunner().invoke(
        main, ["export", "loan-review", "--format", "csv", "--out", str(out), "--audit", "maybe"]
    )
    assert bad.exit_code == 2 and "audit" in bad.stderr
    with unit_of_work() as session:
        # In the order written (without ORDER BY, PostgreSQL returns them as stored, and an
        # insert may reuse space that earlier rolled-back tests left in a page).
        events = session.query(AuditEvent).filter_by(action="export.created")
        events = events.order_by(AuditEvent.id).all()
        assert [e.details["channel"] for e in events] == ["cli", "api"]
        assert events[0].details["row_count"] == 3


def test_snapshot_with_multi_valued_filters_and_the_label_set(
    client, tokens, seed, redis_conn, worker_app
) -> None:
    """JSON lists filter on any of their values and are recorded sorted; the manifest names
    the task's labels, also those no exported row holds."""
    body = {
        "format": "jsonl",
        "filters": {"status": ["resolved", "pending"], "final_label": ["bad"], "route": "review"},
    }
    resp = request(client, tokens["analyst"], body)
    assert resp.status_code == 202, resp.json
    run_worker(redis_conn)
    view = client.get(f"/api/v1/exports/{resp.json['export_id']}", headers=auth(tokens["analyst"]))
    manifest = view.json["manifest"]
    assert manifest["filters"] == {
        "final_label": "bad",
        "route": "review",
        "status": ["pending", "resolved"],
    }
    assert view.json["filters"] == manifest["filters"]
    assert manifest["labels"] == ["good", "bad"]
    assert manifest["export_schema_version"] == "2" and manifest["reviews"] is None
    data = client.get(view.json["download_url"], headers=auth(tokens["analyst"]), buffered=True)
    rows = [json.loads(line) for line in data.get_data(as_text=True).splitlines()]
    assert [r["case_id"] for r in rows] == [seed.cases[1].id]
    assert {r["final_label"] for r in rows} == {"bad"}
    bad = request(client, tokens["analyst"], {"format": "csv", "filters": {"audit": [True]}})
    assert bad.status_code == 422 and "audit" in bad.json["error"]["details"]
    bad = request(client, tokens["analyst"], {"format": "csv", "reviews": "yes"})
    assert bad.status_code == 422 and "reviews" in bad.json["error"]["details"]


def test_snapshot_with_the_reviews_file(client, tokens, seed, db, redis_conn, worker_app):
    """Every review of the exported cases (the undone one marked), with comments, as a second
    file with its own checksum in the manifest; the same bytes in every snapshot."""
    from service.models import Review

    db.get(
        Review, db.query(Review).filter_by(case_id=seed.cases[1].id).one().id
    ).comment = 'Income "verified", see\nnote'
    db.commit()
    ids = []
    for _ in range(2):
        resp = request(client, tokens["analyst"], {"format": "parquet", "reviews": True})
        assert resp.status_code == 202, resp.json
        ids.append(resp.json["export_id"])
    run_worker(redis_conn)
    views = [client.get(f"/api/v1/exports/{i}", headers=auth(tokens["analyst"])).json
             for i in ids]  # fmt: skip
    entry = views[0]["manifest"]["reviews"]
    assert entry["file"] == "reviews.parquet" and entry["row_count"] == 4
    assert [c["name"] for c in entry["schema"]][:4] == ["review_id", "case_id", "reviewer", "label"]
    assert views[0]["reviews"] is True and views[0]["filters"] == {}
    assert views[1]["manifest"]["reviews"]["sha256"] == entry["sha256"]
    url = views[0]["reviews_download_url"]
    assert url == f"/api/v1/exports/{ids[0]}/download?file=reviews"
    resp = client.get(url, headers=auth(tokens["analyst"]), buffered=True)
    assert resp.status_code == 200
    data = resp.get_data()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"] == resp.headers["X-Content-SHA256"]
    assert resp.headers["ETag"] == f'"{entry["sha256"]}"'
    again = client.get(
        url, headers={**auth(tokens["analyst"]), "If-None-Match": resp.headers["ETag"]}
    )
    assert again.status_code == 304
    assert len(data) == entry["bytes"]
    assert "reviews-" in resp.headers["Content-Disposition"]
    folder = worker_app.config["TANDEM"].export_dir / ids[0]
    assert sorted(p.name for p in folder.iterdir()) == [
        "data.parquet", "manifest.json", "reviews.parquet",
    ]  # fmt: skip
    rows = pq.read_table(io.BytesIO(data)).to_pylist()
    alice, bob = seed.users["alice"].pseudonym, seed.users["bob"].pseudonym
    got = [(r["case_id"], r["reviewer"], r["label"], r["agreed_with_model"],
            r["retracted_at"] is not None) for r in rows]  # fmt: skip
    c = seed.cases
    assert got == [
        (c[1].id, alice, "bad", False, False),
        (c[2].id, bob, "good", True, False),
        (c[5].id, alice, "bad", False, True),
        (c[5].id, bob, "good", True, False),
    ]
    assert rows[0]["comment"] == 'Income "verified", see\nnote'
    assert rows[0]["review_seconds"] == 12.345 and rows[0]["suggested_label"] == "good"
    # The data file is unchanged by asking for reviews, and matches the stream.
    streamed = client.get("/api/v1/tasks/loan-review/export?format=parquet",
                          headers=auth(tokens["analyst"]), buffered=True).get_data()  # fmt: skip
    assert (folder / "data.parquet").read_bytes() == streamed
    # A reviewer filter keeps the cases that reviewer decided, with all their reviews.
    resp = request(client, tokens["analyst"], {"format": "csv", "reviews": True,
                                               "filters": {"reviewer": bob}})  # fmt: skip
    run_worker(redis_conn)
    view = client.get(f"/api/v1/exports/{resp.json['export_id']}",
                      headers=auth(tokens["analyst"])).json  # fmt: skip
    text = client.get(view["reviews_download_url"], headers=auth(tokens["analyst"]),
                      buffered=True).get_data(as_text=True)  # fmt: skip
    assert [line.split(",")[1].strip('"') for line in text.splitlines()[1:]] == [
        c[2].id, c[5].id, c[5].id,
    ]  # fmt: skip
    # A snapshot without reviews has no reviews file to download.
    plain = views[0]["download_url"].replace(ids[0], resp.json["export_id"])
    assert client.get(plain, headers=auth(tokens["analyst"])).status_code == 200
    resp = request(client, tokens["analyst"], {"format": "csv"})
    run_worker(redis_conn)
    missing = client.get(f"/api/v1/exports/{resp.json['export_id']}/download?file=reviews",
                         headers=auth(tokens["analyst"]))  # fmt: skip
    assert missing.status_code == 404
    unknown = client.get(f"/api/v1/exports/{ids[0]}/download?file=secrets",
                         headers=auth(tokens["analyst"]))  # fmt: skip
    assert unknown.status_code == 422
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.downloaded"))
    assert {"file": "reviews", "export_id": ids[0], "sha256": entry["sha256"]} in [
        e.details for e in events
    ]


def test_cli_multi_valued_options(committed_db, flask_app, settings, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from service.schemas.tasks import TaskCreateSchema
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work
    from tandem.cli import main
    from tests.export.conftest import _case
    from tests.helpers import SIMPLE_TASK

    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        session.add_all([_case(task, 0, status="resolved", final_label="good"),
                         _case(task, 1, status="pending"),
                         _case(task, 2, status="resolved", final_label="bad")])  # fmt: skip
    for name, value in (("DATABASE_URL", settings.database_url),
                        ("REDIS_URL", str(settings.redis_url)), ("SECRET_KEY", "cli-test"),
                        ("TANDEM_HOME", str(tmp_path / "home"))):  # fmt: skip
        monkeypatch.setenv(name, value)
    out = tmp_path / "cases.jsonl"
    result = CliRunner().invoke(main, ["export", "loan-review", "--format", "jsonl", "--out",
                                       str(out), "--status", "resolved", "--status", "pending",
                                       "--final-label", "bad"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stderr)["filters"] == {
        "final_label": "bad", "status": ["pending", "resolved"],
    }  # fmt: skip
    assert [json.loads(line)["case_id"] for line in out.read_text().splitlines()] == [f"{2:032x}"]
    bad = CliRunner().invoke(main, ["export", "loan-review", "--format", "csv", "--out",
                                    str(out), "--final-label", "ugly"])  # fmt: skip
    assert bad.exit_code == 2 and "final_label" in bad.stderr


def test_cli_export_to_standard_output(committed_db, flask_app, settings, tmp_path) -> None:
    """``--out -``: the file's bytes, and nothing else, on stdout (Parquet is binary); the
    manifest on stderr; the same bytes as the API; no file named '-'."""
    import subprocess
    import sys

    from service.schemas.tasks import TaskCreateSchema
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work
    from tests.conftest import backend_env
    from tests.export.conftest import _case
    from tests.helpers import SIMPLE_TASK, make_token

    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        session.add_all([_case(task, n, input={"review": f"r{n}", "state": "CA"})
                         for n in range(4)])  # fmt: skip
    token = make_token("analyst")
    api = flask_app.test_client()
    root = Path(__file__).resolve().parents[2]
    for fmt in ("parquet", "csv"):
        proc = subprocess.run(
            [sys.executable, "-m", "tandem.cli", "export", "loan-review", "--format", fmt,
             "--out", "-", "--from", "2024-03-01T10:00:00Z"],
            cwd=tmp_path, env={**backend_env(settings), "PYTHONPATH": str(root)},
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()
        expected = api.get(f"/api/v1/tasks/loan-review/export?format={fmt}"
                           "&from=2024-03-01T10:00:00Z", headers=auth(token),
                           buffered=True).get_data()  # fmt: skip
        assert proc.stdout == expected, fmt
        manifest = json.loads(proc.stderr)
        assert manifest["file"] == "<stdout>" and manifest["row_count"] == 3
        assert manifest["sha256"] == hashlib.sha256(proc.stdout).hexdigest()
        assert not (tmp_path / "-").exists()
        if fmt == "parquet":
            assert pq.read_table(io.BytesIO(proc.stdout)).num_rows == 3


def test_cli_export_to_standard_output_that_fails_part_way(
    committed_db, flask_app, settings, tmp_path, monkeypatch
) -> None:
    """A failure after the first batch leaves a short stream, a one-line reason on stderr
    and a non-zero exit: never a clean exit on a truncated file."""
    from click.testing import CliRunner

    from service.schemas.tasks import TaskCreateSchema
    from service.services import export as export_service
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work
    from tandem.cli import main
    from tests.export.conftest import _case
    from tests.helpers import SIMPLE_TASK

    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        session.add_all([_case(task, n) for n in range(5)])
    for name, value in (("DATABASE_URL", settings.database_url),
                        ("REDIS_URL", str(settings.redis_url)), ("SECRET_KEY", "cli-test"),
                        ("TANDEM_HOME", str(tmp_path / "home"))):  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(export_service, "BATCH_ROWS", 2)
    original = export_service._CsvWriter.write
    calls = {"n": 0}

    def write_then_fail(self: Any, batch: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        original(self, batch)

    monkeypatch.setattr(export_service._CsvWriter, "write", write_then_fail)
    result = CliRunner().invoke(main, ["export", "loan-review", "--format", "csv", "--out", "-"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "tandem: OSError: disk full"
    assert result.stdout_bytes.count(b"\n") == 3  # the header and the first batch only
    with unit_of_work() as session:
        assert session.query(AuditEvent).filter_by(action="export.created").count() == 0
