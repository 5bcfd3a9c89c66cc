"""The training objectives of PUDM (DESIGN section 2), in two levels.

`denoising_error` turns a model and clean inputs into the per-sample error L [B]; the objectives
`unsupervised`, `supervised` and `pu` are pure functions of (L [B], y [B], beta, correction) -> scalar,
the baseline `neggrad` one of (L [B], y [B], weight, cap) -> scalar, listed in the `ALGORITHMS` table, where
y = 1 marks a labeled sensitive sample (S) and y = 0 an unlabeled one (U).
"""
from .denoising import denoising_error
from .objectives import (ALGORITHMS, DEFAULT_CORRECTION, DEFAULT_NEGGRAD_WEIGHT, PU_CORRECTIONS, Algorithm,
                         bounded_sensitive_loss, get_algorithm, get_objective, get_objective_with_terms, neggrad,
                         neggrad_terms, pu, pu_risks, pu_terms, supervised, unsupervised)

__all__ = ["denoising_error", "ALGORITHMS", "Algorithm", "get_algorithm", "get_objective", "get_objective_with_terms",
           "PU_CORRECTIONS", "DEFAULT_CORRECTION", "DEFAULT_NEGGRAD_WEIGHT", "bounded_sensitive_loss", "pu_risks",
           "pu_terms", "unsupervised", "supervised", "pu", "neggrad", "neggrad_terms"]
