"""Per-task automation policy parameters (docs/policy.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: The live watch's window of audited automatic answers (service/policy/monitor.py).
DEFAULT_WATCH_WINDOW = 300
#: The live watch's confidence for tasks created from now on (docs/policy.md, "The watch's own
#: confidence"): at the certification's 95% it falls back falsely on about one new version in
#: eight within 500 audited answers. Tasks stored without the setting keep following their
#: ``confidence`` (``Policy.watch_confidence`` None): nothing changes under a running task.
NEW_TASK_WATCH_CONFIDENCE = 0.99


@dataclass(frozen=True)
class Policy:
    """The automation policy of one task.

    Defaults are the documented values (docs/policy.md, "Technical reference").
    ``certification_margin`` lets a user who needs realised error under α over short windows
    certify at α' = α − margin (docs/policy.md, "What the promise is not").
    Instances are immutable; ``label_targets`` is a plain dict, so a Policy is not hashable.
    """

    target_error: float = 0.02
    confidence: float = 0.95
    audit_rate: float = 0.05
    min_labels: int = 200
    max_coverage_step: float = 0.10
    retrain_every: int = 100
    never_automate: tuple[str, ...] = ()
    label_targets: dict[str, float] = field(default_factory=dict)
    cold_start_audit_rate: float = 0.3
    certification_margin: float = 0.0
    #: Share of audited cases that need a second, independent blind reviewer (docs/review.md,
    #: "A second blind review"): their agreement measures how reliable the ledger's labels are.
    second_review_rate: float = 0.0
    #: The live watch cannot fall back before a version has this many audited automatic
    #: answers (docs/policy.md, "How fast the live watch reacts"): on a fresh watch two wrong
    #: answers out of two already "prove" an error above a 10% target, a false alarm that
    #: costs all automation until a new certification.
    watch_min_answers: int = 1
    #: Confidence of the live watch's test (docs/policy.md, "Live watch"); None = the task's
    #: ``confidence``. The watch re-tests after every audited answer, so at the certification's
    #: own level it falls back falsely far more often than δ: a stricter level buys fewer false
    #: fallbacks for a slower reaction to a version that really is worse than promised.
    watch_confidence: float | None = None

    def __post_init__(self) -> None:
        # Normalise containers so callers may pass lists / any mapping.
        object.__setattr__(self, "never_automate", tuple(str(x) for x in self.never_automate))
        object.__setattr__(
            self, "label_targets", {str(k): float(v) for k, v in dict(self.label_targets).items()}
        )
        self._validate()

    def _validate(self) -> None:
        def unit_open(name: str, v: float) -> None:
            if not (0.0 < v < 1.0) or math.isnan(v):
                raise ValueError(f"{name} must be in (0, 1), got {v!r}")

        unit_open("target_error", self.target_error)
        unit_open("confidence", self.confidence)
        for name in ("audit_rate", "cold_start_audit_rate", "max_coverage_step"):
            v = getattr(self, name)
            if not (0.0 < v <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {v!r}")
        if not 1 <= self.watch_min_answers <= DEFAULT_WATCH_WINDOW:
            raise ValueError(
                f"watch_min_answers must be in [1, {DEFAULT_WATCH_WINDOW}], "
                f"got {self.watch_min_answers!r}"
            )
        if self.watch_confidence is not None and not (0.5 <= self.watch_confidence < 1.0):
            raise ValueError(
                f"watch_confidence must be in [0.5, 1) or unset, got {self.watch_confidence!r}"
            )
        if self.min_labels < 0 or self.retrain_every < 1:
            raise ValueError("min_labels must be >= 0 and retrain_every >= 1")
        if not (0.0 <= self.second_review_rate <= 1.0):  # also refuses NaN
            raise ValueError(f"second_review_rate must be in [0, 1], got {self.second_review_rate}")
        if not (0.0 <= self.certification_margin < self.target_error):
            raise ValueError("certification_margin must be in [0, target_error)")
        for label, a in self.label_targets.items():
            unit_open(f"label_targets[{label!r}]", a)

    @property
    def delta(self) -> float:
        """Allowed failure probability δ = 1 − confidence."""
        return 1.0 - self.confidence

    @property
    def watch_delta(self) -> float:
        """Level of the live watch's test: 1 − ``watch_confidence`` (default: δ)."""
        if self.watch_confidence is None:
            return self.delta
        return 1.0 - self.watch_confidence

    @property
    def certification_alpha(self) -> float:
        """The α actually tested: target_error minus the optional margin."""
        return self.target_error - self.certification_margin

    def label_alpha(self, label: str) -> float:
        """Certification target for automatic answers of ``label``.

        Per-label targets can only tighten the task target: otherwise the mixture of labels
        could exceed α and break the task-level promise.
        """
        return min(
            self.label_targets.get(label, self.certification_alpha), self.certification_alpha
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Policy:
        """Build from stored JSON; missing keys take defaults, unknown keys are ignored."""
        if not d:
            return cls()
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        if "never_automate" in kwargs:
            kwargs["never_automate"] = tuple(kwargs["never_automate"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (tuple → list)."""
        out = asdict(self)
        out["never_automate"] = list(self.never_automate)
        return out


#: Rates a task refuses at 1 (every case audited, none trains the model): ``learning_blockers``.
RATES_BELOW_ONE = ("cold_start_audit_rate", "audit_rate")


def learning_blockers(policy: Policy) -> dict[str, str]:
    """Settings under which the task could never train a model, by field, with the reason.

    Training reads only labelled cases NOT drawn for the audit sample (docs/learning.md), and
    while nothing is automated every case is drawn at max(audit_rate, cold_start_audit_rate)
    (:func:`service.policy.audit_sample.effective_audit_rate`). At a rate of 1 every case is
    audited, no case is ever training data, no model is trained and nothing is ever automated.
    A rate just below 1 still leaves a share for training (slowly), so only 1 itself is refused.
    Kept apart from ``_validate``: tasks stored before this rule must still load.
    """
    found: dict[str, str] = {}
    why = (
        "every case would be drawn for the audit sample while nothing is automated, and "
        "audited cases are never training data: the task could never train a model"
    )
    if policy.cold_start_audit_rate >= 1.0:
        found["cold_start_audit_rate"] = (
            f"{policy.cold_start_audit_rate:g} is too high: {why}. Use a value below 1 "
            "(default 0.3; docs/tasks.md)."
        )
    if policy.audit_rate >= 1.0:
        found["audit_rate"] = (
            f"{policy.audit_rate:g} is too high: every case would be drawn for the audit "
            "sample, and audited cases are never training data: the task could never train "
            "a model. Use a value below 1 (default 0.05; docs/tasks.md)."
        )
    return found


def label_is_automatable(policy: Policy, label: str) -> bool:
    """False for labels the task never decides alone (route reason ``policy``, docs/policy.md)."""
    return label not in policy.never_automate
