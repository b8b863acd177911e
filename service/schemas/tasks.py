"""Task definition schemas (docs/tasks.md)."""

from __future__ import annotations

import re
from typing import Any

import marshmallow.fields as mf
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    validate,
    validates_schema,
)

from service.policy.params import NEW_TASK_WATCH_CONFIDENCE

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\- ]{0,99}$")
FIELD_TYPES = ("text", "category", "number", "boolean")


#: Labels are shown, exported and compared as text: a NUL (which PostgreSQL cannot store in
#: text and which no person can type) is refused with the field named.
NO_NUL = validate.Regexp(r"^[^\x00]*$", error="Must not contain NUL characters.")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class FieldSpecSchema(StrictSchema):
    name = mf.String(required=True, validate=validate.Regexp(FIELD_NAME_RE))
    type = mf.String(required=True, validate=validate.OneOf(FIELD_TYPES))
    required = mf.Boolean(load_default=True)
    max_length = mf.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(1, 1_000_000)
    )


class PolicySchema(StrictSchema):
    target_error = mf.Float(load_default=0.02, validate=validate.Range(0.0001, 0.5))
    confidence = mf.Float(load_default=0.95, validate=validate.Range(0.5, 0.9999))
    audit_rate = mf.Float(load_default=0.05, validate=validate.Range(0.0, 1.0, min_inclusive=False))
    cold_start_audit_rate = mf.Float(
        load_default=0.3,
        validate=validate.Range(0.0, 1.0, min_inclusive=False),
        metadata={
            "description": "share of cases flagged for the audit sample while nothing is "
            "automated; a larger sample certifies sooner, at the price of training data"
        },
    )
    min_labels = mf.Integer(strict=True, load_default=200, validate=validate.Range(10, 10_000_000))
    max_coverage_step = mf.Float(load_default=0.10, validate=validate.Range(0.001, 1.0))
    retrain_every = mf.Integer(
        strict=True, load_default=100, validate=validate.Range(10, 10_000_000)
    )
    never_automate = mf.List(mf.String(), load_default=list)
    label_targets = mf.Dict(
        keys=mf.String(),
        values=mf.Float(validate=validate.Range(0.0001, 0.5)),
        load_default=dict,
    )
    watch_min_answers = mf.Integer(
        strict=True,
        load_default=1,
        validate=validate.Range(1, 300),
        metadata={
            "description": "the live watch cannot fall back before the running version has "
            "this many audited automatic answers (fewer false fallbacks, slower reaction to "
            "a bad new version; docs/policy.md)"
        },
    )
    watch_confidence = mf.Float(
        load_default=NEW_TASK_WATCH_CONFIDENCE,
        allow_none=True,
        validate=validate.Range(0.5, 1.0, max_inclusive=False),
        metadata={
            "description": "confidence of the live watch's test (null: the task's "
            "confidence); higher means fewer false fallbacks and a slower reaction to a "
            "version that is worse than promised (docs/policy.md)"
        },
    )
    certification_margin = mf.Float(
        load_default=0.0,
        validate=validate.Range(0.0, 0.5),
        metadata={
            "description": "certify at target_error minus this margin, for users who "
            "need realised error under target over short windows"
        },
    )
    second_review_rate = mf.Float(
        load_default=0.0,
        validate=validate.Range(0.0, 1.0),
        metadata={
            "description": "share of audited cases that a second reviewer also decides, "
            "blind to the first; their agreement is reported in the task's stats"
        },
    )
    audit_mode = mf.String(
        load_default="answer",
        validate=validate.OneOf(("answer", "hold")),
        metadata={
            "description": "answer: an audited confident case is answered at once and "
            "checked by a person later; hold: it waits for the person (reason audit)"
        },
    )


class ReviewSettingsSchema(StrictSchema):
    instructions = mf.String(load_default="", validate=validate.Length(max=50_000))
    lease_seconds = mf.Integer(strict=True, load_default=300, validate=validate.Range(10, 86_400))
    reviewers_per_case = mf.Integer(strict=True, load_default=1, validate=validate.Range(1, 5))
    sla_seconds = mf.Integer(
        strict=True, load_default=86_400, validate=validate.Range(60, 31_536_000)
    )
    #: Fields the review page shows first (docs/review.md, "The review page"); optional.
    primary_fields = mf.List(mf.String(validate=NO_NUL), validate=validate.Length(max=50))


class WebhookSchema(StrictSchema):
    url = mf.Url(required=True, require_tld=False, schemes={"http", "https"})
    secret = mf.String(
        load_default=None, allow_none=True, load_only=True, validate=validate.Length(min=8, max=200)
    )


class TaskCreateSchema(StrictSchema):
    name = mf.String(
        required=True,
        validate=validate.Regexp(
            NAME_RE,
            error="lower-case letters, digits, '-' and '_' (max 100), starting alphanumeric",
        ),
    )
    labels = mf.List(
        mf.String(validate=[validate.Length(1, 200), NO_NUL]),
        required=True,
        validate=validate.Length(min=2, max=1000),
    )
    # "fields" would shadow Schema.fields, hence the attribute/data_key pair.
    field_specs = mf.List(
        mf.Nested(FieldSpecSchema),
        required=True,
        validate=validate.Length(min=1, max=500),
        data_key="fields",
        attribute="fields",
    )
    policy = mf.Nested(PolicySchema, load_default=lambda: PolicySchema().load({}))
    review = mf.Nested(ReviewSettingsSchema, load_default=lambda: ReviewSettingsSchema().load({}))
    webhook = mf.Nested(WebhookSchema, load_default=None, allow_none=True)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        labels = data.get("labels") or []
        if len(set(labels)) != len(labels):
            raise ValidationError("labels must be unique", "labels")
        names = [f["name"] for f in data.get("fields") or []]
        if len(set(names)) != len(names):
            raise ValidationError("field names must be unique", "fields")
        policy = data.get("policy") or {}
        _check_policy_labels(policy, labels)
        unknown = sorted(set((data.get("review") or {}).get("primary_fields") or []) - set(names))
        if unknown:
            raise ValidationError(f"primary_fields names unknown fields: {unknown}", "review")


