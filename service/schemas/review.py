"""Review workflow schemas (SPEC §6): claim, decide, release, undo and the queue listing."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.models import REASONS
from service.schemas.cases import CaseDetailSchema


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


class ClaimedCaseSchema(CaseDetailSchema):
    task = fields.String()
    lease_expires_at = fields.String(metadata={"format": "date-time"})
    claimed_at = fields.String(metadata={"format": "date-time"})
    reviews_required = fields.Integer()
    reviews_done = fields.Integer()
    sla_breached = fields.Boolean()
    out_of_range = fields.List(fields.String(), allow_none=True)


class ReviewRequestSchema(StrictSchema):
    label = fields.String(required=True, validate=validate.Length(1, 200))
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))


class ReviewResultSchema(CaseDetailSchema):
    resolved = fields.Boolean(
        metadata={"description": "false while more reviewers must agree (reviewers_per_case > 1)"}
    )
    review_id = fields.String()


class QueueArgsSchema(Schema):
    class Meta:
        unknown = "raise"

    state = fields.String(validate=validate.OneOf(("waiting", "leased")))
    status = fields.String(validate=validate.OneOf(("pending", "in_review", "auto")))
    reason = fields.String(validate=validate.OneOf(REASONS))
    audit = fields.Boolean()
    min_age_seconds = fields.Integer(validate=validate.Range(0, 10**9))
    max_age_seconds = fields.Integer(validate=validate.Range(0, 10**9))
    page = fields.Integer(load_default=1, validate=validate.Range(1, 10**7))
    per_page = fields.Integer(load_default=50, validate=validate.Range(1, 500))


class QueueSuggestionSchema(Schema):
    label = fields.String()
    confidence = fields.Float()


class QueueItemSchema(Schema):
    case_id = fields.String()
    external_id = fields.String(allow_none=True)
    status = fields.String()
    queue_state = fields.String()
    reason = fields.String()
    audit = fields.Boolean()
    suggestion = fields.Nested(QueueSuggestionSchema, allow_none=True)
    created_at = fields.String(metadata={"format": "date-time"})
    age_seconds = fields.Integer()
    sla_breached = fields.Boolean()
    lease_owner = fields.String(allow_none=True)
    lease_expires_at = fields.String(allow_none=True)
    reviews_required = fields.Integer()


class QueuePageSchema(Schema):
    task = fields.String()
    items = fields.List(fields.Nested(QueueItemSchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()
