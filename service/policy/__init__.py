"""Tandem's automation policy (docs/policy.md): pure functions, no Flask, no database.

The promise: among cases answered automatically, the error rate is at most α with probability
at least 1 − δ, and automation grows only as evidence allows. See docs/policy.md.
"""

from .audit_sample import (
    DRIFT_AUDIT_MULTIPLIER,
    FALLBACK_AUDIT_MULTIPLIER,
    audit_draw,
    effective_audit_rate,
    is_audited,
)
from .bounds import (
    WeightedRate,
    binom_p_value,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_cases_to_pass,
    weighted_rate,
)
from .certify import (
    DEFAULT_GRID_POINTS,
    REST,
    START_LEDGER_SHARE,
    Certification,
    CertStep,
    LabelCertification,
    capped_threshold,
    certify,
    certify_by_label,
    label_groups,
    split_delta,
    threshold_grid,
)
from .exchangeability import ShiftCheck, traffic_matches_ledger
from .monitor import (
    DEFAULT_WINDOW,
    PSI_WARNING,
    LiveStatus,
    LiveWatch,
    alarm_table,
    drift_warning,
    first_alarm,
    live_error_alarm,
    psi,
)
from .multiplicity import (
    CHECKPOINT_GROWTH,
    DELTA_DECAY,
    Attempt,
    Checkpoint,
    PromotionDecision,
    checkpoint_delta,
    checkpoint_schedule,
    decide_promotion,
    due_attempt,
)
from .params import Policy, label_is_automatable, learning_blockers
from .widening import CASES_PER_STEP, allowed_coverage, cap_threshold

__all__ = [
    "CASES_PER_STEP",
    "CHECKPOINT_GROWTH",
    "DEFAULT_GRID_POINTS",
    "DEFAULT_WINDOW",
    "DELTA_DECAY",
    "DRIFT_AUDIT_MULTIPLIER",
    "FALLBACK_AUDIT_MULTIPLIER",
    "PSI_WARNING",
    "REST",
    "START_LEDGER_SHARE",
    "Attempt",
    "CertStep",
    "Certification",
    "Checkpoint",
    "LabelCertification",
    "LiveStatus",
    "LiveWatch",
    "Policy",
    "PromotionDecision",
    "ShiftCheck",
    "WeightedRate",
    "alarm_table",
    "allowed_coverage",
    "audit_draw",
    "binom_p_value",
    "cap_threshold",
    "capped_threshold",
    "certify",
    "certify_by_label",
    "checkpoint_delta",
    "checkpoint_schedule",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "decide_promotion",
    "drift_warning",
    "due_attempt",
    "effective_audit_rate",
    "first_alarm",
    "is_audited",
    "label_groups",
    "label_is_automatable",
    "learning_blockers",
    "live_error_alarm",
    "min_cases_to_pass",
    "psi",
    "split_delta",
    "threshold_grid",
    "traffic_matches_ledger",
    "weighted_rate",
]
