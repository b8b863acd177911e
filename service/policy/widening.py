"""Gradual widening tied to traffic, not to versions (docs/policy.md)."""

from __future__ import annotations

from collections.abc import Sequence

from .certify import CertStep
from .params import Policy

#: Traffic cases per full ``max_coverage_step``: after 250 cases without a change the step may
#: be used again, after 500 twice, … (a per-version cap throttled automation when versions
#: were few; docs/policy.md). The step never shrinks below one ``max_coverage_step``. 500 held
#: the first release of a model certified after ~2,000 cold-start cases to ~40% coverage
#: when 74% was proved (docs/backtest.md, letter); 250 lets it follow the evidence sooner
#: while the live watch still sees each widening before the next.
CASES_PER_STEP = 250


def allowed_coverage(
    current_coverage: float,
    cases_since_last_change: int,
    policy: Policy,
    *,
    human_labels: int,
    frozen: bool = False,
) -> float:
    """Highest coverage the next deployment may reach.

    0 before ``min_labels`` human labels; ``current`` when widening is frozen (drift warning);
    otherwise ``current + max_coverage_step · max(1, cases_since_last_change / 250)``, capped
    at 1. Narrowing is always allowed.
    """
    if human_labels < policy.min_labels:
        return 0.0
    if frozen:
        return current_coverage
    factor = max(1.0, cases_since_last_change / CASES_PER_STEP)
    return min(1.0, current_coverage + policy.max_coverage_step * factor)


def cap_threshold(
    accepted_steps: Sequence[CertStep],
    *,
    current_coverage: float,
    allowed_coverage: float,
) -> CertStep | None:
    """Pick the deployed threshold among ACCEPTED steps only.

    Returns the laxest accepted step whose coverage ≤ ``allowed_coverage``. If every accepted
    step exceeds the cap, the strictest accepted one is returned only when it does not widen
    beyond what already runs (coverage ≤ max(allowed, current)); otherwise None (keep the
    active version). An untested stricter threshold is never invented: to get one inside the
    cap, build the grid with ``max_coverage`` so the capped threshold is tested first.
    """
    acc = [s for s in accepted_steps if s.accepted]
    if not acc:
        return None
    within = [s for s in acc if s.coverage <= allowed_coverage + 1e-12]
    if within:
        return min(within, key=lambda s: s.threshold)  # laxest = lowest τ
    strictest = max(acc, key=lambda s: s.threshold)
    if strictest.coverage <= max(allowed_coverage, current_coverage) + 1e-12:
        return strictest
    return None
