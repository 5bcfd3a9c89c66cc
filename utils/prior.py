"""Estimate the class prior beta (the sensitive share of U) for `--beta auto`.

PUDM assumes p_U = beta p_S + (1 - beta) p_N and needs beta, which the user may not know. This
module estimates it from a held-out score f (higher = more like S) with the best-bin estimator
(BBE) of Garg, Wu, Smola, Balakrishnan and Lipton, "Mixture Proportion Estimation and PU Learning:
A Modern Approach", NeurIPS 2021, written from the paper.

The idea in one line: for any threshold c, q_U(c) = beta q_S(c) + (1 - beta) q_N(c) >= beta q_S(c),
where q_G(c) is the share of group G scoring >= c. So q_U(c) / q_S(c) bounds beta from above, and
is tight at a "top bin" that holds S mass but no N mass. BBE picks the threshold whose upper
confidence bound on that ratio is smallest, so that a bin holding only a handful of S samples
cannot win by luck.

Three layers, each usable alone:
- `best_bin_estimate(scores_u, scores_s)`: the estimator on scores you already have (pure numpy);
- `cross_fitted_scores(n_u, n_s, fit_predict)`: K-fold driver giving every sample a held-out score
  from any classifier you plug in (BBE needs held-out scores: see the function);
  `cross_fitted_logistic_scores(features_u, features_s)` plugs in a logistic regression of S against U
  on feature vectors (e.g. CLIP features for Stable Diffusion);
- `estimate_prior_from_features(features_u, features_s)`: both.
`HeldOutScores` keeps a training set's held-out scores in its own order: the Filter baseline
(utils/selection.py) drops U's top-scoring images by them, and with `--beta auto` the same scores
give the estimate.
`check_prior_counts` refuses sets too small to cross-fit. Applying it to the project's data (a PU
split of images, the Stable Diffusion folders) is utils/prior_data.py's job: this module knows
nothing of datasets, models or files.
"""
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Tuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from utils.errors import UsageError

DEFAULT_DELTA = 0.1          # the interval holds with probability >= 1 - delta (DKW, both groups)
DEFAULT_FOLDS = 5
BEST_BIN_METHOD = "best_bin"

# Warning 1, poor separation. With a scorer that separates S from N perfectly, the AUC of S against
# U is beta * 1/2 + (1 - beta) * 1 = 1 - beta / 2, which stays >= 0.6 for every beta <= 0.8.
# PUDM's priors are small (0.09 in the image configs, 0.2 for SD), so an AUC below this means the
# scores carry little signal (or S is like all of U) and q_U / q_S is close to 1 by default.
MIN_SEPARATION_AUC = 0.6
# Warning 2, thin top bin. The estimate rests on the S samples in the chosen bin. If they are under
# this share of S, S and N overlap over most of the score range: the bin likely still holds N mass,
# so the estimate is biased up, and it describes only a tail of S.
MIN_TOP_BIN_S_SHARE = 0.1
# Warning 3, the lower end of the interval is 0: the data cannot tell beta from 0. Either U holds
# (almost) no sensitive data, or S is not a fair sample of U's sensitive data (S looks like nothing
# in U): both look the same from the scores, so the message names both.

LOGISTIC_MAX_ITER = 1000     # lbfgs on standardised features converges well within this
FOLD_SEED_RANGE = 2 ** 31    # per-fold classifier seeds are drawn from [0, this)


@dataclass(frozen=True)
class PriorEstimate:
    """A class-prior estimate and how it was reached.

    beta: q_U / q_S at the chosen threshold, clipped to [0, 1] (an upper bound on the true prior,
        tight when the chosen bin holds no normal data).
    lower, upper: the DKW interval at the chosen threshold. `upper` bounds the true beta with
        probability >= 1 - delta; `lower` bounds it only under the top-bin assumption (the chosen
        bin holds no normal data), since q_U / q_S >= beta at every threshold.
    threshold: the score c of the chosen bin (scores >= c are in it).
    q_u, q_s: the shares of U and S scoring >= threshold.
    n_u, n_s: the number of scores in each group.
    method: how the scores were made and the prior estimated.
    warning: why the estimate may be unreliable, else None.
    delta: the interval fails with probability at most delta.
    folds: the number of cross-fitting folds that made the scores; None for scores given as they are.
    scores: the HeldOutScores the estimate was read off, where the caller kept them (not recorded).
    """

    beta: float
    lower: float
    upper: float
    threshold: float
    q_u: float
    q_s: float
    n_u: int
    n_s: int
    method: str
    warning: Optional[str]
    delta: float = DEFAULT_DELTA
    folds: Optional[int] = None
    scores: Optional["HeldOutScores"] = field(default=None, compare=False, repr=False)

    def to_record(self):
        """A JSON-ready dict: the estimate, its interval [lower, upper] and how it was reached."""
        return dict(estimate=self.beta, interval=[self.lower, self.upper], method=self.method,
                    delta=self.delta, n_u=self.n_u, n_s=self.n_s, threshold=self.threshold,
                    q_u=self.q_u, q_s=self.q_s, warning=self.warning, folds=self.folds)


