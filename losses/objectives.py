"""Unsupervised, Supervised and PU objectives, pure functions of (L [B], y [B], beta, correction) -> scalar,
the NegGrad baseline's, a pure function of (L [B], y [B], weight, cap) -> scalar, and `ALGORITHMS`, the one
table that names them (with the Filter and Clean baselines, which train the Unsupervised objective on a
selected training set).

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


def neggrad_terms(L, y, weight, cap):
    """The NegGrad baseline (gradient ascent on S) with a bounded ascent, and its parts:
    (loss, {"R_U": R_U, "S_capped": S_capped}).

    R_U = sum((1 - y) * L) / B is the Unsupervised objective; S_capped = sum(y * min(L, cap)) / n_S is
    the mean over the batch's S samples of their error capped at `cap` (n_S = max(1, sum y));
    loss = R_U - weight * S_capped. L is unbounded above, so an uncapped ascent has no minimum: the
    model could lower the loss without end by making its error on S ever larger. At and above the cap
    an S sample's gradient is zero. The training loop passes cap = d, the number of elements of one
    model input: E||eps||^2 = d is the error of a model that predicts no noise at all, so an S sample
    beyond it is already predicted worse than by predicting nothing (docs/baselines.md).
    """
    if cap is None or weight is None:
        raise ValueError("NegGrad needs its ascent weight and the cap of S's error (the training loop passes the "
                         "number of elements of one model input as the cap)")
    n_s = y.sum().clamp(min=1)
    r_u = ((1 - y) * L).sum() / L.shape[0]
    s_capped = (y * L.clamp(max=cap)).sum() / n_s
    return r_u - weight * s_capped, dict(R_U=r_u, S_capped=s_capped)


def neggrad(L, y, weight, cap):
    """The NegGrad baseline: sum((1 - y) * L) / B - weight * sum(y * min(L, cap)) / n_S; see `neggrad_terms`."""
    return neggrad_terms(L, y, weight, cap)[0]


# NegGrad's ascent weight when --neggrad_weight is not given. Provisional until the weight sweep of
# docs/baselines.md is measured: the smallest weight of its grid above the break-even weight
# |U's sensitive| / (|U| + |S|) = 1/12 of the paper's 10 : 1 : 1 splits, below which the expected
# objective still descends on sensitive data.
DEFAULT_NEGGRAD_WEIGHT = 0.1
# What the objectives take after (L, y): the paper's three take the class prior and PU's correction.
PRIOR_SETTINGS = ("beta", "correction")


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm: its objective, the settings that objective takes, and what it trains on.

    objective: (L [B], y [B], *settings) -> scalar, `settings` being the values named by `takes`, in
        that order: beta and the correction for the paper's three; the ascent weight and the cap for NegGrad.
    uses_beta: whether it uses the class prior beta (runs of the others record beta as 0.0).
    terms: optionally the same objective returning (scalar, {name: part}) with the parts worth logging.
    selection: None to train on the whole PU split; else the name of a rule of utils.selection that picks
        the images to train on before training (Filter and Clean train Unsupervised on such a subset).
    """

    objective: Callable
    uses_beta: bool
    terms: Callable = None
    takes: tuple = PRIOR_SETTINGS
    selection: str = None

    def objective_with_terms(self, L, y, **settings):
        """(scalar, {name: part}) of the objective on L and y; `settings` holds at least the names in `takes`."""
        args = [settings[name] for name in self.takes]
        if self.terms is not None:
            return self.terms(L, y, *args)
        return self.objective(L, y, *args), {}


# The single table of algorithms: argparse choices, run keys and the report's row order come from it.
# The paper's three, then the baselines of docs/baselines.md.
ALGORITHMS = {
    "Unsupervised": Algorithm(unsupervised, uses_beta=False),
    "Supervised": Algorithm(supervised, uses_beta=False),
    "PU": Algorithm(pu, uses_beta=True, terms=pu_terms),
    # Unsupervised on U less the beta x |U| images that a cross-fitted classifier of S against U scores highest.
    "Filter": Algorithm(unsupervised, uses_beta=True, selection="filter"),
    # Unsupervised on U's normal images only: a ceiling, where U's labels are known.
    "Clean": Algorithm(unsupervised, uses_beta=False, selection="clean"),
    # Unsupervised on U plus a weighted ascent on S's capped error.
    "NegGrad": Algorithm(neggrad, uses_beta=False, terms=neggrad_terms, takes=("weight", "cap")),
}


def get_algorithm(name):
    """The registered algorithm `name`; a KeyError listing the valid names otherwise."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def get_objective(algorithm, beta, correction=DEFAULT_CORRECTION, neggrad_weight=DEFAULT_NEGGRAD_WEIGHT):
    """The objective of `algorithm` as a function of (L, y, elements=None), with beta, the correction and
    NegGrad's weight bound; `elements`, the number of elements of one model input, is NegGrad's cap."""
    with_terms = get_objective_with_terms(algorithm, beta, correction, neggrad_weight)
    return lambda L, y, elements=None: with_terms(L, y, elements)[0]


def get_objective_with_terms(algorithm, beta, correction=DEFAULT_CORRECTION, neggrad_weight=DEFAULT_NEGGRAD_WEIGHT):
    """The objective of `algorithm` as a function (L, y, elements=None) -> (scalar, {name: part to log});
    the training loop passes `elements`, the number of elements of one model input (NegGrad's cap; the
    other objectives do not read it)."""
    algorithm = get_algorithm(algorithm)
    if "weight" in algorithm.takes and neggrad_weight is None:
        raise ValueError("NegGrad needs its ascent weight (neggrad_weight)")

    def objective(L, y, elements=None):
        return algorithm.objective_with_terms(L, y, beta=beta, correction=correction, weight=neggrad_weight,
                                              cap=elements)
    return objective
