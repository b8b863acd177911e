"""The router: one pure function deciding where a case goes and why (docs/policy.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    route: str  # auto | review
    reason: str
    status: str  # auto | pending


def decide(
    *,
    has_model: bool,
    automation_state: str,
    threshold: float | None,
    confidence: float | None,
    suggested_label: str | None,
    force_review: bool,
    out_of_range: bool,
    never_automate: frozenset[str] | tuple[str, ...] = (),
    audited: bool = False,
    hold_audited: bool = False,
) -> Route:
    """Order matters: an explicit request for a human wins, then the reasons that make the
    model's confidence meaningless (no model, input unlike training data, fallback, no
    certified threshold, a label people must decide), and only then the score."""
    if force_review:
        return Route("review", "forced", "pending")
    if not has_model or confidence is None:
        return Route("review", "cold_start", "pending")
    if out_of_range:
        return Route("review", "invalid_input", "pending")
    if automation_state == "fallback":
        return Route("review", "fallback", "pending")
    if threshold is None or automation_state != "automating":
        return Route("review", "cold_start", "pending")
    if suggested_label in never_automate:
        return Route("review", "policy", "pending")
    if confidence >= threshold:
        if audited and hold_audited:
            # audit_mode "hold": the audit sample waits for its human verdict.
            return Route("review", "audit", "pending")
        return Route("auto", "confident", "auto")
    return Route("review", "low_confidence", "pending")
