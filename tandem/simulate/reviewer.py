"""The simulated reviewer: answers from the label column, wrong at a chosen rate.

Deterministic per (seed, row): a row's answer does not depend on the order rows arrive in or
on how many other rows were reviewed, so two policies replayed on the same seed see the same
reviewer. A wrong answer is a uniformly chosen OTHER label (never the truth).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SimulatedReviewer:
    def __init__(
        self, truth: Sequence[str], labels: Sequence[str], error_rate: float, seed: int
    ) -> None:
        if not 0.0 <= error_rate < 1.0:
            raise ValueError(f"reviewer error rate must be in [0, 1), got {error_rate}")
        if len(labels) < 2:
            raise ValueError("need at least two labels")
        self.truth = list(truth)
        self.labels = list(labels)
        self.error_rate = float(error_rate)
        rng = np.random.default_rng([int(seed), 0x5EED])
        draws = rng.random(len(self.truth))
        picks = rng.integers(0, len(self.labels) - 1, size=len(self.truth))
        self._wrong = draws < self.error_rate
        self._pick = picks
        self.answered = 0
        self.wrong_answers = 0

    def answer(self, row: int) -> str:
        """The reviewer's label for dataset row ``row`` (counts what it answered)."""
        true = self.truth[row]
        self.answered += 1
        if not self._wrong[row]:
            return true
        others = [x for x in self.labels if x != true]
        self.wrong_answers += 1
        return others[int(self._pick[row]) % len(others)]
