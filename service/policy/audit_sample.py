"""The audit ledger: which cases get a human label regardless of their score (docs/policy.md)."""

from __future__ import annotations

import hashlib

from .params import Policy

FALLBACK_AUDIT_MULTIPLIER = 4.0
#: After a fallback at most half of the new labels go to the ledger: the other half trains the
#: model that has to recover (at a flag rate of 1 nothing was left to train on, and recovery
#: waited for an old model to pass on a ledger mixing the old and the new traffic).
FALLBACK_AUDIT_CAP = 0.5
DRIFT_AUDIT_MULTIPLIER = 2.0


def audit_draw(case_id: str) -> float:
    """Deterministic uniform draw in [0, 1) from SHA-256 of the case id.

    Depends on the id only, never on the score, so flagged cases are a uniform sample of traffic
    and re-routing the same case (retries, replays) always gives the same flag.
    """
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_audited(case_id: str, rate: float) -> bool:
    """Flag the case when its draw falls below the audit rate in force at arrival."""
    return audit_draw(case_id) < rate


def effective_audit_rate(
    policy: Policy,
    *,
    automating: bool,
    coverage: float,
    fallback: bool = False,
    drift_warning: bool = False,
) -> float:
    """Flag probability π for a case arriving now.

    Rule (documented in docs/policy.md):

    * not automating (cold start, manual, or automation pulled back): ``cold_start_audit_rate``
      — every case goes to a human anyway, so flags cost no extra labels;
    * automating at coverage c: ``clip(audit_rate / c², audit_rate, cold_start_audit_rate)``.
      Flags below τ cost no extra review (those cases are reviewed anyway); only the automatic
      share c costs extra labels, c·π_t = audit_rate / c of all traffic (10% at c = 0.5, 6% at
      c = 0.8, audit_rate at full automation). The ledger then keeps growing fast while
      automation is partial, so the next declared checkpoint — and a wider, newer version —
      arrives within a few thousand cases instead of never (measured in docs/backtest.md);
    * on fallback ×4 (×8 with a drift warning), at most ``FALLBACK_AUDIT_CAP`` (0.5) unless
      the rate was higher already; ×2 on a label-free drift warning otherwise, with the same
      cap (a drift warning must never flag every case: the task could no longer learn).

    The rate must be stored with each case: it is that case's inclusion probability for the
    weighted estimates.
    """
    base_high = max(policy.cold_start_audit_rate, policy.audit_rate)
    if not automating or coverage <= 0.0:
        rate = base_high
    else:
        c = min(coverage, 1.0)
        rate = min(max(policy.audit_rate / max(c * c, 1e-12), policy.audit_rate), base_high)
    if fallback:
        raised = rate * FALLBACK_AUDIT_MULTIPLIER
        if drift_warning:
            raised *= DRIFT_AUDIT_MULTIPLIER
        return min(max(rate, min(raised, FALLBACK_AUDIT_CAP)), 1.0)
    if drift_warning:
        # Capped as on fallback: a doubled cold-start rate of 0.5 or more would flag every
        # case, and audited cases are never training data, so the task could not retrain.
        rate = max(rate, min(rate * DRIFT_AUDIT_MULTIPLIER, FALLBACK_AUDIT_CAP))
    return min(rate, 1.0)
