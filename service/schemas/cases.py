"""Predict and case schemas: they document the binding API (SPEC §6).

The predict hot path validates inputs with the task's own generated schema
(:mod:`service.input_schema`); these classes describe the envelope for the OpenAPI document.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.models import CASE_STATUSES, REASONS, ROUTES
from service.schemas.common import ErrorDetailSchema


class PredictRequestSchema(Schema):
    input = fields.Dict(
        required=True,
        metadata={
            "description": "field name -> value, as "
            "declared by the task (text/category: string, number: finite number, "
            "boolean: true/false; optional fields may be null)"
        },
    )
    external_id = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(1, 200)
    )
    force_review = fields.Boolean(load_default=False)


class BatchRequestSchema(Schema):
    items = fields.List(
        fields.Nested(PredictRequestSchema), required=True, validate=validate.Length(max=1000)
    )


class SuggestionSchema(Schema):
    label = fields.String()
    confidence = fields.Float()
    scores = fields.Dict(keys=fields.String(), values=fields.Float())


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
    created_at = fields.String(metadata={"format": "date-time"})


class BatchItemSchema(CaseResultSchema):
    """One result per item, in order: the case fields, or only ``error`` when the item was
    invalid (SPEC §6: the bad item gets its error object in place, the rest are stored)."""

    case_id = fields.String(
        metadata={"description": "present when the item was stored; absent with error"}
    )
    error = fields.Nested(
        ErrorDetailSchema,
        metadata={
            "description": "present instead of the case fields when this "
            "item was invalid (nothing stored for it)"
        },
    )


class BatchResultSchema(Schema):
    results = fields.List(fields.Nested(BatchItemSchema))


class ReviewViewSchema(Schema):
    reviewer_id = fields.String()
    label = fields.String()
    decided_at = fields.String(metadata={"format": "date-time"})
    duration_ms = fields.Integer(allow_none=True)
    agreed_with_model = fields.Boolean(allow_none=True)
    retracted = fields.Boolean()


class OutcomeViewSchema(Schema):
    label = fields.String()
    reported_at = fields.String()


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
    resolved_at = fields.String(allow_none=True)
    outcome = fields.Nested(OutcomeViewSchema, allow_none=True)
    reviews = fields.List(
        fields.Nested(ReviewViewSchema),
        metadata={
            "description": "analysts and admins: every review; applications: the reviews that "
            "decided the final label; reviewers: their own"
        },
    )
    input = fields.Dict()


class OutcomeRequestSchema(Schema):
    label = fields.String(required=True, validate=validate.Length(1, 200))


class CaseRepairSchema(Schema):
    """An admin's correction of a stored case's inputs (docs/api.md, "Repairing a case")."""

    input = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={"description": "new values for some input fields"},
    )
    redact = fields.List(
        fields.String(),
        load_default=list,
        metadata={"description": "input fields to set to null"},
    )
