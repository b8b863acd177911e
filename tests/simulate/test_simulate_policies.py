"""Reference policies, the oracle and the true error of deployed rules on constructed data."""

from __future__ import annotations

import numpy as np

from tandem.simulate import policies as pol

SCORES = np.array([0.95, 0.9, 0.8, 0.6, 0.97, 0.85, 0.92, 0.5])
CORRECT = np.array([True, True, False, True, True, True, False, True])


def test_lowest_threshold_within_known_answers() -> None:
    s = [0.99, 0.95, 0.9, 0.8, 0.7]
    c = [True, True, True, False, True]
    assert pol.lowest_threshold_within(s, c, 0.2) == 0.7  # 1 error in 5
    assert pol.lowest_threshold_within(s, c, 0.1) == 0.9  # 1 error in 4 is too many
    assert pol.lowest_threshold_within(s, [False] * 5, 0.1) is None
    assert pol.lowest_threshold_within([], [], 0.1) is None
    assert pol.lowest_threshold_within([np.nan, 0.9], [False, True], 0.0) == 0.9


def test_ties_are_never_split() -> None:
    s, c = [0.9, 0.9, 0.8], [True, False, True]
    assert pol.lowest_threshold_within(s, c, 0.3) is None  # 1/2 at 0.9, 1/3 at 0.8
    assert pol.lowest_threshold_within(s, c, 0.34) == 0.8


def _stream(trained_rows: tuple[int, ...] = ()) -> tuple[pol.Stream, dict[int, pol.VersionScores]]:
    truth = np.array(["y"] * 8, dtype=object)
    pred = np.where(CORRECT, "y", "n").astype(object)
    stream = pol.Stream(
        rows=np.arange(8),
        chunk=np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        version=np.ones(8, dtype=np.int64),
        score=SCORES.copy(),
        pred=pred,
        truth=truth,
        human=np.array(["y"] * 4 + [None] * 4, dtype=object),
        labelled_chunk=np.array([0, 0, 0, 0, -1, -1, -1, -1]),
        auto=np.array([False] * 4 + [True, False, True, False]),
        chunk_rules=[
            {"version": 1, "state": "manual", "threshold": None},
            {"version": 1, "state": "automating", "threshold": 0.9, "label_thresholds": {}},
        ],
    )
    trained = np.zeros(8, dtype=bool)
    trained[list(trained_rows)] = True
    versions = {1: pol.VersionScores(scores=SCORES.copy(), pred=pred.copy(), trained=trained)}
    return stream, versions


def test_fixed_policy() -> None:
    stream, _ = _stream()
    run = pol.fixed_policy(stream)
    assert run.auto.tolist() == [True, True, False, False, True, False, True, False]
    assert run.rules == [(1, 0.9, {})] and run.labels_spent == 4


def test_naive_uses_only_labels_seen_before_the_chunk_and_not_trained_on() -> None:
    stream, versions = _stream()
    run = pol.naive_policy(stream, versions, 0.1)
    # chunk 0: no labels yet -> nothing automated; chunk 1: rows 0-3 say tau = 0.9
    assert run.auto.tolist() == [False] * 4 + [True, False, True, False]
    assert run.rules == [(1, 0.9, {})]
    stream, versions = _stream(trained_rows=(1,))
    run = pol.naive_policy(stream, versions, 0.1)
    # row 1 (0.9, correct) is training data: the evidence left says tau = 0.95
    assert run.auto.tolist() == [False] * 4 + [True, False, False, False]


def test_oracle_whole_stream_and_final_quarter() -> None:
    stream, _ = _stream()
    run, tau, tau_fq = pol.oracle_policy(stream, 0.2)
    # sorted: .97 .95 .92x .9 .85 .8x .6 .5 -> 1 error in 5 at 0.85
    assert tau == 0.85
    assert run.auto.tolist() == [s >= 0.85 for s in SCORES]
    assert tau_fq is None  # last two arrivals: 0.92 wrong, 0.5 right -> 50% at best
    assert pol.quarter_automation(stream, tau_fq) == 0.0
    assert pol.oracle_policy(stream, 0.25)[1] == 0.5


def test_true_error_counts_only_rows_not_trained_on() -> None:
    _, versions = _stream(trained_rows=(2,))
    truth = np.array(["y"] * 8, dtype=object)
    te = pol.true_error(versions[1], truth, 0.8)
    # rows >= 0.8 not trained: .95 .9 .97 .85 .92x -> 1 error in 5
    assert te["auto_rows"] == 5 and te["errors"] == 1 and te["true_error"] == 0.2
    per_label = pol.true_error(versions[1], truth, 0.8, {"n": 0.99})
    assert per_label["errors"] == 0 and per_label["auto_rows"] == 4
    assert pol.true_error(versions[1], truth, None)["true_error"] is None


def test_evaluate_flags_realised_and_deployed_breaches() -> None:
    stream, versions = _stream()
    run = pol.tandem_policy(stream, labels_spent=4)
    assert run.rules == [(1, 0.9, {})]
    m = pol.evaluate(run, stream, versions, 0.1, 0.95, oracle_quarter=0.5)
    # Tandem automated 0.97 (right) and 0.92 (wrong): 50% realised error
    assert m["auto_answers"] == 2 and m["auto_errors"] == 1 and m["realised_exceeded"]
    # rule (v1, 0.9) on all 8 rows: .95 .9 .97 .92x -> 25% true error
    assert m["deployed_true_error_max"] == 0.25 and m["deployed_exceeded"]
    assert m["final_quarter_automation"] == 0.5 and m["final_quarter_share_of_oracle"] == 1.0
    lo, hi = m["realised_error_interval"]
    assert lo < 0.5 < hi
    safe = pol.evaluate(run, stream, versions, 0.5, 0.95)
    assert not safe["realised_exceeded"] and not safe["deployed_exceeded"]


def test_rolling_and_cumulative_helpers() -> None:
    flags = np.array([1, 0, 1, 1], dtype=bool)
    assert pol.rolling_rate(flags, 2).tolist() == [1.0, 0.5, 0.5, 1.0]
    err = pol.cumulative_error(np.array([False, True, True]), np.array([True, True, False]))
    assert np.isnan(err[0]) and err[1:].tolist() == [1.0, 0.5]
