"""`tandem simulate`: replay labelled history through an isolated Tandem (docs/backtest.md)."""
