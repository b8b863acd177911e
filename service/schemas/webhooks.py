"""Webhook event and delivery schemas. Secrets are never part of any of them.

The event schemas describe the bodies Tandem POSTs to a task's webhook; they are published
in the OpenAPI document (components and ``x-webhooks``, see docs/webhooks.md, "Payload
schemas")."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.models import AUTOMATION_STATES
from service.schemas.cases import CaseDetailSchema
from service.schemas.common import OneOf, Timestamp
from service.services.webhooks import DELIVERY_STATUSES, EVENT_TYPES


class WebhookEventSchema(Schema):
    """The envelope of every event (docs/webhooks.md, "Payload and headers")."""

    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    timestamp = Timestamp(required=True, metadata={"description": "when the event happened"})
    task = fields.String(required=True, metadata={"description": "the task's name"})


def _event_type(name: str) -> fields.String:
    return fields.String(required=True, validate=validate.OneOf((name,)))


APP_VIEW = "the case as an application reads it with GET /cases/{id} (never the audit flag)"


class CaseResolvedEventSchema(WebhookEventSchema):
    """A person (or the application's outcome) decided a queued case; or a reviewer undid
    a correction of an automatic answer and then confirmed the model: the latest event then
    carries the model's answer again (``resolved_by`` ``model``)."""

    type = _event_type("case.resolved")
    data = fields.Nested(CaseDetailSchema, required=True, metadata={"description": APP_VIEW})


class CaseCorrectedEventSchema(WebhookEventSchema):
    """A human verdict contradicted an automatic answer already given."""

    type = _event_type("case.corrected")
    data = fields.Nested(
        CaseDetailSchema,
        required=True,
        metadata={"description": APP_VIEW + ", with the corrected final_label"},
    )


class ModelActivatedSchema(Schema):
    version = fields.Integer(required=True, metadata={"description": "the version now active"})
    previous_version = fields.Integer(required=True, allow_none=True)
    family = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True)


class ModelActivatedEventSchema(WebhookEventSchema):
    """A model version was promoted or rolled back."""

    type = _event_type("model.activated")
    data = fields.Nested(ModelActivatedSchema, required=True)


class AutomationSnapshotSchema(Schema):
    state = fields.String(required=True, validate=validate.OneOf(AUTOMATION_STATES))
    threshold = fields.Float(required=True, allow_none=True)
    coverage = fields.Float(allow_none=True)
    model_version = fields.Integer(allow_none=True)
    certified_error_bound = fields.Float(allow_none=True)


class AutomationChangedSchema(AutomationSnapshotSchema):
    previous = fields.Nested(
        AutomationSnapshotSchema, required=True, metadata={"description": "before the change"}
    )
    reason = fields.String(metadata={"description": "absent on a fallback (see drift.detected)"})


class AutomationChangedEventSchema(WebhookEventSchema):
    """Automation widened, narrowed or fell back."""

    type = _event_type("automation.changed")
    data = fields.Nested(AutomationChangedSchema, required=True)


DRIFT_KINDS = ("live_error", "label_shift", "label_free")


class DriftDetectedSchema(Schema):
    """The evidence; which keys are set depends on ``kind``."""

    kind = fields.String(required=True, validate=validate.OneOf(DRIFT_KINDS))
    n = fields.Integer(metadata={"description": "cases the evidence rests on"})
    errors = fields.Integer(metadata={"description": "live_error: wrong automatic answers"})
    estimate = fields.Float(metadata={"description": "live_error: errors / n"})
    lower = fields.Float(metadata={"description": "live_error: lower bound of the live error"})
    upper = fields.Float(metadata={"description": "live_error: upper bound of the live error"})
    label_psi = fields.Float(metadata={"description": "label_shift: PSI of suggested labels"})
    p_value = fields.Float(metadata={"description": "label_shift"})
    score_psi = fields.Float(metadata={"description": "label_free: PSI of the confidences"})
    warnings = fields.List(fields.String(), metadata={"description": "label_free"})


class DriftDetectedEventSchema(WebhookEventSchema):
    """The live error exceeded the target, suggested labels shifted, or inputs drifted."""

    type = _event_type("drift.detected")
    data = fields.Nested(DriftDetectedSchema, required=True)


#: Every event's schema by type: what the document publishes and the tests check against.
EVENT_SCHEMAS: dict[str, type[WebhookEventSchema]] = {
    "case.resolved": CaseResolvedEventSchema,
    "case.corrected": CaseCorrectedEventSchema,
    "model.activated": ModelActivatedEventSchema,
    "automation.changed": AutomationChangedEventSchema,
    "drift.detected": DriftDetectedEventSchema,
}


class DeliveryArgsSchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(DELIVERY_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class DeliverySchema(Schema):
    id = fields.String()
    message_id = fields.String(
        metadata={"description": "the `webhook-id` header; stable on replay"}
    )
    event_type = fields.String(validate=validate.OneOf(EVENT_TYPES))
    url = fields.String(metadata={"description": "target URL (any password redacted)"})
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    attempts = fields.Integer(metadata={"description": "attempts since creation or last replay"})
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    payload = OneOf(list(EVENT_SCHEMAS.values()), metadata={"description": "the signed JSON body"})


class DeliveryPageSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class ReplayResultSchema(Schema):
    job_id = fields.String()
    delivery = fields.Nested(DeliverySchema)
