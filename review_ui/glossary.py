"""Plain-language names for the dashboard's terms (issue #19): each term has a label, a
sentence shown as its tooltip, and a section of the help page (``/help#<key>``) that says more
and names the document with the whole story. Templates use the ``term`` macro in
``_glossary.html``; dashboard.js gets the same entries through its config."""

from __future__ import annotations

from typing import Any

#: key -> (label, one plain sentence, longer explanation, document)
TERMS: dict[str, tuple[str, str, str, str]] = {
    "automation": (
        "Automation rate",
        "Share of cases the model answered on its own, without a person.",
        "Cases whose suggestion is confident enough (above the threshold τ of a certified "
        "model) are answered automatically; every other case waits for a person.",
        "docs/stats.md",
    ),
    "threshold": (
        "Confidence threshold (τ)",
        "The model answers on its own only when its confidence is at least this value.",
        "τ (tau) is chosen by certification so that the error of automatic answers stays "
        "under the target error α. A higher τ automates fewer cases, more safely.",
        "docs/policy.md",
    ),
    "target_error": (
        "Target error (α)",
        "The largest share of wrong automatic answers this task accepts.",
        "α (alpha) is set by an admin on the policy page. Tandem automates a region only once "
        "audits show, with the task's confidence, that its error is under α.",
        "docs/policy.md",
    ),
    "live_error": (
        "Live error",
        "Estimated share of wrong automatic answers, measured on randomly audited cases.",
        "A random sample of automatic answers is reviewed blind by people; their verdicts "
        "estimate the error of all automatic answers. Above α means the promise is at risk.",
        "docs/stats.md",
    ),
    "fallback": (
        "Fallback",
        "Automation was switched off after an alarm; people decide every case for now.",
        "When audited automatic answers show an error above α, or the suggested labels shift, "
        "automation stops at once. It resumes only after a model passes a new certification "
        "on fresh audits.",
        "docs/policy.md",
    ),
    "psi": (
        "Drift (PSI)",
        "How much recent data differs from the data the model was trained on.",
        "The population stability index compares two distributions: under 0.1 is stable, "
        "0.1–0.25 a moderate change, above 0.25 a large one. Drift pauses widening of "
        "automation; it does not need any label.",
        "docs/stats.md",
    ),
    "override_rate": (
        "Override rate",
        "How often people chose another label than the model suggested.",
        "Measured on every case people decided by design (routed to them or audited), "
        "weighted so that it describes all traffic.",
        "docs/stats.md",
    ),
    "audit": (
        "Audit sample",
        "Cases drawn at random for a person to check, even when the model answered.",
        "The draw ignores the model's score, so audited cases are a fair sample of traffic: "
        "they prove and watch the error of automatic answers. Reviewers do not see which "
        "cases are audits.",
        "docs/policy.md",
    ),
    "coverage": (
        "Coverage",
        "Share of traffic the certified model may answer on its own.",
        "Certification proves the error of the most confident share of traffic; widening "
        "is limited per step.",
        "docs/policy.md",
    ),
    "confidence": (
        "Confidence (1 − δ)",
        "How sure Tandem must be that the error is under α before it automates.",
        "0.95 means a 5% risk that a certified region is in fact worse than α.",
        "docs/policy.md",
    ),
    "min_labels": (
        "Labels before the first model",
        "How many human decisions the task collects before it trains its first model.",
        "Until then every case goes to a person and nothing is suggested. Fewer labels give "
        "a first model sooner, usually a weaker one; automation still needs certification.",
        "docs/learning.md",
    ),
    "retrain_every": (
        "Retrain every N labels",
        "A new model is trained after this many new human decisions.",
        "Each new model is compared with the running one on the same held-out cases and "
        "must pass its own certification before it may answer anything on its own.",
        "docs/learning.md",
    ),
    "second_review": (
        "Second blind review",
        "Share of audited cases that a second reviewer decides without seeing the first.",
        "How often two people agree measures how reliable the labels are that prove the "
        "error of automatic answers. 0 turns it off.",
        "docs/review.md",
    ),
    "live_watch": (
        "Live watch",
        "Turns automation off when audited automatic answers show an error above α.",
        "After every audited automatic answer Tandem tests the latest 300 of them. It may "
        "fall back only once the running model has the set number of audited answers, and "
        "only when the error is shown above α at the watch's confidence (empty: the task's "
        "confidence). Waiting longer or a higher confidence means fewer false fallbacks "
        "and a slower reaction to a model that really is worse than promised.",
        "docs/policy.md",
    ),
}

#: Automation states in words.
STATE_TEXT = {
    "manual": "Manual: people decide every case",
    "automating": "Automating",
    "fallback": "Fallback: people decide every case",
}


def entries() -> dict[str, dict[str, Any]]:
    """The glossary as plain data (templates, the dashboard's config)."""
    return {
        key: {"label": label, "title": title, "more": more, "doc": doc}
        for key, (label, title, more, doc) in TERMS.items()
    }


#: Route reasons as short names (queue page; ``REASON_TEXT`` in views has the sentences).
REASON_NAMES = {
    "low_confidence": "Model unsure",
    "cold_start": "No model yet",
    "audit": "Quality check (audit)",
    "fallback": "Automation paused (fallback)",
    "invalid_input": "Unusual input",
    "forced": "Application asked for a person",
    "policy": "Label never automated",
    "confident": "Model confident",
}
