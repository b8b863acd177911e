"""Live watch of the error of automatic answers, and label-free drift warnings (docs/policy.md)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .bounds import clopper_pearson_lower, clopper_pearson_upper
from .params import DEFAULT_WATCH_WINDOW as DEFAULT_WINDOW

PSI_WARNING = 0.2  # customary "significant shift" level for the population stability index
PSI_EPSILON = 1e-4
MIN_DRIFT_SAMPLE = 100  # PSI on fewer current scores is mostly noise
#: A drift warning also needs the shift to be real, not just large (as the exchangeability
#: gate: service/policy/exchangeability.py).
DRIFT_P_VALUE = 1e-3
#: How far the watch's lower bound must pass α to count as above it (floating-point rounding).
BOUND_TOLERANCE = 1e-12


@dataclass(frozen=True)
class LiveStatus:
    n: int  # audited automatic answers in the window
    errors: int
    estimate: float  # errors / n (nan when n = 0)
    lower: float  # one-sided Clopper–Pearson lower bound at 1 − δ
    upper: float  # one-sided Clopper–Pearson upper bound at 1 − δ
    alarm: bool  # lower > α: the live error is shown to exceed α → fall back


def _status(n: int, k: int, alpha: float, delta: float, min_answers: int = 1) -> LiveStatus:
    if n == 0:
        return LiveStatus(0, 0, float("nan"), 0.0, 1.0, False)
    lo = clopper_pearson_lower(k, n, 1.0 - delta)
    up = clopper_pearson_upper(k, n, 1.0 - delta)
    # A bound EQUAL to α does not show the error above α: at 2 wrong of 2 and δ = 1% the
    # exact bound is √0.01 = 10%, which floating point gives as 0.10000000000000005 and
    # which fell back a 10% task in a replay. Above α means above it by more than rounding.
    shown_above = lo - alpha > BOUND_TOLERANCE
    return LiveStatus(n, k, k / n, lo, up, shown_above and n >= min_answers)


class LiveWatch:
    """Sliding-window exact test of the live error of audited automatic answers.

    Alarm when the one-sided Clopper–Pearson LOWER bound at 1 − δ over the last ``window``
    audited automatic answers exceeds α. It is checked after every arrival, so over a long run
    false alarms are far more frequent than δ: at a true error of 0.75α (α = 2–5%) about one
    fresh watch in eight falls back within its first 500 audited answers (small windows are
    noisy), and the median run to a false alarm is 7,000–13,000 audited answers
    (docs/policy.md, "How fast the live watch reacts"; scripts/watch_power.py). That errs on
    the side of the promise but is not free: a fallback sends all work to people until a
    version passes the next declared checkpoint or an admin re-activates one.

    Why not MAPIE 1.6 ``exchangeability_testing.RiskMonitoring``: it accumulates the whole
    history (no window, so it reacts slowly to a change after a long good period), uses an
    empirical-Bernstein confidence sequence that is much looser than the exact binomial bound
    for a 0/1 loss at α ≈ 0.02, and spends half its level on a reference threshold we do not
    need (the threshold is α itself).
    """

    def __init__(self, alpha: float, delta: float, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.alpha, self.delta, self.window = alpha, delta, window
        self._buf: deque[int] = deque(maxlen=window)
        self._k = 0

    def update(self, errors: Iterable[int | bool]) -> LiveStatus:
        """Append outcomes (1 = the automatic answer was wrong) in arrival order."""
        for e in errors:
            v = 1 if e else 0
            if len(self._buf) == self.window:
                self._k -= self._buf[0]
            self._buf.append(v)
            self._k += v
        return self.status()

    def status(self) -> LiveStatus:
        return _status(len(self._buf), self._k, self.alpha, self.delta)


def alarm_table(
    alpha: float, delta: float, window: int = DEFAULT_WINDOW, min_answers: int = 1
) -> np.ndarray:
    """Fewest errors that raise the alarm among n audited answers, for n = 0 … ``window``.

    Entry n is n + 1 when no count alarms. The alarm is monotone in the error count (the
    Clopper–Pearson bounds grow with k), so the watch's decision after any arrival is
    ``errors_in_window >= table[answers_in_window]``. Built from the watch's own rule, so a
    vectorised simulation (:func:`first_alarm`) measures exactly what :class:`LiveWatch` does.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    table = np.empty(window + 1, dtype=np.int64)
    table[0] = 1
    for n in range(1, window + 1):
        lo, hi = 0, n + 1  # binary search for the least alarming k in [0, n]; n + 1 = none
        while lo < hi:
            mid = (lo + hi) // 2
            if _status(n, mid, alpha, delta, min_answers).alarm:
                hi = mid
            else:
                lo = mid + 1
        table[n] = lo
    return table


