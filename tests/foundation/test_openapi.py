"""The OpenAPI document describes every endpoint, its schemas and its errors."""

from __future__ import annotations


def test_openapi_document_lists_every_api_route(client):
    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200
    spec = resp.json
    assert spec["openapi"].startswith("3.")
    documented = set(spec["paths"])
    app = client.application
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/docs"):
            continue
        if path == "/api/v1/openapi.json":
            continue
        openapi_path = path
        for conv in ("string:", "int:", "path:"):
            openapi_path = openapi_path.replace("<" + conv, "<")
        openapi_path = openapi_path.replace("<", "{").replace(">", "}")
        assert openapi_path in documented, path
    schemas = spec["components"]["schemas"]
    assert "ApiError" in schemas
    predict = spec["paths"]["/api/v1/tasks/{task}/predict"]["post"]
    assert {"200", "202", "401", "403", "409", "422"} <= set(predict["responses"])
    assert predict["security"] == [{"bearerAuth": []}]
    assert any(p["name"] == "Idempotency-Key" for p in predict["parameters"])


def test_browsable_docs_are_served_offline(client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/v1/docs/static/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    asset = client.get("/api/v1/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.get_data()) > 100_000


# --- a typed document (docs/api.md, "Generating a client") ----------------------------------

#: Objects whose keys are genuinely open, each with why; every other object names its keys
#: (``properties``) or types its values (``additionalProperties``).
FREE_FORM = {
    # Validation details mirror the request's own nesting: field -> messages, at any depth.
    "ErrorDetail.details",
    # Training and certification records as stored: keys depend on the model family and run.
    "ModelVersion.metrics",
    "ModelVersion.certification",
    "ModelVersion.training_snapshot",
    "ModelVersion.timings",
    # What each job kind (training, export) reports about itself.
    "Job.progress",
    "Job.result",
}
#: Properties whose values come from a fixed set, by name; the ones listed beside them are
#: free text that happens to share the name.
ENUM_NAMES = {"status", "route", "reason", "state", "role", "event_type", "resolved_by"}
ENUM_NAMES |= {"label_source", "queue_state", "format", "kind", "identity", "agreement"}
FREE_TEXT = {"Automation.reason", "ModelActivated.reason", "AutomationChanged.reason"}
FREE_TEXT |= {"Revoked.reason"}
INSTANT_NAMES = {"timestamp", "since", "until", "undo_until", "from", "to"}


def _schemas_in(node, where, found):
    """Every (where, schema) pair of the document, properties named ``Schema.property``."""
    if isinstance(node, list):
        for item in node:
            _schemas_in(item, where, found)
        return found
    if not isinstance(node, dict):
        return found
    found.append((where, node))
    for name, prop in (node.get("properties") or {}).items():
        _schemas_in(prop, f"{where}.{name}", found)
    for key in ("items", "allOf", "anyOf", "oneOf"):
        if key in node:
            _schemas_in(node[key], where, found)
    if isinstance(node.get("additionalProperties"), dict):
        _schemas_in(node["additionalProperties"], where + ".*", found)
    return found


def _operations(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                yield f"{method.upper()} {path}", op


def _document_schemas(spec):
    found = []
    for name, schema in spec["components"]["schemas"].items():
        _schemas_in(schema, name, found)
    for where, op in _operations(spec):
        for param in op.get("parameters", []):
            _schemas_in(param.get("schema"), f"{where} ?{param['name']}", found)
        for media in op.get("requestBody", {}).get("content", {}).values():
            _schemas_in(media.get("schema"), f"{where} body", found)
        for status, response in op["responses"].items():
            for media in response.get("content", {}).values():
                _schemas_in(media.get("schema"), f"{where} {status}", found)
    return found


def _is_untyped_object(schema):
    if schema.get("type") != "object" or schema.get("properties"):
        return False
    values = schema.get("additionalProperties")
    return values in (None, True, {})


def test_every_object_in_the_document_names_or_types_its_keys(client):
    spec = client.get("/api/v1/openapi.json").json
    untyped = {w for w, s in _document_schemas(spec) if _is_untyped_object(s)}
    assert untyped == FREE_FORM


def test_nullable_nested_schemas_are_typed_not_any_object(client):
    spec = client.get("/api/v1/openapi.json").json
    schemas = spec["components"]["schemas"]
    suggestion = schemas["CaseResult"]["properties"]["suggestion"]
    assert suggestion == {
        "allOf": [{"$ref": "#/components/schemas/Suggestion"}],
        "nullable": True,
    }
    assert set(schemas["Suggestion"]["required"]) == {"label", "confidence", "scores"}
    assert schemas["Suggestion"]["properties"]["scores"]["additionalProperties"] == {
        "type": "number"
    }
    # A nullable enum lists its values once, null allowed beside them (not inside the enum,
    # which generators turn into three types).
    resolved_by = schemas["CaseDetail"]["properties"]["resolved_by"]
    assert resolved_by == {
        "anyOf": [{"type": "string", "enum": ["model", "reviewer", "application"]}],
        "nullable": True,
    }


def test_every_instant_is_a_date_time(client):
    spec = client.get("/api/v1/openapi.json").json
    loose = []
    for where, schema in _document_schemas(spec):
        name = where.rsplit(".", 1)[-1].rsplit("?", 1)[-1]
        if not (name.endswith("_at") or name in INSTANT_NAMES):
            continue
        if schema.get("format") != "date-time":
            loose.append(where)
    assert not loose
    assert any(w == "CaseDetail.resolved_at" for w, _ in _document_schemas(spec))


def test_fixed_value_sets_are_enums(client):
    spec = client.get("/api/v1/openapi.json").json
    loose = []
    for where, schema in _document_schemas(spec):
        name = where.rsplit(".", 1)[-1]
        if name not in ENUM_NAMES or where in FREE_TEXT or "." not in where:
            continue
        variants = [
            schema,
            *schema.get("anyOf", []),
            *schema.get("allOf", []),
            *schema.get("oneOf", []),  # a multi-valued filter: one value or a list of them
            *(v["items"] for v in schema.get("oneOf", []) if "items" in v),
            *([schema["items"]] if "items" in schema else []),
        ]
        if not any("enum" in v or "$ref" in v for v in variants):
            loose.append(where)
    assert not loose


def test_every_response_has_a_schema_for_each_media_type(client):
    spec = client.get("/api/v1/openapi.json").json
    missing = []
    for where, op in _operations(spec):
        for status, response in op["responses"].items():
            if status in ("204", "304") or "$ref" in response:
                continue
            content = response.get("content") or {}
            if not content or any(not media.get("schema") for media in content.values()):
                missing.append(f"{where} {status}")
    assert not missing


def test_exports_document_their_media_types_rows_and_headers(client):
    spec = client.get("/api/v1/openapi.json").json
    stream = spec["paths"]["/api/v1/tasks/{task}/export"]["get"]["responses"]["200"]
    assert set(stream["content"]) == {
        "text/csv",
        "application/x-ndjson",
        "application/vnd.apache.parquet",
    }
    row_ref = {"$ref": "#/components/schemas/ExportRow"}
    assert stream["content"]["application/x-ndjson"]["schema"] == row_ref
    assert "Content-Disposition" in stream["headers"]
    download = spec["paths"]["/api/v1/exports/{export_id}/download"]["get"]["responses"]["200"]
    assert {"ETag", "X-Content-SHA256", "Content-Disposition"} <= set(download["headers"])
    row = spec["components"]["schemas"]["ExportRow"]
    assert row["properties"]["created_at"]["format"] == "date-time"
    assert row["additionalProperties"]["anyOf"]  # input.<field> and score.<label>


def test_webhook_payloads_are_published(client):
    spec = client.get("/api/v1/openapi.json").json
    from service.services.webhooks import EVENT_TYPES

    assert set(spec["x-webhooks"]) == set(EVENT_TYPES)
    schemas = spec["components"]["schemas"]
    for event, item in spec["x-webhooks"].items():
        ref = item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[-1]]
        assert schema["properties"]["type"]["enum"] == [event]
        assert {"type", "timestamp", "task", "data"} <= set(schema["required"])
    payload = schemas["Delivery"]["properties"]["payload"]
    assert len(payload["oneOf"]) == len(EVENT_TYPES)
