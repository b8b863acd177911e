"""Background work on RQ: training, webhooks, exports, maintenance (docs/architecture.md).

Jobs take ids, call a service function inside a unit of work (``service.uow``), are
idempotent, and are enqueued by the library through its outbox only after the transaction that
needs them has committed. Workers import only the library (docs/architecture.md).
"""
