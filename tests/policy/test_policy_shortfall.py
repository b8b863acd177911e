"""Why an attempt certified nothing, in numbers (docs/policy.md, "Why nothing is certified"):
the walk's first region, its errors and bound, and the audited cases that would pass at the
same error rate. The count is checked against a brute-force search of the exact test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.policy import (
    cases_to_pass,
    certify,
    min_cases_to_pass,
    shortfall,
    threshold_grid,
)


def _brute_force(rate: float, alpha: float, delta: float, limit: int = 20_000) -> int | None:
    for n in range(1, limit):
        if stats.binom.cdf(round(rate * n), n, alpha) <= delta:
            return n
    return None


@pytest.mark.parametrize(
    ("rate", "alpha", "delta"),
    [(0.0, 0.02, 0.05), (0.024, 0.05, 0.0125), (0.07, 0.10, 0.025), (0.01, 0.02, 0.003)],
)
def test_cases_to_pass_is_the_fewest_that_pass(rate: float, alpha: float, delta: float) -> None:
    assert cases_to_pass(rate, alpha, delta) == _brute_force(rate, alpha, delta)


def test_no_count_passes_at_or_above_the_target() -> None:
    assert cases_to_pass(0.05, 0.05, 0.05) is None
    assert cases_to_pass(0.08, 0.05, 0.05) is None
    assert cases_to_pass(0.0, 0.02, 0.05) == min_cases_to_pass(0.02, 0.05)


def _failed_certification(errors_on_top: int, n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.sort(0.5 + 0.5 * rng.random(n))[::-1]
    correct = np.ones(n, dtype=bool)
    correct[np.linspace(0, 149, errors_on_top, dtype=int)] = False  # errors in the top 150
    grid = threshold_grid(scores, scores, alpha=0.05, delta=0.0125)
    return certify(scores, correct, grid, alpha=0.05, delta=0.0125), scores, correct


def test_the_shortfall_is_the_walks_first_region() -> None:
    cert, scores, _correct = _failed_certification(errors_on_top=4)
    assert not cert.certified
    first = cert.steps[0]
    missed = shortfall(cert)
    assert missed is not None
    assert (missed.n, missed.errors, missed.coverage) == (first.n, first.k, first.coverage)
    assert missed.upper_bound == pytest.approx(first.upper_bound) and first.upper_bound > 0.05
    # at the region's own error rate, the count that passes is the brute-force one, and the
    # audited cases in all keep the region's share of the ledger
    rate = first.k / first.n
    assert missed.cases_needed == _brute_force(rate, 0.05, 0.0125)
    assert missed.ledger_needed == int(np.ceil(missed.cases_needed * scores.size / first.n))
    said = missed.sentence()
    assert f"had {first.k} wrong of {first.n} audited" in said
    assert f"about {missed.ledger_needed:,} audited cases in all" in said
    assert len(said) < 240


def test_a_region_at_or_above_the_target_needs_a_better_model() -> None:
    cert, _scores, _correct = _failed_certification(errors_on_top=60)
    missed = shortfall(cert)
    assert missed is not None and missed.cases_needed is None and missed.ledger_needed is None
    assert "a better model is needed" in missed.sentence()


def test_a_certified_attempt_has_no_shortfall() -> None:
    cert, _scores, _correct = _failed_certification(errors_on_top=0)
    assert cert.certified and shortfall(cert) is None
