"""Is the traffic arriving now like the ledger that would certify it? (docs/policy.md)

Certification bounds the error on traffic exchangeable with the ledger. When the stream turns
(a history sorted by class, a new customer segment) a ledger drawn before the turn proves
nothing about the traffic after it; the live watch only notices once wrong automatic answers
have been made. So before every certification attempt (each widening is one), the candidate's
scores and suggested labels on the latest traffic are compared with those on the ledger, with
no label needed, and the attempt is refused while they differ.

"Differ" must be both material and real: a population stability index above the usual
warning level (0.2 for scores, 0.1 for suggested labels) *and* a chi-square test of
homogeneity on the same bins at p < 0.001. PSI
alone is noisy on a few hundred cases with many classes (26 classes over 300 cases give PSI
≈ 0.17 from noise alone); the test alone flags shifts too small to matter on large samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .monitor import MIN_DRIFT_SAMPLE, PSI_WARNING, counts_shift

#: The latest traffic compared with the ledger: recent enough to see a turn within a few
#: hundred cases, large enough for the test.
CURRENT_WINDOW = 300
SHIFT_P_VALUE = 1e-3
SCORE_BINS = 10
#: Suggested labels are held to the "moderate shift" level of PSI: a rare class that becomes
#: four times as frequent (2.7% → 12.7% of suggestions, while the true share went from 5% to
#: 65% in a replay of credit_data turned by class) moves PSI by only 0.17.
LABEL_PSI = 0.1


@dataclass(frozen=True)
class ShiftCheck:
    checked: bool  # False when either sample is too small to tell (the attempt goes ahead)
    exchangeable: bool
    score_psi: float | None
    score_p_value: float | None
    label_psi: float | None
    label_p_value: float | None
    n_ledger: int
    n_current: int

    def as_dict(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "exchangeable": self.exchangeable,
            "score_psi": self.score_psi,
            "score_p_value": self.score_p_value,
            "label_psi": self.label_psi,
            "label_p_value": self.label_p_value,
            "ledger_cases": self.n_ledger,
            "current_cases": self.n_current,
        }


def _compare(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """(PSI, chi-square p-value) of two count vectors over the same bins."""
    return counts_shift(ref_counts, cur_counts)


def traffic_matches_ledger(
    ledger_scores: Sequence[float] | np.ndarray,
    ledger_pred: Sequence[str],
    *,
    current_scores: Sequence[float] | np.ndarray,
    current_pred: Sequence[str],
    psi_threshold: float = PSI_WARNING,
    label_psi_threshold: float = LABEL_PSI,
    p_threshold: float = SHIFT_P_VALUE,
    min_sample: int = MIN_DRIFT_SAMPLE,
) -> ShiftCheck:
    """Compare the candidate's scores and suggested labels on the ledger and on current
    traffic; ``exchangeable`` is False when either differs materially and significantly.

    The two "current" samples differ on purpose. ``current_pred``: suggested labels on the
    latest traffic, all of it — a turn shows there first, and labels barely move on the
    candidate's own training cases. ``current_scores``: scores on the latest *audited* cases,
    a uniform sample never trained on — on its training cases a model is over-confident
    (boosting on credit_data: score PSI 0.51 between held-out and 70%-training windows of the
    same traffic), which would refuse every attempt once queued cases are trained on.
    """
    ls = np.asarray(ledger_scores, dtype=float).ravel()
    cs = np.asarray(current_scores, dtype=float).ravel()
    if ls.size < min_sample or cs.size < min_sample or len(current_pred) < min_sample:
        return ShiftCheck(False, True, None, None, None, None, int(ls.size), len(current_pred))
    edges = np.unique(np.quantile(ls, np.linspace(0, 1, SCORE_BINS + 1))[1:-1])
    bins = edges.size + 1
    ref = np.bincount(np.searchsorted(edges, ls, side="right"), minlength=bins).astype(float)
    cur = np.bincount(np.searchsorted(edges, cs, side="right"), minlength=bins).astype(float)
    score_psi, score_p = _compare(ref, cur)
    labels = sorted(set(ledger_pred) | set(current_pred))
    at = {label: i for i, label in enumerate(labels)}
    ref_l = np.bincount([at[x] for x in ledger_pred], minlength=len(labels)).astype(float)
    cur_l = np.bincount([at[x] for x in current_pred], minlength=len(labels)).astype(float)
    label_psi, label_p = _compare(ref_l, cur_l)
    shifted = (score_psi > psi_threshold and score_p < p_threshold) or (
        label_psi > label_psi_threshold and label_p < p_threshold
    )
    return ShiftCheck(
        True,
        not shifted,
        score_psi,
        score_p,
        label_psi,
        label_p,
        int(ls.size),
        len(current_pred),
    )


def label_shift(
    reference_counts: dict[str, int],
    current_pred: Sequence[str],
    *,
    psi_threshold: float = LABEL_PSI,
    p_threshold: float = SHIFT_P_VALUE,
) -> tuple[float, float, bool]:
    """(PSI, p-value, shifted) of the suggested labels of live traffic against the counts a
    version suggested on its ledger (stored at training time): the label half of the gate
    above, run by the periodic drift check while a version automates."""
    labels = sorted(set(reference_counts) | set(current_pred))
    at = {label: i for i, label in enumerate(labels)}
    ref = np.array([float(reference_counts.get(label, 0)) for label in labels])
    cur = np.bincount([at[x] for x in current_pred], minlength=len(labels)).astype(float)
    value, p_value = _compare(ref, cur)
    return value, p_value, value > psi_threshold and p_value < p_threshold
