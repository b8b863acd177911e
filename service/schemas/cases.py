"""Predict and case schemas: they document the binding API (docs/api.md).

The predict hot path validates inputs with the task's own generated schema
(:mod:`service.input_schema`); these classes describe the envelope for the OpenAPI document.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.models import CASE_STATUSES, REASONS, ROUTES
from service.schemas.common import ErrorDetailSchema, Timestamp, input_map


class PredictRequestSchema(Schema):
    input = input_map(
        "field name -> value, as declared by the task (text/category: string, number: "
        "finite number, boolean: true/false; optional fields may be null)",
        required=True,
    )
    external_id = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(1, 200)
    )
    force_review = fields.Boolean(load_default=False)


class BatchItemRequestSchema(PredictRequestSchema):
    idempotency_key = fields.String(
        validate=validate.Length(1, 200),
        metadata={
            "description": "this item's own key (instead of the one derived from the batch's "
            "Idempotency-Key header): the same key with the same item replays its case"
        },
    )


class BatchRequestSchema(Schema):
    items = fields.List(
        fields.Nested(BatchItemRequestSchema), required=True, validate=validate.Length(max=1000)
    )


class SuggestionSchema(Schema):
    """The model's answer, whether or not it was acted on (null before any model)."""

    label = fields.String(required=True)
    confidence = fields.Float(required=True, metadata={"description": "top probability"})
    scores = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        required=True,
        metadata={"description": "label -> probability, every label of the task"},
    )


class CaseResultSchema(Schema):
    case_id = fields.String(required=True)
    external_id = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf(CASE_STATUSES))
    route = fields.String(validate=validate.OneOf(ROUTES))
    reason = fields.String(validate=validate.OneOf(REASONS))
    label = fields.String(
        allow_none=True,
        metadata={
            "description": "what the application may "
            "act on now: the model's label when routed auto, else null until a "
            "human resolves the case"
        },
    )
    suggestion = fields.Nested(SuggestionSchema, allow_none=True)
    model_version = fields.Integer(allow_none=True)
    threshold = fields.Float(allow_none=True)
    created_at = Timestamp()


class BatchItemSchema(CaseResultSchema):
    """One result per item, in order: the case fields (with ``replayed``), or only ``error``
    when the item was invalid or its key conflicts (docs/api.md, "Predict": the bad item gets
    its error object in place, the rest are stored)."""

    case_id = fields.String(
        metadata={"description": "present when the item was stored; absent with error"}
    )
    error = fields.Nested(
        ErrorDetailSchema,
        metadata={
            "description": "present instead of the case fields when this "
            "item was invalid (nothing stored for it) or its idempotency key was used with "
            "another body (code conflict, details.case_id names that case)"
        },
    )
    replayed = fields.Boolean(
        metadata={
            "description": "true when the item's idempotency key was used before with the same "
            "item: the stored case, as it is now, and nothing new stored; false for a new case"
        }
    )


class BatchResultSchema(Schema):
    results = fields.List(fields.Nested(BatchItemSchema))


class ReviewViewSchema(Schema):
    review_id = fields.String(metadata={"description": "as the decision's answer gave it"})
    reviewer_id = fields.String()
    label = fields.String()
    decided_at = Timestamp()
    duration_ms = fields.Integer(allow_none=True)
    agreed_with_model = fields.Boolean(allow_none=True)
    retracted = fields.Boolean()


class OutcomeViewSchema(Schema):
    label = fields.String()
    reported_at = Timestamp(allow_none=True)


class CaseDetailSchema(CaseResultSchema):
    """``GET /cases/{id}``: what each role reads (docs/api.md, "Reading a case")."""

    audit = fields.Boolean(
        metadata={
            "description": "drawn for the audit sample; analysts and admins only (applications "
            "and reviewers are never told which cases are audited)"
        }
    )
    inclusion_probability = fields.Float(
        metadata={
            "description": "analysts and admins only: the case's probability, fixed at "
            "arrival, of receiving a human label (1 when routed to people, the audit rate when "
            "answered automatically); /stats weights its label by 1 / this (docs/stats.md)"
        }
    )
    final_label = fields.String(allow_none=True)
    resolved_by = fields.String(
        allow_none=True, validate=validate.OneOf(("model", "reviewer", "application"))
    )
    resolved_at = Timestamp(allow_none=True)
    outcome = fields.Nested(OutcomeViewSchema, allow_none=True)
    reviews = fields.List(
        fields.Nested(ReviewViewSchema),
        metadata={
            "description": "analysts and admins: every review, undone ones included; "
            "applications: the reviews that decided the final label (each reviewer's standing "
            "verdict, a disagreeing one included, never an undone one); reviewers: their own"
        },
    )
    input = input_map("field name -> value, as sent (and repaired)")


class CaseLookupArgsSchema(Schema):
    external_id = fields.String(
        required=True,
        validate=validate.Length(1, 200),
        metadata={"description": "the external_id the case was sent with"},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(1, 1000),
        metadata={"description": "at most this many cases, newest first (default 100)"},
    )


class CaseListSchema(Schema):
    cases = fields.List(
        fields.Nested(CaseDetailSchema),
        metadata={"description": "newest first; each as GET /cases/{id} shows it to the caller"},
    )
    truncated = fields.Boolean(
        metadata={"description": "true when more cases than limit carry this external_id"}
    )


class OutcomeRequestSchema(Schema):
    label = fields.String(required=True, validate=validate.Length(1, 200))


class CaseRepairSchema(Schema):
    """An admin's correction of a stored case's inputs (docs/api.md, "Repairing a case")."""

    input = input_map("new values for some input fields", load_default=dict)
    redact = fields.List(
        fields.String(),
        load_default=list,
        metadata={"description": "input fields to set to null"},
    )
