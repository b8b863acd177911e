"""``GET /tasks/{task}/stats``: the contract the dashboard is built against (docs/stats.md)."""

from __future__ import annotations

from datetime import UTC

from marshmallow import Schema, fields, validate

from service.models import AUTOMATION_STATES
from service.services.stats import BUCKETS


class StatsArgsSchema(Schema):
    since = fields.AwareDateTime(
        load_default=None,
        default_timezone=UTC,
        metadata={
            "description": "window start (ISO 8601; UTC if no offset). Default: until − 7 days"
        },
    )
    until = fields.AwareDateTime(
        load_default=None,
        default_timezone=UTC,
        metadata={"description": "window end, exclusive (ISO 8601). Default: now"},
    )
    bucket = fields.String(
        load_default=None,
        validate=validate.OneOf(tuple(BUCKETS)),
        metadata={"description": "series bucket: hour|day. Default: hour for ≤ 2 days, else day"},
    )


class IntervalSchema(Schema):
    estimate = fields.Float(allow_none=True)
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)


class WindowSchema(Schema):
    since = fields.DateTime()
    until = fields.DateTime()
    bucket = fields.String(validate=validate.OneOf(tuple(BUCKETS)))


class AutomationStatsSchema(Schema):
    state = fields.String(validate=validate.OneOf(AUTOMATION_STATES))
    threshold = fields.Float(allow_none=True)
    model_version = fields.Integer(allow_none=True)
    coverage = fields.Float(allow_none=True, metadata={"description": "certified coverage"})
    rate = fields.Nested(
        IntervalSchema,
        metadata={"description": "share of cases in the window answered automatically, exact"},
    )


class LiveErrorSchema(IntervalSchema):
    n = fields.Integer(metadata={"description": "audited automatic answers with a human label"})
    target = fields.Float()


class OverrideRateSchema(IntervalSchema):
    n = fields.Integer(metadata={"description": "human-labelled cases used"})


class TimeToDecisionSchema(Schema):
    median_seconds = fields.Float(allow_none=True)
    p90_seconds = fields.Float(allow_none=True)


class QueueStatsSchema(Schema):
    depth = fields.Integer()
    oldest_pending_seconds = fields.Float(allow_none=True)


class ReviewerStatsSchema(Schema):
    reviewer_id = fields.String(metadata={"description": "pseudonym, never the e-mail"})
    reviews = fields.Integer()
    override_rate = fields.Float(allow_none=True)
    median_seconds = fields.Float(allow_none=True)
    agreement_rate = fields.Float(allow_none=True)


class AuditAgreementSchema(IntervalSchema):
    n = fields.Integer(
        metadata={"description": "audited cases decided by two blind reviewers (or more)"}
    )
    agreed = fields.Integer(metadata={"description": "of those, the first two chose one label"})


class SeriesPointSchema(Schema):
    bucket = fields.DateTime()
    cases = fields.Integer()
    auto = fields.Integer()
    automation_rate = fields.Float(allow_none=True)
    threshold = fields.Float(allow_none=True)
    live_error = fields.Float(allow_none=True)
    live_error_lower = fields.Float(allow_none=True)
    live_error_upper = fields.Float(allow_none=True)
    queue_depth = fields.Integer()
    labelled = fields.Integer()
    median_decision_seconds = fields.Float(allow_none=True)


class FieldDriftSchema(Schema):
    """One input field's recent values against the training profile (which keys are set
    depends on the field type)."""

    type = fields.String(validate=validate.OneOf(("text", "category", "number", "boolean")))
    n = fields.Integer(metadata={"description": "recent cases compared"})
    missing_rate = fields.Float()
    missing_rate_train = fields.Float()
    missing_rate_change = fields.Float()
    psi = fields.Float(allow_none=True, metadata={"description": "numbers and booleans"})
    psi_p_value = fields.Float(allow_none=True, metadata={"description": "numbers and booleans"})
    out_of_range_rate = fields.Float(metadata={"description": "numbers and booleans"})
    unseen_rate = fields.Float(metadata={"description": "categories"})
    unseen_is_exact = fields.Boolean(metadata={"description": "categories"})
    expected_unseen_rate = fields.Float(
        metadata={
            "description": "categories: the unseen rate the training data itself predicts "
            "(its share of values seen once); a warning needs the observed rate 0.2 above it"
        }
    )
    mean_length = fields.Float(allow_none=True, metadata={"description": "text"})


class DriftSchema(Schema):
    warning = fields.Boolean()
    psi = fields.Float(allow_none=True)
    fields_ = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(FieldDriftSchema),
        data_key="fields",
        attribute="fields",
        metadata={"description": "input field name -> its drift"},
    )


class TaskStatsSchema(Schema):
    task = fields.String()
    window = fields.Nested(WindowSchema)
    automation = fields.Nested(AutomationStatsSchema)
    live_error = fields.Nested(LiveErrorSchema)
    override_rate = fields.Nested(OverrideRateSchema)
    time_to_decision = fields.Nested(TimeToDecisionSchema)
    queue = fields.Nested(QueueStatsSchema)
    reviewers = fields.List(fields.Nested(ReviewerStatsSchema))
    audit_agreement = fields.Nested(
        AuditAgreementSchema,
        metadata={
            "description": "share of doubly reviewed audits whose two blind reviewers agreed, "
            "exact interval (policy second_review_rate)"
        },
    )
    series = fields.List(fields.Nested(SeriesPointSchema))
    drift = fields.Nested(DriftSchema)
