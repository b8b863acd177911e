"""The predict endpoints: the hot path applications put in their request path."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, request
from flask_smorest import Blueprint

from service.api.common import current_actor, json_body, request_id, require_roles, roles_doc
from service.errors import ValidationFailed
from service.observability import count_cases
from service.schemas.cases import (
    BatchRequestSchema,
    BatchResultSchema,
    CaseResultSchema,
    PredictRequestSchema,
)
from service.schemas.common import ApiErrorSchema
from service.services import predict as predict_service
from service.text_check import ensure_valid_text, may_hold_surrogates
from service.uow import unit_of_work

REPLAYED_DOC: dict[str, Any] = {
    "description": "`true` when this answer replays the case stored earlier under the same "
    "Idempotency-Key (its current state: it may be resolved by now); absent on the first call",
    "schema": {"type": "string", "enum": ["true"]},
}

blp = Blueprint("predict", __name__, url_prefix="/api/v1", description="Send cases")

ENVELOPE_KEYS = {"input", "external_id", "force_review"}
#: A batch item may carry its own key (a single predict takes the Idempotency-Key header).
BATCH_ITEM_KEYS = ENVELOPE_KEYS | {"idempotency_key"}
REPLAYED_HEADER = "Idempotent-Replayed"
#: Where the single predict's fast path leaves the error its INSERT raised
#: (service/api/fast_predict.py).
STORE_FAILED_KEY = "tandem.fast_predict.store_failed"


def json_response(payload: Any, status: int = 200) -> Response:
    """The predict endpoints' answer: what ``jsonify`` sends (compact JSON and a newline),
    written by orjson: a 1,000-item batch's answer took ~5 ms with the standard library
    (bench/README.md, "Batch predict"). Its payloads hold only strings, numbers, booleans
    and nulls, which both write alike."""
    try:
        body = orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:  # e.g. a lone surrogate echoed in an item's error
        body = current_app.json.dumps(payload).encode() + b"\n"
    return Response(body, status=status, mimetype="application/json")


def parse_item(body: Any, *, where: str = "") -> predict_service.PredictRequest:
    """The envelope of one case (a single predict's body or a batch item), or
    ``ValidationFailed``."""
    if not isinstance(body, dict):
        raise ValidationFailed(
            "The body must be a JSON object", {where or "_schema": ["Not an object."]}
        )
    unknown = set(body) - (BATCH_ITEM_KEYS if where else ENVELOPE_KEYS)
    if unknown:
        raise ValidationFailed(
            "Unknown fields: " + ", ".join(sorted(unknown)),
            {k: ["Unknown field."] for k in sorted(unknown)},
        )
    if "input" not in body:
        raise ValidationFailed(
            "Invalid fields: input", {"input": ["Missing data for required field."]}
        )
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        raise ValidationFailed(
            "Invalid fields: idempotency_key",
            {"idempotency_key": ["Must be a string of 1 to 200 characters."]},
        )
    return predict_service.PredictRequest(
        input=body["input"],
        external_id=body.get("external_id"),
        force_review=body.get("force_review", False),
        idempotency_key=key,
        body=body,
    )


@blp.route("/tasks/<string:task>/predict", methods=["POST"])
@blp.doc(
    **roles_doc("app"),
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": PredictRequestSchema}},
    },
    parameters=[
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": False,
            "schema": {"type": "string", "maxLength": 200},
            "description": "Same key + same body returns the same case, as it is now "
            "(with the Idempotent-Replayed: true header); same key with another body is 409.",
        }
    ],
)
@blp.alt_response(
    200,
    schema=CaseResultSchema,
    description="Answered automatically",
    headers={REPLAYED_HEADER: REPLAYED_DOC},
)
@blp.alt_response(
    202,
    schema=CaseResultSchema,
    description="Queued for a human",
    headers={REPLAYED_HEADER: REPLAYED_DOC},
)
@blp.alt_response(
    409, schema=ApiErrorSchema, description="Idempotency-Key reused with another body"
)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("app")
def predict(task: str) -> Response:
    """Send one case: answered now (200) or queued for a human (202)."""
    failed = request.environ.pop(STORE_FAILED_KEY, None)
    if failed is not None:
        raise failed  # the fast path's INSERT failed: answer its error, never store again
    settings = current_app.config["TANDEM"]
    with unit_of_work() as session:
        runtime = predict_service.authorize(session, task, current_actor())
        body = json_body()
        item = parse_item(body)
        item.idempotency_key = request.headers.get("Idempotency-Key")
        view, created = predict_service.predict_one(
            session,
            runtime,
            item,
            current_actor(),
            body_for_hash=body,
            request_id=request_id(),
            max_text=settings.max_text_length,
        )
    if created:
        count_cases(task, [view])
    resp = json_response(view, 200 if view["route"] == "auto" else 202)
    if not created:
        resp.headers[REPLAYED_HEADER] = "true"
    return resp


def _batch_items(
    body: Any, limit: int, *, check_text: bool
) -> list[predict_service.PredictRequest | dict[str, Any]]:
    if (
        not isinstance(body, dict)
        or set(body) - {"items"}
        or not isinstance(body.get("items"), list)
    ):
        raise ValidationFailed('The body must be {"items": [...]}', {"items": ["Required list."]})
    raw_items = body["items"]
    if len(raw_items) > limit:
        raise ValidationFailed(
            f"At most {limit} items per batch",
            {"items": [f"Longer than maximum length {limit}."]},
        )
    items: list[predict_service.PredictRequest | dict[str, Any]] = []
    for i, raw in enumerate(raw_items):
        try:
            if check_text:
                ensure_valid_text(raw, f"items.{i}")
            items.append(parse_item(raw, where=f"items.{i}"))
        except ValidationFailed as exc:
            items.append(
                {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            )
    return items


@blp.route("/tasks/<string:task>/predict/batch", methods=["POST"])
@blp.doc(
    **roles_doc("app"),
    requestBody={"required": True, "content": {"application/json": {"schema": BatchRequestSchema}}},
    parameters=[
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": False,
            "schema": {"type": "string", "maxLength": predict_service.MAX_BATCH_KEY},
            "description": "Key K gives item i the key `K:i` (unless the item carries its own "
            "`idempotency_key`): resend the same K with the same items in the same order and "
            "no case is stored twice; each replayed item says `replayed: true`.",
        }
    ],
)
@blp.alt_response(200, schema=BatchResultSchema, description="One result per item, in order")
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("app")
def predict_batch(task: str) -> Response:
    """Send up to 1,000 cases; a bad item gets its error object in place, the rest are stored."""
    settings = current_app.config["TANDEM"]
    with unit_of_work() as session:
        runtime = predict_service.authorize(session, task, current_actor())
        # Text is checked per item: a bad item gets its error in place, the rest are stored.
        batch_key = request.headers.get("Idempotency-Key")
        if batch_key is not None:
            predict_service.check_batch_key(batch_key)
        items = _batch_items(
            json_body(check_text=False),
            settings.max_batch_items,
            check_text=may_hold_surrogates(request.get_data(cache=True)),
        )
        if batch_key is not None:
            for i, x in enumerate(items):
                if isinstance(x, predict_service.PredictRequest) and x.idempotency_key is None:
                    x.idempotency_key = predict_service.batch_item_key(batch_key, i)
        good = [x for x in items if isinstance(x, predict_service.PredictRequest)]
        results = iter(
            predict_service.predict_batch(
                session,
                runtime,
                good,
                current_actor(),
                request_id=request_id(),
                max_text=settings.max_text_length,
            )
        )
    ordered = [next(results) if isinstance(x, predict_service.PredictRequest) else x for x in items]
    count_cases(task, [r for r in ordered if not r.get("replayed")])
    return json_response({"results": ordered})
