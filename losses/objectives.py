"""Unsupervised, Supervised and PU objectives, pure functions of (L [B], y [B], beta, correction) -> scalar,
and `ALGORITHMS`, the one table that names them.

y = 1 marks labeled sensitive samples (S), y = 0 unlabeled ones (U). Each objective is minimised.
"""
from dataclasses import dataclass
from typing import Callable

import torch

# The non-negativity corrections of R_N; abs is the paper's default (DESIGN section 2).
PU_CORRECTIONS = ("abs", "nn")
DEFAULT_CORRECTION = "abs"
# Keeps -log(1 - exp(-L) + eps) finite as L -> 0 (DESIGN section 2).
BOUNDED_LOSS_EPS = 1e-6


def bounded_sensitive_loss(L):
    """l_S(L) = -log(1 - exp(-L) + 1e-6), computed with expm1 to avoid cancellation for small L.

    Bounded above by -log(1e-6) and decreasing in L: minimising it pushes the error up, but only
    until the model is already bad at the sample, unlike -L which would diverge.
    """
    return -torch.log(-torch.expm1(-L) + BOUNDED_LOSS_EPS)


def unsupervised(L, y, beta=0.0, correction=None):
    """Standard DDPM training on U only: sum((1 - y) * L) / B. S samples contribute 0; beta and the
    correction are unused (every objective takes the same arguments)."""
    return ((1 - y) * L).sum() / L.shape[0]


def supervised(L, y, beta=0.0, correction=None):
    """Treat U as normal and S as sensitive: sum((1 - y) * L + y * l_S(L)) / B; beta and the
    correction are unused."""
    return ((1 - y) * L + y * bounded_sensitive_loss(L)).sum() / L.shape[0]


def pu_risks(L, y, beta):
    """The PU risk estimates (R_S, R_N) of one batch.

    R_S = beta / n_S * sum(y * l_S(L)) is the sensitive-data risk on the labeled set;
    R_N = sum(((1 - y) / n_U - beta * y / n_S) * L) estimates (1 - beta) E_N[L] from U and S, since
    p_U = beta p_S + (1 - beta) p_N. n_S, n_U count the batch's S and U samples (at least 1).
    """
    n_s = y.sum().clamp(min=1)
    n_u = (1 - y).sum().clamp(min=1)
    r_s = beta / n_s * (y * bounded_sensitive_loss(L)).sum()
    r_n = (((1 - y) / n_u - beta * y / n_s) * L).sum()
    return r_s, r_n


def pu_terms(L, y, beta, correction=DEFAULT_CORRECTION):
    """The proposed PU objective R_S + R_N with a non-negativity correction on R_N, and its parts:
    (loss, {"R_S": R_S, "R_N": R_N}), so the loop logs the risks it trained on without recomputing them.

    abs (default): R_S + |R_N|. nn: -R_N when R_N < 0 (climb back to R_N >= 0), else R_S + R_N.
    R_N estimates a non-negative quantity; the corrections stop the model from driving it below
    zero by inflating the error on sensitive samples.
    """
    r_s, r_n = pu_risks(L, y, beta)
    if correction == "abs":
        loss = r_s + r_n.abs()
    elif correction == "nn":
        # torch.where, not a Python `if`: the same value and gradient without a GPU-to-CPU sync per step.
        loss = torch.where(r_n < 0, -r_n, r_s + r_n)
    else:
        raise ValueError(f"unknown PU correction {correction!r}; valid: {', '.join(PU_CORRECTIONS)}")
    return loss, dict(R_S=r_s, R_N=r_n)


def pu(L, y, beta, correction=DEFAULT_CORRECTION):
    """The proposed PU objective: R_S + |R_N| (abs) or the nn correction; see `pu_terms`."""
    return pu_terms(L, y, beta, correction)[0]


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm: its objective (L [B], y [B], beta, correction) -> scalar, whether it
    uses the class prior beta (runs of the others record beta as 0.0), and optionally the same
    objective returning (scalar, {name: part}) with the parts worth logging."""

    objective: Callable
    uses_beta: bool
    terms: Callable = None

    def objective_with_terms(self, L, y, beta, correction):
        if self.terms is not None:
            return self.terms(L, y, beta, correction)
        return self.objective(L, y, beta, correction), {}


# The single table of algorithms: argparse choices, run keys and the report's row order come from it.
ALGORITHMS = {
    "Unsupervised": Algorithm(unsupervised, uses_beta=False),
    "Supervised": Algorithm(supervised, uses_beta=False),
    "PU": Algorithm(pu, uses_beta=True, terms=pu_terms),
}


def get_algorithm(name):
    """The registered algorithm `name`; a KeyError listing the valid names otherwise."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def get_objective(algorithm, beta, correction=DEFAULT_CORRECTION):
    """The objective of `algorithm` as a function of (L, y), with beta and the correction bound."""
    objective = get_algorithm(algorithm).objective
    return lambda L, y: objective(L, y, beta, correction)


def get_objective_with_terms(algorithm, beta, correction=DEFAULT_CORRECTION):
    """The objective of `algorithm` as a function (L, y) -> (scalar, {name: part to log})."""
    algorithm = get_algorithm(algorithm)
    return lambda L, y: algorithm.objective_with_terms(L, y, beta, correction)
