"""Export schemas (docs/export.md): the columns of an exported row, the snapshot request and
what the API shows of a stored export. They document the API; the export code writes the
files itself (service/services/export.py).

A new export column is a field of :class:`ExportRowSchema` (tests/export/test_export_schema.py
checks that every column a file has is documented here, and every filter in
:class:`ExportFiltersSchema`).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from service.models import CASE_STATUSES, LABEL_SOURCES, REASONS, ROUTES
from service.schemas.common import Timestamp
from service.services.export import AGREEMENTS, FORMATS, IDENTITIES

#: The columns named after the task: ``input.<field>`` (the field's type: string, number or
#: boolean) and ``score.<label>`` (a probability). OpenAPI 3.0 has no patternProperties, so the
#: row schema allows them as additional properties of these types.
DYNAMIC_COLUMN = {
    "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
    "nullable": True,
    "description": "input.<field> (one per task input field, in the task's order) and "
    "score.<label> (one per task label: the model's probability)",
}


class ExportRowSchema(Schema):
    """One exported case. Column order in CSV and Parquet: case_id, external_id, input.<field>
    per field, suggestion, confidence, score.<label> per label, then the rest as declared."""

    case_id = fields.String(required=True)
    external_id = fields.String(required=True, allow_none=True)
    suggestion = fields.String(
        required=True, allow_none=True, metadata={"description": "the model's label"}
    )
    confidence = fields.Float(
        required=True, allow_none=True, metadata={"description": "the model's top probability"}
    )
    model_version = fields.Integer(required=True, allow_none=True)
    route = fields.String(required=True, validate=validate.OneOf(ROUTES))
    reason = fields.String(required=True, validate=validate.OneOf(REASONS))
    audit = fields.Boolean(required=True, metadata={"description": "drawn for the audit sample"})
    inclusion_probability = fields.Float(
        required=True,
        allow_none=True,
        metadata={"description": "the case's stored audit probability: /stats weights by 1/it"},
    )
    status = fields.String(required=True, validate=validate.OneOf(CASE_STATUSES))
    final_label = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the label the case settled on (label_source says whose)"},
    )
    label_source = fields.String(
        required=True, allow_none=True, validate=validate.OneOf(LABEL_SOURCES)
    )
    human_label = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the ledger's human label (what /stats and training read)"},
    )
    human_label_source = fields.String(
        required=True, allow_none=True, validate=validate.OneOf(("reviewer", "application"))
    )
    outcome = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the application's reported outcome, kept apart"},
    )
    overridden = fields.Boolean(
        required=True,
        allow_none=True,
        metadata={"description": "human_label differs from suggestion (null unless both)"},
    )
    reviewer = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "pseudonym (or e-mail with identity=real) of the deciding review"},
    )
    review_time = Timestamp(required=True, allow_none=True)
    review_seconds = fields.Float(required=True, allow_none=True)
    time_to_decision_seconds = fields.Float(required=True, allow_none=True)
    created_at = Timestamp(required=True)
    resolved_at = Timestamp(required=True, allow_none=True)


def _one_or_many(item: dict[str, Any], description: str | None = None) -> fields.Raw:
    """A multi-valued filter: one value as itself, several as a list (any of them matches)."""
    meta: dict[str, Any] = {"oneOf": [item, {"type": "array", "items": item, "minItems": 1}]}
    if description:
        meta["description"] = description
    return fields.Raw(metadata=meta)


class ExportFiltersSchema(Schema):
    """The filters of an export, by their public names (docs/export.md, "Filters")."""

    from_ = Timestamp(data_key="from", attribute="from", metadata={"description": "created_at >="})
    to = Timestamp(metadata={"description": "created_at < (exclusive)"})
    label_source = _one_or_many({"type": "string", "enum": list(LABEL_SOURCES)})
    route = _one_or_many({"type": "string", "enum": list(ROUTES)})
    reason = _one_or_many({"type": "string", "enum": list(REASONS)})
    status = _one_or_many({"type": "string", "enum": list(CASE_STATUSES)})
    final_label = _one_or_many({"type": "string"}, "one of the task's labels")
    audit = fields.Boolean()
    agreement = fields.String(validate=validate.OneOf(AGREEMENTS))
    model_version = _one_or_many({"type": "integer", "minimum": 1})
    reviewer = _one_or_many({"type": "string"}, "reviewer pseudonym")


class SnapshotRequestSchema(Schema):
    format = fields.String(required=True, validate=validate.OneOf(FORMATS))
    filters = fields.Nested(
        ExportFiltersSchema, metadata={"description": "same names and values as the GET query"}
    )
    identity = fields.String(
        validate=validate.OneOf(IDENTITIES),
        metadata={"description": "`real` shows reviewer e-mail addresses (admins only)"},
    )
    reviews = fields.Boolean(
        metadata={"description": "also write every review of the exported cases (reviews file)"}
    )


EXPORT_STATES = ("queued", "running", "done", "failed")


class SnapshotQueuedSchema(Schema):
    export_id = fields.String(required=True)
    job_id = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(("queued",)))


class ColumnSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True, metadata={"description": "Arrow type, e.g. float64"})


class TimeRangeSchema(Schema):
    first_created_at = Timestamp(allow_none=True)
    last_created_at = Timestamp(allow_none=True)


class ReviewsManifestSchema(Schema):
    """The snapshot's reviews file: its own size, checksum, rows and columns."""

    file = fields.String()
    bytes = fields.Integer()
    sha256 = fields.String()
    row_count = fields.Integer()
    schema = fields.List(fields.Nested(ColumnSchema), metadata={"description": "in file order"})
    ordering = fields.List(fields.String())


