"""Multiplicity control across repeated certification attempts (SPEC §4 facts).

Every attempt on a growing ledger is another chance for a lucky pass. Tandem spends δ over
*declared* ledger sizes (checkpoints), dense and geometric so evidence is used soon after it
arrives:

    n_j = ceil(n_0 · g^(j−1)),   δ_j = δ (1 − ρ) ρ^(j−1),   j = 1, 2, …

with g = 1.25, ρ = 0.8 and n_0 = min_cases_to_pass(α, δ_1) (the smallest ledger on which the
first attempt can pass at all). Σ δ_j = δ, so by the union bound the probability that ANY
attempt ever certifies a threshold whose true error exceeds α is at most δ — whatever
happens between checkpoints (retraining, champion/challenger). A ledger doubling spans
log 2 / log 1.25 ≈ 3.1 checkpoints and divides δ_j by ρ^3.1 ≈ 2, which costs only
ln 2 / −ln(1 − α) ≈ 35 more error-free cases at α = 0.02, versus ~150 for the δ_k ∝ 1/k²
schedule measured in the replay.

Only the newest model is certified at a checkpoint; a checkpoint skipped (the ledger jumped
past it) leaves its δ unspent, which is conservative. Each checkpoint is used at most once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .certify import Certification
from .stats import min_cases_to_pass

CHECKPOINT_GROWTH = 1.25
DELTA_DECAY = 0.8
MAX_LEDGER = 10**9  # schedules are listed up to this ledger size (~70 checkpoints)


@dataclass(frozen=True)
class Checkpoint:
    index: int  # j, 1-based
    ledger_size: int  # n_j
    delta: float  # δ_j


def checkpoint_delta(index: int, delta: float, rho: float = DELTA_DECAY) -> float:
    """δ_j = δ(1 − ρ)ρ^(j−1)."""
    if index < 1:
        raise ValueError("checkpoint index is 1-based")
    return delta * (1.0 - rho) * rho ** (index - 1)


def checkpoint_schedule(
    alpha: float,
    delta: float,
    *,
    growth: float = CHECKPOINT_GROWTH,
    rho: float = DELTA_DECAY,
    max_ledger: int = MAX_LEDGER,
) -> list[Checkpoint]:
    """The declared checkpoints (index, ledger size, δ_j) up to ``max_ledger`` cases.

    Ledger sizes are strictly increasing (rounding could repeat a size at small n_0; repeats
    are pushed up by one case).
    """
    if not (growth > 1.0 and 0.0 < rho < 1.0):
        raise ValueError("need growth > 1 and 0 < rho < 1")
    n0 = min_cases_to_pass(alpha, delta * (1.0 - rho))
    out: list[Checkpoint] = []
    last = 0
    j = 1
    while True:
        n_j = max(math.ceil(n0 * growth ** (j - 1) - 1e-9), last + 1)
        if n_j > max_ledger:
            break
        out.append(Checkpoint(j, n_j, checkpoint_delta(j, delta, rho)))
        last = n_j
        j += 1
    return out


def checkpoint_for_ledger_size(
    n: int,
    *,
    alpha: float,
    delta: float,
    last_attempted: int | None = None,
) -> tuple[int, float] | None:
    """(j, δ_j) of the checkpoint due now, or None when no new attempt is due.

    Due = the highest declared checkpoint with n_j ≤ n that is later than ``last_attempted``
    (the caller stores the index it last used). Intermediate checkpoints that were jumped over
    are skipped for good.
    """
    due: Checkpoint | None = None
    for cp in checkpoint_schedule(alpha, delta):
        if cp.ledger_size > n:
            break
        if last_attempted is None or cp.index > last_attempted:
            due = cp
    return None if due is None else (due.index, due.delta)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(
    active: Certification | None,
    candidate: Certification,
    *,
    active_coverage: float | None = None,
    candidate_coverage: float | None = None,
) -> PromotionDecision:
    """Champion/challenger: promote only if the candidate certifies at least as much coverage.

    A failing candidate never switches automation off and does not reset the audit rate: the
    active version (certified at an earlier checkpoint, within the same δ budget) stays.
    Coverages default to the certifications' own; pass both measured on the same recent
    traffic (after the widening cap) to compare like with like.
    """
    if not candidate.certified:
        return PromotionDecision(False, "candidate not certified; active version stays")
    cand = candidate.coverage if candidate_coverage is None else candidate_coverage
    if active is None or not active.certified:
        return PromotionDecision(True, "no certified active version")
    act = active.coverage if active_coverage is None else active_coverage
    if cand >= act:
        return PromotionDecision(True, f"candidate coverage {cand:.3f} >= active {act:.3f}")
    return PromotionDecision(False, f"candidate coverage {cand:.3f} < active {act:.3f}")
