"""`tandem simulate`: replay labelled history through an isolated Tandem (SPEC §11)."""
