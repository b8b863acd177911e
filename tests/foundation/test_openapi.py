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