@dataclass(frozen=True)
class HeldOutScores:
    """Held-out scores of S against U for every image of a training set, in the set's own order.

    scores: float64 [N], image i's score from the fold that held it out; higher = more like S.
    labels: int64 [N], the PU labels (1 = S, 0 = U) the classifiers were trained on.
    method: how the scores were made, e.g. "5-fold cnn (scratch) logits".
    folds: the number of cross-fitting folds.
    """

    scores: np.ndarray
    labels: np.ndarray
    method: str
    folds: int

    @property
    def scores_u(self):
        return self.scores[self.labels == 0]

    @property
    def scores_s(self):
        return self.scores[self.labels == 1]

    @classmethod
    def from_groups(cls, labels, scores_u, scores_s, method, folds):
        """The scores of U [n_u] and S [n_s] (each in the order of its group) placed at their images'
        positions in a set labelled `labels` [N]."""
        labels = np.asarray(labels, dtype=np.int64)
        scores = np.empty(len(labels), dtype=np.float64)
        scores[labels == 0], scores[labels == 1] = scores_u, scores_s
        return cls(scores, labels, method, folds)

    def estimate(self, delta=DEFAULT_DELTA):
        """The best-bin estimate of the prior from these scores, carrying them (PriorEstimate.scores)."""
        estimate = best_bin_estimate(self.scores_u, self.scores_s, delta=delta)
        return replace(estimate, method=f"{BEST_BIN_METHOD} on {self.method}", folds=self.folds, scores=self)


def dkw_margin(n, delta=DEFAULT_DELTA):
    """Half-width e = sqrt(log(4 / delta) / (2 n)) of a DKW band on n samples' tail shares.

    DKW: P(sup_c |q_hat(c) - q(c)| > e) <= 2 exp(-2 n e^2) = delta / 2. One band for U and one for S
    then hold together with probability >= 1 - delta, at every threshold at once, so the chosen
    (data-dependent) threshold is covered too.
    """
    return float(np.sqrt(np.log(4.0 / delta) / (2.0 * n)))


def _as_scores(scores, name):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {scores.shape}: "
                         f"pass one score per sample (e.g. scores.ravel()).")
    if scores.size == 0:
        raise ValueError(f"{name} is empty: the prior estimate needs scores for both the unlabeled "
                         f"set U and the labeled sensitive set S.")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} holds NaN or inf: check the scorer's output before estimating.")
    return scores


def _share_at_or_above(sorted_scores, thresholds):
    """Share of `sorted_scores` that are >= each threshold (one binary search per threshold)."""
    below = np.searchsorted(sorted_scores, thresholds, side="left")
    return (sorted_scores.size - below) / sorted_scores.size


def _auc(sorted_u, scores_s):
    """P(score of S > score of U) + 1/2 P(tie): the Mann-Whitney AUC, O((n_u + n_s) log n_u)."""
    below = np.searchsorted(sorted_u, scores_s, side="left")
    at_or_below = np.searchsorted(sorted_u, scores_s, side="right")
    return float(np.mean(below + 0.5 * (at_or_below - below)) / sorted_u.size)


