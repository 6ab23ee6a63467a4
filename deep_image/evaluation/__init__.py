"""Evaluation (§5.1): the one path from parameters and a split to metrics (evaluator.py), dense
FC-as-conv scoring with flips (dense.py), per-class sums and metrics (metrics.py)."""
