"""The simulated reviewer: wrong at the chosen rate, deterministic per seed."""

from __future__ import annotations

import pytest

from tandem.simulate.reviewer import SimulatedReviewer

LABELS = ["a", "b", "c"]


def _truth(n: int) -> list[str]:
    return [LABELS[i % 3] for i in range(n)]


def test_error_rate_is_respected_and_wrong_answers_are_never_the_truth() -> None:
    truth = _truth(20_000)
    r = SimulatedReviewer(truth, LABELS, 0.1, seed=7)
    answers = [r.answer(i) for i in range(len(truth))]
    wrong = [a != t for a, t in zip(answers, truth, strict=True)]
    rate = sum(wrong) / len(wrong)
    assert 0.09 < rate < 0.11  # 5 standard errors either side
    assert r.wrong_answers == sum(wrong) and r.answered == len(truth)
    assert all(a in LABELS for a in answers)
    # wrong answers spread over the other labels
    other = {a for a, t, w in zip(answers, truth, wrong, strict=True) if w and t == "a"}
    assert other == {"b", "c"}


def test_deterministic_per_seed_and_independent_of_order() -> None:
    truth = _truth(2_000)
    a = SimulatedReviewer(truth, LABELS, 0.3, seed=1)
    b = SimulatedReviewer(truth, LABELS, 0.3, seed=1)
    forward = [a.answer(i) for i in range(2_000)]
    backward = [b.answer(i) for i in reversed(range(2_000))][::-1]
    assert forward == backward
    c = SimulatedReviewer(truth, LABELS, 0.3, seed=2)
    assert [c.answer(i) for i in range(2_000)] != forward


def test_zero_error_is_the_label_column() -> None:
    truth = _truth(500)
    r = SimulatedReviewer(truth, LABELS, 0.0, seed=3)
    assert [r.answer(i) for i in range(500)] == truth


def test_invalid_rates() -> None:
    with pytest.raises(ValueError):
        SimulatedReviewer(["a"], LABELS, 1.0, seed=0)
    with pytest.raises(ValueError):
        SimulatedReviewer(["a"], ["a"], 0.1, seed=0)
