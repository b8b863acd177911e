"""RQ job functions, addressed by dotted path (``workers.jobs.<module>.<function>``)."""
