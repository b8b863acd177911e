"""Multiplicity control across repeated certification attempts (docs/policy.md).

Every attempt on a growing ledger is another chance for a lucky pass. Tandem spends δ over
*declared* ledger sizes (checkpoints), fixed before any label is seen:

    n_j = n_0 · 2^(j−1),   δ_j = δ / 2^j,   j = 1, 2, …

with n_0 = max(300, 2 · min_cases_to_pass(α, δ/2)). Σ δ_j = δ, so by the union bound the
probability that ANY attempt ever certifies a threshold whose true error exceeds α is at
most δ — whatever happens between checkpoints (retraining, champion/challenger).

Why these numbers (measured by backtest, docs/backtest.md): the earlier dense schedule
(ledger ×1.25 and δ ×0.8 per checkpoint, starting at the bare minimum ledger) spent most of δ
on small ledgers where nothing could pass, and was down to δ/70 by the time ~1,300 cases
existed. Doubling ledgers with halving δ is the first of the designs compared in
docs/backtest.md; starting at the first ledger where a region holding half of it can pass
keeps δ/2 for an attempt that can succeed.

Only the newest model is certified at a checkpoint; a checkpoint skipped (the ledger jumped
past it) leaves its δ unspent, which is conservative. Each checkpoint is used at most once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .certify import Certification
from .stats import min_cases_to_pass

CHECKPOINT_GROWTH = 2.0
DELTA_DECAY = 0.5
#: No checkpoint before this many ledger cases: with fewer, no region worth automating can
#: pass, and the δ it would spend is better kept for later attempts.
FIRST_CHECKPOINT_FLOOR = 300
MAX_LEDGER = 10**9  # schedules are listed up to this ledger size (~22 checkpoints)


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
    drawn after the alarm), while δ indices keep counting across epochs: step m of an epoch
    uses δ index ``last_index + (m − last_epoch_step)``. In the first epoch the two coincide
    (step m is checkpoint m, as :func:`checkpoint_for_ledger_size`); a step jumped over leaves
    its δ unspent. Σ δ_j over every attempt ever made stays ≤ δ.
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
    index = (last_index or 0) + (due.index - last_step)
    return Attempt(index, due.index, checkpoint_delta(index, delta), due.ledger_size)
