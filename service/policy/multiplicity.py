"""Multiplicity control across repeated certification attempts (docs/policy.md).

Every attempt on a growing ledger is another chance for a lucky pass. Tandem declares the
ledger sizes it may test at before any label is seen, and spends δ per *attempt*:

    n_m = n_0 · 1.5^(m−1)  (declared steps),   δ_a = δ / 2^a  (the a-th attempt ever made)

with n_0 = max(100, 2 · min_cases_to_pass(α, δ/2)). Σ δ_a = δ, so by the union bound the
probability that ANY attempt ever certifies a threshold whose true error exceeds α is at most
δ — whatever happens between attempts (retraining, champion/challenger), provided the choice
of *whether* to attempt at a step never looks at the labels it would be tested on. The
product's choice (``service.policy.readiness``) looks only at the candidate's out-of-fold
predictions on its own training cases and at the ledger's scores (and, for widening, at what
the running rule automates: see its docstring); ``tests/policy/test_policy_least_favourable.py``
simulates attempts at every step and with that check.

Why these numbers (measured by backtest, docs/backtest.md): with δ halving per *step*, a
step reached before the model was good enough burnt δ/2 and the next δ/4, and a third step
at δ/8 was nearly unpassable; runs that first certified there automated a quarter of what
hindsight could. Halving per attempt, with attempts made only when they are likely to pass,
keeps δ/2 for the first attempt that can succeed, whenever it comes. Steps 1.5× apart (rather
than 2×) give that attempt a step soon after the model is ready; an unattempted step costs
nothing.

Only one model is certified per step, on ledger cases it was not trained on; a step
jumped over (the ledger grew past it) is skipped. Each step is used at most once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bounds import min_cases_to_pass
from .certify import Certification

CHECKPOINT_GROWTH = 1.5
DELTA_DECAY = 0.5
#: No step before this many ledger cases: fewer say too little about a region and leave the
#: exchangeability gate without a verdict (it needs 100 on each side).
FIRST_CHECKPOINT_FLOOR = 100
MAX_LEDGER = 10**9  # schedules are listed up to this ledger size (37–40 declared sizes)


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
    n0 = max(FIRST_CHECKPOINT_FLOOR, 2 * min_cases_to_pass(alpha, delta * (1.0 - rho)))
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


@dataclass(frozen=True)
class Attempt:
    """The certification attempt due now: δ index, step within the ledger epoch, δ_j, and the
    ledger size it tests (exactly that many flagged cases, the first ones of the epoch)."""

    index: int
    epoch_step: int
    delta: float
    ledger_size: int


def due_attempt(
    n_flagged: int,
    *,
    alpha: float,
    delta: float,
    last_index: int | None,
    last_epoch_step: int | None,
) -> Attempt | None:
    """The attempt due for a ledger epoch holding ``n_flagged`` flagged cases, or None.

    Ledger sizes follow the declared schedule from the start of the epoch (the first epoch
    starts with the task; a fallback starts a new one, so recovery is certified on evidence
    drawn after the alarm): the step due is the largest declared size reached and not yet
    used in this epoch. δ indices count attempts, across epochs: the attempt due uses index
    ``last_index + 1`` whichever step it is at, so a step passed over (the ledger grew past
    it, or no candidate was ready) costs nothing. Σ δ_a over every attempt ever made stays
    ≤ δ. A caller that decides not to attempt simply records nothing: the same step (or a
    later one) is due again at the next call.
    """
    last_step = last_epoch_step or 0
    due: Checkpoint | None = None
    for cp in checkpoint_schedule(alpha, delta):
        if cp.ledger_size > n_flagged:
            break
        if cp.index > last_step:
            due = cp
    if due is None:
        return None
    index = (last_index or 0) + 1
    return Attempt(index, due.index, checkpoint_delta(index, delta), due.ledger_size)