def _check_policy_labels(policy: dict[str, Any], labels: list[str]) -> None:
    if policy.get("certification_margin", 0.0) >= policy.get("target_error", 0.02):
        raise ValidationError("certification_margin must be below target_error", "policy")
    unknown = [x for x in policy.get("never_automate", []) if x not in labels]
    unknown += [x for x in policy.get("label_targets", {}) if x not in labels]
    if unknown:
        raise ValidationError(f"unknown labels in policy: {sorted(set(unknown))}", "policy")


class PolicyPatchSchema(PolicySchema):
    """Every policy key optional on PATCH (missing keys keep their value)."""

    target_error = mf.Float(validate=validate.Range(0.0001, 0.5))
    confidence = mf.Float(validate=validate.Range(0.5, 0.9999))
    audit_rate = mf.Float(validate=validate.Range(0.0, 1.0, min_inclusive=False))
    cold_start_audit_rate = mf.Float(validate=validate.Range(0.0, 1.0, min_inclusive=False))
    min_labels = mf.Integer(strict=True, validate=validate.Range(10, 10_000_000))
    max_coverage_step = mf.Float(validate=validate.Range(0.001, 1.0))
    retrain_every = mf.Integer(strict=True, validate=validate.Range(10, 10_000_000))
    never_automate = mf.List(mf.String())
    label_targets = mf.Dict(keys=mf.String(), values=mf.Float(validate=validate.Range(0.0001, 0.5)))
    certification_margin = mf.Float(validate=validate.Range(0.0, 0.5))
    second_review_rate = mf.Float(validate=validate.Range(0.0, 1.0))
    watch_min_answers = mf.Integer(strict=True, validate=validate.Range(1, 300))
    watch_confidence = mf.Float(
        allow_none=True, validate=validate.Range(0.5, 1.0, max_inclusive=False)
    )
    audit_mode = mf.String(validate=validate.OneOf(("answer", "hold")))


class ReviewPatchSchema(ReviewSettingsSchema):
    instructions = mf.String(validate=validate.Length(max=50_000))
    lease_seconds = mf.Integer(strict=True, validate=validate.Range(10, 86_400))
    reviewers_per_case = mf.Integer(strict=True, validate=validate.Range(1, 5))
    sla_seconds = mf.Integer(strict=True, validate=validate.Range(60, 31_536_000))


class OptionalFieldSpecSchema(FieldSpecSchema):
    required = mf.Boolean(
        load_default=False,
        validate=validate.Equal(False, error="fields added to an existing task must be optional"),
    )


class TaskPatchSchema(StrictSchema):
    """What may change on a live task: nothing that would invalidate stored cases."""

    policy = mf.Nested(PolicyPatchSchema)
    review = mf.Nested(ReviewPatchSchema)
    webhook = mf.Nested(WebhookSchema, allow_none=True)
    add_labels = mf.List(mf.String(validate=[validate.Length(1, 200), NO_NUL]))
    add_fields = mf.List(mf.Nested(OptionalFieldSpecSchema))


class AutomationSchema(Schema):
    state = mf.String(validate=validate.OneOf(("manual", "automating", "fallback")))
    threshold = mf.Float(allow_none=True)
    model_version = mf.Integer(allow_none=True)
    certified_error_bound = mf.Float(allow_none=True)
    coverage = mf.Float(allow_none=True)
    audit_rate = mf.Float()
    widening_frozen = mf.Boolean()
    reason = mf.String(
        allow_none=True,
        metadata={"description": "Why the automation is in this state (its latest change)."},
    )
    changed_at = mf.DateTime(allow_none=True)


class TrainingSchema(Schema):
    state = mf.String(validate=validate.OneOf(("idle", "queued", "running")))
    job_id = mf.String(allow_none=True)


class CountsSchema(Schema):
    cases = mf.Integer()
    pending = mf.Integer()
    labelled = mf.Integer()
    auto = mf.Integer()


class TaskSchema(Schema):
    name = mf.String()
    labels = mf.List(mf.String())
    field_specs = mf.List(mf.Nested(FieldSpecSchema), data_key="fields", attribute="fields")
    policy = mf.Nested(PolicySchema)
    review = mf.Nested(ReviewSettingsSchema)
    webhook = mf.Nested(
        WebhookSchema,
        allow_none=True,
        metadata={"description": "url only; the secret is write-only"},
    )
    automation = mf.Nested(AutomationSchema)
    training = mf.Nested(TrainingSchema)
    counts = mf.Nested(CountsSchema)
    created_at = mf.DateTime()
    updated_at = mf.DateTime()


class TaskListSchema(Schema):
    tasks = mf.List(mf.Nested(TaskSchema))
