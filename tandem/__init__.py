"""The shell around Tandem's library: the app factory (``tandem.app``), the ``tandem``
command (``tandem.cli``), the processes ``tandem serve`` runs (``tandem.processes``), the demo
(``tandem.demo``) and the backtest simulator (``tandem.simulate``). Only the shell wires the
library, the JSON API, the review UI and the workers together (docs/architecture.md)."""
