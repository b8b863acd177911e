"""δ indices across ledger epochs, and the label-free exchangeability gate (docs/policy.md)."""

from __future__ import annotations

import numpy as np
import pytest

from service.policy import (
    checkpoint_delta,
    checkpoint_schedule,
    due_attempt,
    traffic_matches_ledger,
)

ALPHA, DELTA = 0.02, 0.05


def test_every_attempt_takes_the_next_delta_index_whatever_its_step():
    sizes = [cp.ledger_size for cp in checkpoint_schedule(ALPHA, DELTA)]
    for n in (100, 366, 700, 1500, 5000):
        for last in (None, 1, 2):
            due = due_attempt(n, alpha=ALPHA, delta=DELTA, last_index=last, last_epoch_step=last)
            expected_step = max((j + 1 for j, s in enumerate(sizes) if s <= n), default=0)
            if expected_step <= (last or 0):
                assert due is None
                continue
            assert due is not None
            assert (due.index, due.epoch_step) == ((last or 0) + 1, expected_step)
            assert due.delta == pytest.approx(checkpoint_delta((last or 0) + 1, DELTA))


def test_a_new_epoch_restarts_ledger_sizes_but_never_reuses_a_delta_index():
    sizes = [cp.ledger_size for cp in checkpoint_schedule(ALPHA, DELTA)]
    # three attempts used in the first epoch; a fallback starts a new one
    first = due_attempt(sizes[0], alpha=ALPHA, delta=DELTA, last_index=3, last_epoch_step=None)
    assert first is not None
    assert (first.index, first.epoch_step, first.ledger_size) == (4, 1, sizes[0])
    assert first.delta == pytest.approx(checkpoint_delta(4, DELTA))
    # jumping over a step costs nothing: the next attempt takes the next index
    jump = due_attempt(sizes[2], alpha=ALPHA, delta=DELTA, last_index=4, last_epoch_step=1)
    assert jump is not None and (jump.index, jump.epoch_step) == (5, 3)
    assert (
        due_attempt(sizes[0] - 1, alpha=ALPHA, delta=DELTA, last_index=3, last_epoch_step=None)
        is None
    )


def test_delta_spent_over_any_sequence_of_epochs_stays_within_budget():
    rng = np.random.default_rng(3)
    sizes = [cp.ledger_size for cp in checkpoint_schedule(ALPHA, DELTA)][:8]
    for _ in range(200):
        last_index, spent, used = None, 0.0, set()
        for _epoch in range(int(rng.integers(1, 5))):
            step = None
            for n in sorted(rng.choice(sizes, size=3)):
                due = due_attempt(
                    int(n), alpha=ALPHA, delta=DELTA, last_index=last_index, last_epoch_step=step
                )
                if due is None:
                    continue
                assert due.index not in used
                used.add(due.index)
                spent += due.delta
                last_index, step = due.index, due.epoch_step
        assert spent <= DELTA + 1e-12


def test_exchangeable_traffic_passes_even_with_many_classes():
    rng = np.random.default_rng(0)
    labels = [chr(65 + i) for i in range(26)]
    refused = 0
    for _ in range(200):
        check = traffic_matches_ledger(
            rng.random(600),
            list(rng.choice(labels, 600)),
            current_scores=rng.random(300),
            current_pred=list(rng.choice(labels, 300)),
        )
        assert check.checked
        refused += not check.exchangeable
    assert refused <= 2  # p < 0.001 per test: at most a rare false refusal


def test_a_turning_stream_is_refused_on_labels_or_scores():
    rng = np.random.default_rng(1)
    ledger_pred = ["a"] * 570 + ["b"] * 30
    current_pred = ["a"] * 213 + ["b"] * 87  # the class turned 87 cases ago
    turned = traffic_matches_ledger(
        rng.random(600), ledger_pred, current_scores=rng.random(300), current_pred=current_pred
    )
    assert turned.checked and not turned.exchangeable
    assert turned.label_psi is not None and turned.label_psi > 0.2
    scores = traffic_matches_ledger(
        rng.beta(5, 1, 600),
        ["a"] * 600,
        current_scores=rng.beta(1, 5, 300),
        current_pred=["a"] * 300,
    )
    assert not scores.exchangeable and scores.score_psi is not None and scores.score_psi > 0.2


def test_too_few_current_cases_cannot_refuse():
    check = traffic_matches_ledger(
        np.ones(600), ["a"] * 600, current_scores=np.zeros(50), current_pred=["b"] * 50
    )
    assert not check.checked and check.exchangeable
