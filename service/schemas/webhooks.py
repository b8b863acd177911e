"""Webhook delivery schemas (admin API). Secrets are never part of any of them."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.services.webhooks import DELIVERY_STATUSES


class DeliveryArgsSchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(DELIVERY_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class DeliverySchema(Schema):
    id = fields.String()
    message_id = fields.String(
        metadata={"description": "the `webhook-id` header; stable on replay"}
    )
    event_type = fields.String()
    url = fields.String(metadata={"description": "target URL (any password redacted)"})
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    attempts = fields.Integer(metadata={"description": "attempts since creation or last replay"})
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    payload = fields.Dict(metadata={"description": "the signed JSON body"})


class DeliveryPageSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class ReplayResultSchema(Schema):
    job_id = fields.String()
    delivery = fields.Nested(DeliverySchema)
