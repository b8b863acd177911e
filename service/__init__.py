"""Tandem's library: the models, the business rules (``service.services``), the statistics
(``service.policy``), the machine learning (``service.ml``), the schemas and the unit of work
(``service.uow``), plus the JSON API (``service.api``). It builds no app and runs no process:
that is the shell's work (``tandem``, docs/architecture.md).
"""

from __future__ import annotations

from service.resources import inference_thread_defaults

inference_thread_defaults()  # before NumPy / OpenMP load (service/resources.py says why)