class ManifestSchema(Schema):
    """Provenance of one export file (docs/export.md, "Reproducibility and manifests")."""

    export_id = fields.String(allow_none=True)
    task = fields.String()
    format = fields.String(validate=validate.OneOf(FORMATS))
    file = fields.String()
    bytes = fields.Integer()
    sha256 = fields.String()
    row_count = fields.Integer()
    filters = fields.Nested(ExportFiltersSchema)
    reviewer_identity = fields.String(validate=validate.OneOf(IDENTITIES))
    labels = fields.List(fields.String(), metadata={"description": "the task's label set"})
    schema = fields.List(fields.Nested(ColumnSchema), metadata={"description": "in file order"})
    time_range = fields.Nested(TimeRangeSchema)
    model_versions = fields.List(fields.Integer())
    creator = fields.String(allow_none=True)
    created_at = Timestamp()
    ordering = fields.List(fields.String())
    export_schema_version = fields.String()
    reviews = fields.Nested(
        ReviewsManifestSchema, allow_none=True, metadata={"description": "null unless asked for"}
    )


class ExportViewSchema(Schema):
    export_id = fields.String(required=True)
    task = fields.String()
    format = fields.String(validate=validate.OneOf(FORMATS))
    filters = fields.Nested(ExportFiltersSchema)
    reviewer_identity = fields.String(validate=validate.OneOf(IDENTITIES))
    reviews = fields.Boolean(metadata={"description": "a reviews file was asked for"})
    state = fields.String(validate=validate.OneOf(EXPORT_STATES))
    job_id = fields.String(allow_none=True)
    row_count = fields.Integer(allow_none=True)
    sha256 = fields.String(allow_none=True)
    manifest = fields.Nested(ManifestSchema, allow_none=True, metadata={"description": "once done"})
    error = fields.String(allow_none=True)
    created_by = fields.String(allow_none=True)
    created_at = Timestamp()
    finished_at = Timestamp(allow_none=True)
    download_url = fields.String(allow_none=True, metadata={"description": "once done"})
    reviews_download_url = fields.String(
        allow_none=True, metadata={"description": "once done, when a reviews file was asked for"}
    )


class ExportListSchema(Schema):
    exports = fields.List(fields.Nested(ExportViewSchema), required=True)
