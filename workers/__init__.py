"""Background work on RQ: training, webhooks, exports, maintenance (docs/architecture.md).

Jobs take ids, open their own session and transaction, are idempotent, and are enqueued by
the service through its outbox only after the transaction that needs them has committed.
"""
