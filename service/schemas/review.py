"""Review workflow schemas (docs/review.md): claim, decide, release, undo and the queue listing."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from service.errors import ValidationFailed
from service.models import CASE_STATUSES, REASONS
from service.schemas.common import Timestamp, input_map
from service.services.cases import REVIEWER_REASONS
from service.services.review import QUEUE_STATES


class StrictSchema(Schema):
    class Meta:
        unknown = "raise"


class ClaimRequestSchema(StrictSchema):
    exclude_ids = fields.List(
        fields.String(validate=validate.Length(1, 32)),
        data_key="exclude",
        load_default=list,
        validate=validate.Length(max=200),
        metadata={"description": "case ids to pass over (the ones skipped in this sitting)"},
    )


class OwnReviewSchema(Schema):
    review_id = fields.String()
    reviewer_id = fields.String(metadata={"description": "the caller's pseudonym"})
    label = fields.String()
    decided_at = Timestamp()
    retracted = fields.Boolean()


class BlindCaseSchema(Schema):
    """A case as a reviewer sees it (docs/review.md, "Blind review"): the same fields for
    every case, drawn for audit or not; no suggestion, status or other reviewer's verdict."""

    case_id = fields.String()
    external_id = fields.String(allow_none=True)
    task = fields.String()
    input = input_map("field name -> value, as sent")
    reason = fields.String(
        validate=validate.OneOf(sorted(REVIEWER_REASONS)),
        metadata={
            "description": "why a person decides, in reviewer terms: cold_start, fallback, "
            "invalid_input and forced as routed, every other reason as low_confidence"
        },
    )
    out_of_range = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "input fields far outside what the model was trained on"},
    )
    created_at = Timestamp()
    sla_breached = fields.Boolean()
    queue_state = fields.String(allow_none=True, validate=validate.OneOf(QUEUE_STATES))
    lease_expires_at = Timestamp(allow_none=True)
    claimed_at = Timestamp(allow_none=True)
    reviews = fields.List(
        fields.Nested(OwnReviewSchema), metadata={"description": "the caller's own decisions"}
    )


class ReviewRequestSchema(StrictSchema):
    label = fields.String(required=True, validate=validate.Length(1, 200))
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))


class DecisionSchema(Schema):
    """A recorded decision. Nothing about how the case resolves (docs/review.md)."""

    case_id = fields.String()
    review_id = fields.String()
    label = fields.String()
    decided_at = Timestamp()
    undo_until = Timestamp(metadata={"description": "POST /cases/{id}/undo works until then"})


class QueueArgsSchema(Schema):
    class Meta:
        unknown = "raise"

    state = fields.String(validate=validate.OneOf(("waiting", "leased")))
    status = fields.String(validate=validate.OneOf(("pending", "in_review", "auto")))
    reason = fields.String(validate=validate.OneOf(REASONS))
    audit = fields.Boolean()
    min_age_seconds = fields.Integer(validate=validate.Range(0, 10**9))
    max_age_seconds = fields.Integer(validate=validate.Range(0, 10**9))
    external_id = fields.String(
        validate=validate.Length(1, 200), metadata={"description": "Exact external id."}
    )
    field = fields.String(
        validate=validate.Length(1, 200),
        metadata={"description": "An input field; with `value`, cases whose field equals it."},
    )
    value = fields.String(
        validate=validate.Length(1, 1000),
        metadata={"description": "The value `field` must equal (numbers compared as numbers)."},
    )
    page = fields.Integer(load_default=1, validate=validate.Range(1, 10**7))
    per_page = fields.Integer(load_default=50, validate=validate.Range(1, 500))


class QueueSuggestionSchema(Schema):
    label = fields.String()
    confidence = fields.Float()


ANALYSTS_ONLY = "analysts and admins only (reviewers get the blind listing)"


class QueueItemSchema(Schema):
    case_id = fields.String()
    external_id = fields.String(allow_none=True)
    status = fields.String(
        validate=validate.OneOf(CASE_STATUSES), metadata={"description": ANALYSTS_ONLY}
    )
    queue_state = fields.String(validate=validate.OneOf(QUEUE_STATES))
    reason = fields.String(
        validate=validate.OneOf(REASONS), metadata={"description": ANALYSTS_ONLY}
    )
    audit = fields.Boolean(metadata={"description": ANALYSTS_ONLY})
    suggestion = fields.Nested(
        QueueSuggestionSchema, allow_none=True, metadata={"description": ANALYSTS_ONLY}
    )
    created_at = Timestamp()
    age_seconds = fields.Integer()
    sla_breached = fields.Boolean()
    lease_owner = fields.String(allow_none=True)
    lease_expires_at = Timestamp(allow_none=True)
    reviews_required = fields.Integer(metadata={"description": ANALYSTS_ONLY})


class QueuePageSchema(Schema):
    task = fields.String()
    items = fields.List(fields.Nested(QueueItemSchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


def parse_queue_args(values: dict[str, Any]) -> dict[str, Any]:
    """Queue filters given as strings (the review UI's query string), validated as the API
    validates them; :class:`ValidationFailed` names the bad ones."""
    try:
        return dict(QueueArgsSchema().load({k: v for k, v in values.items() if v != ""}))
    except ValidationError as exc:
        raise ValidationFailed("Invalid filters", exc.messages_dict) from exc