def best_bin_estimate(scores_u, scores_s, delta=DEFAULT_DELTA):
    """The best-bin estimate (BBE) of beta from held-out scores of U [n_u] and S [n_s].

    For each candidate threshold c (the distinct score values), q_U(c) and q_S(c) are the shares of
    U and S scoring >= c. Among the c with q_S(c) > e_S, choose the one minimising the upper bound
    (q_U + e_U) / (q_S - e_S), with e_G = dkw_margin(n_G, delta); report q_U / q_S there and the
    interval [(q_U - e_U) / (q_S + e_S), (q_U + e_U) / (q_S - e_S)], clipped to [0, 1]. Ties in the
    bound go to the lowest threshold (the bin with the most data). O(n log n).
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta} must lie in (0, 1): it is the probability that the "
                         f"interval fails (the default {DEFAULT_DELTA} gives a 90% interval).")
    scores_u = _as_scores(scores_u, "scores_u")
    scores_s = _as_scores(scores_s, "scores_s")
    n_u, n_s = scores_u.size, scores_s.size
    e_u, e_s = dkw_margin(n_u, delta), dkw_margin(n_s, delta)
    # The lowest threshold has q_S = 1, so some bin qualifies exactly when e_S < 1.
    if e_s >= 1.0:
        min_n_s = int(np.floor(np.log(4.0 / delta) / 2.0)) + 1
        raise ValueError(f"{n_s} labeled sensitive score(s) are too few for delta={delta}: the "
                         f"confidence margin on S would exceed 1. Label at least {min_n_s} "
                         f"sensitive samples, or raise delta.")

    sorted_u, sorted_s = np.sort(scores_u), np.sort(scores_s)
    thresholds = np.unique(np.concatenate([sorted_u, sorted_s]))
    q_u = _share_at_or_above(sorted_u, thresholds)
    q_s = _share_at_or_above(sorted_s, thresholds)

    # Bins with q_S <= e_S could hold no S at all within the DKW band: their bound is unbounded.
    valid = q_s > e_s
    upper_bound = np.full(thresholds.shape, np.inf)
    upper_bound[valid] = (q_u[valid] + e_u) / (q_s[valid] - e_s)
    best = int(np.argmin(upper_bound))       # argmin returns the first (lowest) threshold on ties
    qu, qs = float(q_u[best]), float(q_s[best])

    beta = float(np.clip(qu / qs, 0.0, 1.0))
    lower = max(0.0, (qu - e_u) / (qs + e_s))
    upper = min(1.0, (qu + e_u) / (qs - e_s))
    auc = _auc(sorted_u, scores_s)
    return PriorEstimate(beta=beta, lower=lower, upper=upper, threshold=float(thresholds[best]),
                         q_u=qu, q_s=qs, n_u=n_u, n_s=n_s, method=BEST_BIN_METHOD,
                         warning=_warning(auc, qs, beta, lower, upper), delta=delta)


def _warning(auc, q_s, beta, lower, upper):
    """Join the reasons (see the named constants) that the top-bin assumption looks violated."""
    reasons = []
    if auc < MIN_SEPARATION_AUC:
        reasons.append(f"S barely scores above U (AUC {auc:.3f} < {MIN_SEPARATION_AUC}): the scores "
                       f"cannot tell S from U, so beta = q_U/q_S is near 1 by default unless U is "
                       f"almost all sensitive; check the scorer or the features")
    if q_s < MIN_TOP_BIN_S_SHARE:
        reasons.append(f"the chosen bin holds only {q_s:.1%} of S (< {MIN_TOP_BIN_S_SHARE:.0%}): "
                       f"S and U overlap over most scores, so the bin likely holds normal data and "
                       f"the estimate is biased up")
    if lower == 0.0:
        reasons.append(f"the interval [0, {upper:.3f}] includes 0 (estimate {beta:.3f}): either U "
                       f"holds almost no sensitive data, or S is not a fair sample of the sensitive "
                       f"data in U (S looks like nothing in U); check that S comes from the same "
                       f"source as U's sensitive data")
    return "; ".join(reasons) if reasons else None


def cross_fitted_scores(n_u, n_s, fit_predict: Callable, n_folds=DEFAULT_FOLDS, seed=0
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Held-out scores for every U and S sample by K-fold cross-fitting.

    BBE needs scores from a model that did not see the sample: in-sample, a classifier memorises
    S, pushing S into the top bin and U out of it, which biases q_U / q_S (and beta) down.
    U and S indices are each shuffled by a numpy Generator seeded by `seed` and split into
    `n_folds` folds; for fold k, `fit_predict(train_u_idx, train_s_idx, test_u_idx, test_s_idx)`
    trains on the other folds and returns (scores for test_u_idx, scores for test_s_idx).
    Returns (scores_u [n_u], scores_s [n_s]), each score from the one fold that held it out.
    BBE then ranks the K folds' scores together, which assumes the K models score on one scale:
    true of a stable learner trained on 1 - 1/K of the same data (e.g. logistic regression).
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds={n_folds} must be an integer >= 2 to hold data out.")
    for name, n in (("n_u", n_u), ("n_s", n_s)):
        if n < n_folds:
            raise ValueError(f"{name}={n} is smaller than n_folds={n_folds}: every fold needs a "
                             f"sample of each group; lower n_folds or add samples.")
    rng = np.random.default_rng(seed)
    folds_u = np.array_split(rng.permutation(n_u), n_folds)
    folds_s = np.array_split(rng.permutation(n_s), n_folds)

    scores_u, scores_s = np.full(n_u, np.nan), np.full(n_s, np.nan)
    for k in range(n_folds):
        test_u, test_s = np.sort(folds_u[k]), np.sort(folds_s[k])
        train_u = np.sort(np.concatenate(folds_u[:k] + folds_u[k + 1:]))
        train_s = np.sort(np.concatenate(folds_s[:k] + folds_s[k + 1:]))
        fold_u, fold_s = fit_predict(train_u, train_s, test_u, test_s)
        fold_u, fold_s = np.asarray(fold_u, dtype=np.float64), np.asarray(fold_s, dtype=np.float64)
        if fold_u.shape != test_u.shape or fold_s.shape != test_s.shape:
            raise ValueError(f"fit_predict returned scores of shapes {fold_u.shape} and "
                             f"{fold_s.shape} for {test_u.size} U and {test_s.size} S test "
                             f"samples: return one score per test index, in the given order.")
        scores_u[test_u], scores_s[test_s] = fold_u, fold_s
    return scores_u, scores_s


def _as_features(features, name):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_samples, n_features], got shape "
                         f"{features.shape}: reshape one feature per sample with reshape(-1, 1).")
    return features


def cross_fitted_logistic_scores(features_u, features_s, n_folds=DEFAULT_FOLDS, seed=0):
    """Held-out logistic-regression scores of S against U (scores_u [n_u], scores_s [n_s]) from
    features_u [n_u, d] and features_s [n_s, d] (e.g. CLIP image features for Stable Diffusion).

    Any classifier of S against U ranks samples by p_S / p_U, which is all BBE (and the Filter
    baseline) needs from a score. Class weights are balanced since S is usually far smaller than U.
    The score is the decision function (log-odds), not predict_proba: on well-separated data the
    probabilities round to exactly 1.0 and would merge the top of the ranking into one tie.
    """
    features_u = _as_features(features_u, "features_u")
    features_s = _as_features(features_s, "features_s")
    if features_u.shape[1] != features_s.shape[1]:
        raise ValueError(f"features_u has {features_u.shape[1]} features per sample and "
                         f"features_s {features_s.shape[1]}: embed both sets with the same model.")
    if len(features_u) == 0 or len(features_s) == 0:
        raise ValueError(f"features_u holds {len(features_u)} and features_s {len(features_s)} "
                         f"samples: the prior estimate needs both U and labeled S samples.")

    def fit_predict(train_u, train_s, test_u, test_s):
        x = np.concatenate([features_u[train_u], features_s[train_s]])
        y = np.concatenate([np.zeros(len(train_u)), np.ones(len(train_s))])
        model = make_pipeline(StandardScaler(), LogisticRegression(
            class_weight="balanced", max_iter=LOGISTIC_MAX_ITER))
        model.fit(x, y)
        return model.decision_function(features_u[test_u]), model.decision_function(features_s[test_s])

    return cross_fitted_scores(len(features_u), len(features_s), fit_predict, n_folds=n_folds, seed=seed)


def estimate_prior_from_features(features_u, features_s, n_folds=DEFAULT_FOLDS, seed=0,
                                 delta=DEFAULT_DELTA):
    """BBE on cross-fitted logistic-regression scores of S against U (`cross_fitted_logistic_scores`):
    features_u [n_u, d], features_s [n_s, d] (e.g. CLIP image features for Stable Diffusion)."""
    scores_u, scores_s = cross_fitted_logistic_scores(features_u, features_s, n_folds=n_folds, seed=seed)
    estimate = best_bin_estimate(scores_u, scores_s, delta=delta)
    return replace(estimate, method=f"{BEST_BIN_METHOD} on {n_folds}-fold logistic regression", folds=n_folds)


def check_prior_counts(n_u, n_s, n_folds=DEFAULT_FOLDS):
    """A UsageError unless U [n_u] and S [n_s] can give a cross-fitted estimate."""
    if n_s == 0:
        raise UsageError("S is empty: the prior is estimated by comparing U with labeled sensitive images "
                         f"(y = 1); label at least {n_folds} (one per cross-fitting fold)")
    if n_u < n_s:
        raise UsageError(f"U holds {n_u} images and S {n_s}: beta is the sensitive share of U and is read off "
                         f"U, so U must be at least as large as S; check that the two sets are not swapped "
                         f"(for Stable Diffusion, U is 0_unlabeled/ and S is 1_positive/) or add unlabeled images")
    if n_s < n_folds:
        raise UsageError(f"S holds {n_s} images, fewer than the {n_folds} cross-fitting folds, each of which "
                         f"needs one; label at least {n_folds} sensitive images")