def first_alarm(
    errors: np.ndarray,
    *,
    alpha: float,
    delta: float,
    window: int = DEFAULT_WINDOW,
    start: int = 0,
    min_answers: int = 1,
) -> np.ndarray:
    """When a watch checked after every arrival first alarms, for many streams at once.

    ``errors`` is a (streams × answers) 0/1 array of audited automatic answers in arrival order,
    the watch starting empty. Returns, per stream, the number of answers after which
    :class:`LiveWatch` first alarms, counting only alarms after the first ``start`` answers
    (those fill the window before a change); 0 when it never does within the array.
    """
    e = np.atleast_2d(np.asarray(errors)).astype(np.int32)
    if e.ndim != 2:
        raise ValueError("errors must be a (streams × answers) array")
    table = alarm_table(alpha, delta, window, min_answers)
    cum = np.zeros((e.shape[0], e.shape[1] + 1), dtype=np.int32)
    np.cumsum(e, axis=1, out=cum[:, 1:])
    t = np.arange(1, e.shape[1] + 1)
    k = cum[:, 1:] - cum[:, np.maximum(t - window, 0)]
    alarm = k >= table[np.minimum(t, window)]
    alarm[:, : max(start, 0)] = False
    hit = alarm.any(axis=1)
    return np.where(hit, alarm.argmax(axis=1) + 1, 0)


def live_error_alarm(
    errors: Sequence[int | bool] | np.ndarray,
    *,
    alpha: float,
    delta: float,
    window: int = DEFAULT_WINDOW,
    min_answers: int = 1,
) -> LiveStatus:
    """Status of the last ``window`` audited automatic answers (stateless form of LiveWatch).
    No alarm while fewer than ``min_answers`` answers are in (policy ``watch_min_answers``)."""
    arr = np.asarray(errors, dtype=int).ravel()[-window:]
    return _status(int(arr.size), int(arr.sum()), alpha, delta, min_answers)


def psi(
    reference_scores: Sequence[float] | np.ndarray,
    current_scores: Sequence[float] | np.ndarray,
    bins: int = 10,
) -> float:
    """Population stability index of the score distribution.

    Bins are quantiles of the reference (ties merged), each share floored at 1e-4 so empty
    bins do not give infinities: PSI = Σ (c − r) · ln(c / r). Above 0.2 is a warning.
    """
    return psi_test(reference_scores, current_scores, bins=bins)[0]


def psi_test(
    reference_scores: Sequence[float] | np.ndarray,
    current_scores: Sequence[float] | np.ndarray,
    *,
    reference_n: int | None = None,
    bins: int = 10,
) -> tuple[float, float]:
    """(PSI, chi-square p-value of homogeneity) over the reference's quantile bins.

    ``reference_scores`` may be a summary of a larger sample (the stored 200 quantiles of a
    version's held-out scores): ``reference_n`` is then that sample's size, used to turn
    the reference shares into counts; by default the summary's own length (fewer counts:
    rarer warnings).
    """
    ref = np.asarray(reference_scores, dtype=float).ravel()
    cur = np.asarray(current_scores, dtype=float).ravel()
    if ref.size == 0 or cur.size == 0:
        raise ValueError("psi needs non-empty reference and current samples")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    ref_counts = r / ref.size * (reference_n or ref.size)
    return counts_shift(ref_counts, c)


def counts_shift(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """(PSI, chi-square p-value) of two count vectors over the same bins."""
    ref_counts = np.asarray(ref_counts, dtype=float)
    cur_counts = np.asarray(cur_counts, dtype=float)
    rp = np.maximum(ref_counts / max(ref_counts.sum(), 1e-12), PSI_EPSILON)
    cp = np.maximum(cur_counts / max(cur_counts.sum(), 1e-12), PSI_EPSILON)
    value = float(np.sum((cp - rp) * np.log(cp / rp)))
    keep = (ref_counts + cur_counts) > 0
    table = np.vstack([ref_counts[keep], cur_counts[keep]])
    if table.shape[1] < 2 or table.sum(axis=1).min() <= 0:
        return value, 1.0
    from scipy import stats  # ~80 MB: loaded where a drift test runs, not at import

    return value, float(stats.chi2_contingency(table, correction=False).pvalue)


def drift_warning(
    reference_scores: Sequence[float] | np.ndarray,
    current_scores: Sequence[float] | np.ndarray,
    *,
    threshold: float = PSI_WARNING,
    bins: int = 10,
    min_sample: int = MIN_DRIFT_SAMPLE,
    reference_n: int | None = None,
    max_p: float = DRIFT_P_VALUE,
) -> bool:
    """Label-free early warning: PSI above 0.2 on at least ``min_sample`` current scores,
    *and* a chi-square test of homogeneity at p < ``max_p`` (PSI alone is biased upwards on
    small samples: about 9/n for 10 bins, so 100 scores from an unchanged stream sit at 0.09
    on average and cross 0.2 by chance; docs/policy.md, "Drift warning").

    A warning freezes widening and doubles the audit rate; it does not itself stop automation.
    """
    if len(current_scores) < min_sample or len(reference_scores) < min_sample:
        return False
    value, p_value = psi_test(reference_scores, current_scores, reference_n=reference_n, bins=bins)
    return value > threshold and p_value < max_p
