"""Threshold grid and Learn-then-Test fixed-sequence certification (docs/policy.md, §4.3, §4.7).

Score convention: a case is answered automatically when ``s >= τ``. A ledger or traffic case
that could never be automated (e.g. its suggested label is in ``never_automate``, or it belongs
to another per-label group) is passed with score ``-inf``: it then counts in the denominator
of coverage but never in a certified set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .bounds import min_cases_to_pass
from .params import Policy, label_is_automatable

#: The walk starts where at least this share of the ledger lies above τ₁ (docs/policy.md:
#: starting at the bare minimum drifts into the most extreme scores as the ledger grows).
START_LEDGER_SHARE = 0.25
DEFAULT_GRID_POINTS = 100

FloatArray = np.ndarray


def _as_scores(x: Sequence[float] | FloatArray) -> FloatArray:
    a = np.asarray(x, dtype=float).ravel()
    if np.any(np.isnan(a)):
        raise ValueError("scores must not be NaN (use -inf for never-automated cases)")
    return a


def _n_above(sorted_asc: FloatArray, thresholds: FloatArray) -> FloatArray:
    return sorted_asc.size - np.searchsorted(sorted_asc, thresholds, side="left")


def capped_threshold(
    recent_scores: Sequence[float] | FloatArray, max_coverage: float
) -> float | None:
    """Laxest threshold whose coverage of recent traffic is at most ``max_coverage``.

    None when the cap allows no automation at all. Put it first in the grid when the first
    testable grid point already exceeds the cap, so the capped threshold is itself tested.
    """
    s = _as_scores(recent_scores)
    s = np.sort(s[np.isfinite(s)])[::-1]
    total = _as_scores(recent_scores).size
    k = math.floor(max_coverage * total + 1e-9)
    k = min(k, s.size)
    if k <= 0:
        return None
    tau = float(s[k - 1])
    if int(np.sum(s >= tau)) > k:  # ties: step up to the next distinct score
        higher = s[s > tau]
        if higher.size == 0:
            return None
        tau = float(higher.min())
    return tau


def threshold_grid(
    recent_scores: Sequence[float] | FloatArray,
    ledger_scores: Sequence[float] | FloatArray,
    *,
    alpha: float,
    delta: float,
    n_points: int = DEFAULT_GRID_POINTS,
    max_coverage: float | None = None,
    start_share: float = START_LEDGER_SHARE,
) -> list[float]:
    """Grid τ₁ > τ₂ > … fixed before any ledger label is looked at.

    Points are quantiles of RECENT TRAFFIC scores at coverages 1/n_points, 2/n_points, …, 1
    (not of ledger labels). The walk starts at the first point with at least
    ``max(min_cases_to_pass(α, δ), 25% of the ledger)`` ledger cases above it: fewer can never
    pass, and the 25% floor keeps the walk out of the most extreme scores as the ledger grows.
    Only ledger *scores* are used, so the test stays valid. ``start_share=0`` lists every
    testable point, for a caller that picks the start itself without ledger labels (the
    readiness check, ``service.policy.readiness``).

    If ``max_coverage`` is given and the capped threshold is stricter than the first point but
    still testable (≥ min_cases_to_pass ledger cases), it is put first, so the widening cap
    never forces deploying an untested threshold.
    """
    recent = _as_scores(recent_scores)
    ledger = np.sort(_as_scores(ledger_scores))
    if recent.size == 0 or ledger.size == 0 or n_points < 1:
        return []
    desc = np.sort(recent)[::-1]
    cov = np.arange(1, n_points + 1) / n_points
    idx = np.ceil(cov * desc.size).astype(int) - 1
    taus = np.unique(desc[np.clip(idx, 0, desc.size - 1)])[::-1]
    taus = taus[np.isfinite(taus)]
    n_min = min_cases_to_pass(alpha, delta)
    n_finite = int(np.isfinite(ledger).sum())  # the group's own ledger when masked
    start_n = max(n_min, math.ceil(start_share * n_finite))
    grid = [float(t) for t in taus[_n_above(ledger, taus) >= start_n]]
    if max_coverage is not None:
        cap = capped_threshold(recent, max_coverage)
        if (
            cap is not None
            and (not grid or cap > grid[0])
            and int(_n_above(ledger, np.array([cap]))[0]) >= n_min
        ):
            grid.insert(0, cap)
    return grid


@dataclass(frozen=True)
class CertStep:
    """One grid point of the walk."""

    threshold: float
    n: int  # ledger cases with s >= τ
    k: int  # errors among them
    p_value: float  # BinomCDF(k; n, α)
    upper_bound: float  # one-sided Clopper–Pearson upper bound at 1 − δ
    coverage: float  # share of (coverage) traffic with s >= τ
    tested: bool  # False after the first failure: the walk never reached it
    accepted: bool


@dataclass(frozen=True)
class Certification:
    """Result of one certification attempt for one model version (or one label group)."""

    alpha: float
    delta: float
    n_ledger: int
    steps: tuple[CertStep, ...]
    threshold: float | None  # None: automate nothing
    upper_bound: float | None  # Clopper–Pearson upper bound at 1 − δ of the chosen τ
    coverage: float  # 0.0 when nothing is certified
    method: str = "ltt-fixed-sequence/binomial-exact (mapie.risk_control.control_fwer)"

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    @property
    def accepted_steps(self) -> tuple[CertStep, ...]:
        return tuple(s for s in self.steps if s.accepted)


def certify(
    ledger_scores: Sequence[float] | FloatArray,
    ledger_correct: Sequence[bool] | FloatArray,
    grid: Sequence[float],
    *,
    alpha: float,
    delta: float,
    coverage_scores: Sequence[float] | FloatArray | None = None,
) -> Certification:
    """Learn-then-Test with fixed-sequence testing along a strict→lax grid.

    For each τⱼ: nⱼ ledger cases with s ≥ τⱼ, kⱼ errors, pⱼ = BinomCDF(kⱼ; nⱼ, α) (exact
    p-value of H0: R(τⱼ) > α). Accept while pⱼ ≤ δ, stop at the first failure; τ̂ = the last
    accepted point. Every accepted τ has R(τ) ≤ α simultaneously with probability ≥ 1 − δ, so
    the widening cap may choose any of them. The FWER step uses MAPIE's
    ``control_fwer(..., fwer_method="fixed_sequence")``; its own LTT p-values
    (Hoeffding–Bentkus) are not used because the exact binomial p-value is valid and far tighter
    for a 0/1 loss. ``coverage`` is measured on ``coverage_scores`` (recent traffic) if given,
    otherwise on the ledger (itself a uniform traffic sample).

    The ledger must not contain cases the model was trained on.
    """
    scores = _as_scores(ledger_scores)
    correct = np.asarray(ledger_correct, dtype=bool).ravel()
    if scores.shape != correct.shape:
        raise ValueError("ledger_scores and ledger_correct must have equal length")
    if not (0.0 < alpha < 1.0 and 0.0 < delta < 1.0):
        raise ValueError("alpha and delta must be in (0, 1)")
    taus = np.asarray(list(grid), dtype=float)
    if taus.size > 1 and np.any(np.diff(taus) >= 0):
        raise ValueError("grid must be strictly decreasing (strict → lax)")
    cov_src = scores if coverage_scores is None else _as_scores(coverage_scores)
    if taus.size == 0:
        return Certification(alpha, delta, int(scores.size), (), None, None, 0.0)

    order = np.argsort(scores, kind="stable")
    s_sorted = scores[order]
    err_cum = np.concatenate([[0], np.cumsum(~correct[order][::-1])])  # errors in top-m
    n = _n_above(s_sorted, taus).astype(int)
    k = err_cum[n].astype(int)
    # MAPIE and scipy.stats (~170 MB with the scikit-learn they pull in) load where a
    # certification runs (the training job), never in a web process that only serves.
    from mapie.risk_control import control_fwer
    from scipy import stats

    p = np.where(n > 0, stats.binom.cdf(k, np.maximum(n, 1), alpha), 1.0)
    ub = np.where(k < n, stats.beta.ppf(1.0 - delta, k + 1, np.maximum(n - k, 1)), 1.0)
    cov_sorted = np.sort(cov_src)
    cov = _n_above(cov_sorted, taus) / max(cov_src.size, 1)

    rejected = control_fwer(p, delta, fwer_method="fixed_sequence")
    n_acc = len(rejected)
    # Fixed sequence with one start rejects a prefix; assert so a MAPIE change cannot slip by.
    if n_acc and not np.array_equal(np.asarray(rejected), np.arange(n_acc)):
        raise RuntimeError("fixed-sequence procedure returned a non-prefix rejection set")
    steps = tuple(
        CertStep(
            threshold=float(taus[j]),
            n=int(n[j]),
            k=int(k[j]),
            p_value=float(p[j]),
            upper_bound=float(ub[j]),
            coverage=float(cov[j]),
            tested=j <= n_acc,
            accepted=j < n_acc,
        )
        for j in range(taus.size)
    )
    if n_acc == 0:
        return Certification(alpha, delta, int(scores.size), steps, None, None, 0.0)
    best = steps[n_acc - 1]
    return Certification(
        alpha, delta, int(scores.size), steps, best.threshold, best.upper_bound, best.coverage
    )


# ----------------------------------------------------------------- why nothing was certified

#: The largest region size :func:`cases_to_pass` looks at; beyond it "more than this".
CASES_TO_PASS_LIMIT = 1_000_000


def cases_to_pass(error_rate: float, alpha: float, delta: float) -> int | None:
    """Fewest cases in a region that would pass the exact test at ``delta`` if their error
    rate stayed ``error_rate`` (errors = round(rate · n)). None when the rate is not below α
    (no number of cases passes) or when more than :data:`CASES_TO_PASS_LIMIT` would be needed.
    For people, not for a decision: the next attempt spends its own, smaller δ."""
    if not 0.0 <= error_rate < alpha:
        return None
    from scipy import stats

    start, chunk = 1, 65_536
    while start <= CASES_TO_PASS_LIMIT:
        n = np.arange(start, start + chunk)
        passed = np.flatnonzero(stats.binom.cdf(np.round(error_rate * n), n, alpha) <= delta)
        if passed.size:
            return int(n[passed[0]])
        start += chunk
    return None


@dataclass(frozen=True)
class Shortfall:
    """Why an attempt certified nothing, in numbers people can act on: the walk stops at its
    first failed region, so that region (its share of traffic, its errors among the audited
    cases in it, its bound) and the audited cases it would need at the same error rate."""

    coverage: float
    n: int
    errors: int
    upper_bound: float
    alpha: float
    delta: float
    ledger_cases: int  # the group's ledger cases at the attempt
    cases_needed: int | None  # in the region, at the same error rate; None: rate ≥ α

    @property
    def ledger_needed(self) -> int | None:
        """Audited cases in all for that many in the region (its share of the ledger kept)."""
        if self.cases_needed is None or self.n == 0:
            return None
        return math.ceil(self.cases_needed * self.ledger_cases / self.n)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "coverage": self.coverage,
            "n": self.n,
            "errors": self.errors,
            "upper_bound": self.upper_bound,
            "alpha": self.alpha,
            "delta": self.delta,
            "ledger_cases": self.ledger_cases,
            "cases_needed": self.cases_needed,
            "ledger_needed": self.ledger_needed,
        }

    def sentence(self) -> str:
        """One sentence for the dashboard and the backtest report (kept under 240 chars)."""
        rate = self.errors / self.n if self.n else 0.0
        said = (
            f"the most confident {self.coverage:.0%} of traffic had {self.errors} wrong of "
            f"{self.n} audited ({rate:.1%})"
        )
        if rate >= self.alpha:
            return f"{said}, not under the target {self.alpha:.1%}: a better model is needed"
        needed = self.ledger_needed
        more = (
            f"about {needed:,} audited cases in all would pass at that rate"
            if needed is not None
            else f"more than {CASES_TO_PASS_LIMIT:,} audited cases would be needed at that rate"
        )
        return f"{said}, bound {self.upper_bound:.1%} > target {self.alpha:.1%}; {more}"


def shortfall(cert: Certification, ledger_cases: int | None = None) -> Shortfall | None:
    """Why ``cert`` certified nothing (None when it certified, or tested no region: an empty
    grid means no region had enough ledger cases to ever pass)."""
    if cert.certified or not cert.steps:
        return None
    first = cert.steps[0]
    rate = first.k / first.n if first.n else 1.0
    return Shortfall(
        coverage=first.coverage,
        n=first.n,
        errors=first.k,
        upper_bound=first.upper_bound,
        alpha=cert.alpha,
        delta=cert.delta,
        ledger_cases=cert.n_ledger if ledger_cases is None else ledger_cases,
        cases_needed=cases_to_pass(rate, cert.alpha, cert.delta),
    )


# --------------------------------------------------------------------------- per-label targets

REST = "*"  # group key for automatable labels without their own target


@dataclass(frozen=True)
class LabelCertification:
    """Per-group certifications: one per label with a target, one (``REST``) for the others.

    Each group gets δ / (number of groups); by the union bound all groups hold together with
    probability ≥ 1 − δ. Per-label targets are capped at the task α, so the mixture of all
    automatic answers also stays within α.
    """

    groups: dict[str, Certification] = field(default_factory=dict)
    never_automate: tuple[str, ...] = ()

    def group_of(self, label: str) -> str:
        return label if label in self.groups and label != REST else REST

    def threshold_for(self, label: str) -> float | None:
        """Threshold the router applies to a case whose suggested label is ``label``."""
        if label in self.never_automate:
            return None
        cert = self.groups.get(self.group_of(label))
        return None if cert is None else cert.threshold

    @property
    def coverage(self) -> float:
        """Share of traffic automated (groups are disjoint, so coverages add)."""
        return float(sum(c.coverage for c in self.groups.values()))

    @property
    def certified(self) -> bool:
        return any(c.certified for c in self.groups.values())


def split_delta(policy: Policy, labels: Sequence[str], delta: float) -> dict[str, float]:
    """δ per certification group: labels with a target each, plus REST if any label remains."""
    keys = label_groups(policy, labels)
    return {g: delta / len(keys) for g in keys} if keys else {}


def label_groups(policy: Policy, labels: Sequence[str]) -> list[str]:
    """Certification groups for a label set (never-automated labels form no group)."""
    auto = [lab for lab in labels if label_is_automatable(policy, lab)]
    targeted = sorted(lab for lab in auto if lab in policy.label_targets)
    rest = [lab for lab in auto if lab not in policy.label_targets]
    return targeted + ([REST] if rest else [])


def certify_by_label(
    ledger_scores: Sequence[float] | FloatArray,
    ledger_correct: Sequence[bool] | FloatArray,
    ledger_labels: Sequence[str],
    recent_scores: Sequence[float] | FloatArray,
    recent_labels: Sequence[str],
    *,
    policy: Policy,
    labels: Sequence[str],
    delta: float,
    n_points: int = DEFAULT_GRID_POINTS,
) -> LabelCertification:
    """Certify each label group separately (docs/policy.md).

    ``*_labels`` are the model's suggested labels. Cases outside a group (or suggesting a
    never-automated label) get score −inf for that group, so they never enter its certified set
    but still count in the coverage denominator. Without ``label_targets`` this is a single
    REST group with the full δ, i.e. plain :func:`certify` on the automatable cases.
    """
    ls, rs = _as_scores(ledger_scores), _as_scores(recent_scores)
    ll, rl = np.asarray(ledger_labels, dtype=object), np.asarray(recent_labels, dtype=object)
    if ll.shape != ls.shape or rl.shape != rs.shape:
        raise ValueError("labels and scores must have equal length")
    groups = label_groups(policy, labels)
    deltas = split_delta(policy, labels, delta)
    targeted = [g for g in groups if g != REST]
    out: dict[str, Certification] = {}
    for g in groups:
        if g == REST:
            blocked = set(policy.never_automate) | set(targeted)
            lmask = np.array([lab not in blocked for lab in ll], dtype=bool)
            rmask = np.array([lab not in blocked for lab in rl], dtype=bool)
        else:
            lmask, rmask = ll == g, rl == g
        a = policy.label_alpha(g) if g != REST else policy.certification_alpha
        lg = np.where(lmask, ls, -np.inf)
        rg = np.where(rmask, rs, -np.inf)
        grid = threshold_grid(rg, lg, alpha=a, delta=deltas[g], n_points=n_points)
        out[g] = certify(lg, ledger_correct, grid, alpha=a, delta=deltas[g], coverage_scores=rg)
    return LabelCertification(out, policy.never_automate)
