"""Evaluation: classification metrics (and, later, dense multi-scale scoring and ensembles)."""
