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
