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
    "max_coverage_step": (
        "Largest coverage step",
        "How much more of the traffic automation may take on at a time.",
        "Automation widens by at most this share of traffic per 250 cases since its last "
        "change (0.1: ten points), and only to a threshold a certification accepted; it "
        "never widens while a drift warning stands.",
        "docs/policy.md",
    ),
    "watch_min_answers": (
        "Live watch: answers before it may fall back",
        "The live watch cannot turn automation off before the running model has this many "
        "audited automatic answers.",
        "The live watch re-tests the latest 300 audited automatic answers after each one "
        "and falls back when their error is shown above α. On its first two or three "
        "answers bad luck alone can show that: waiting for a few (30, say) avoids such "
        "false fallbacks, and a model that really is worse is caught a little later. "
        "1 (the default) lets it act from the first answer.",
        "docs/policy.md",
    ),
    "watch_confidence": (
        "Live watch: confidence of its test",
        "How sure the live watch must be that the error is above α before it turns automation off.",
        "New tasks use 0.99 (any value from 0.5 to below 1). Empty means the task's "
        "Confidence (0.95 by default), which tasks created before this setting keep. At "
        "0.95 a model well within target falls back by mistake about once in eight new "
        "models; at 0.99 about once in a hundred, and a model that really is 1.5 times "
        "worse than promised is caught after about twice as many audited answers.",
        "docs/policy.md",
    ),
    "lease_seconds": (
        "Lease",
        "How long a claimed case stays with the reviewer who claimed it.",
        "While the lease lasts nobody else is shown the case. When it runs out without a "
        "decision the case goes back to the queue, and a decision sent after that is "
        "refused (the page says the lease was lost). A decision can be undone within the "
        "same time.",
        "docs/review.md",
    ),
    "reviewers_per_case": (
        "Reviewers per case",
        "How many people must decide a queued case before it is resolved.",
        "With more than one, each decides blind to the others, and the case resolves when "
        "this many chose the same label; each disagreement asks one more reviewer, up to "
        "two more in all.",
        "docs/review.md",
    ),
    "sla_seconds": (
        "SLA",
        "How long a case may wait before it counts as late and is served first.",
        "Claims serve cases past the SLA first, then the oldest; the queue page highlights "
        "them. The default is one day.",
        "docs/review.md",
    ),
    "instructions": (
        "Reviewer instructions",
        "What reviewers read before deciding, shown on every review page.",
        "Written in Markdown; links and lists are kept, scripts are removed.",
        "docs/review.md",
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
