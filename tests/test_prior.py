"""The class-prior estimator of utils/prior.py (best-bin estimation, BBE).

Why the tolerances below are what they are. Let e_G = sqrt(log(4 / delta) / (2 n_G)). By the
DKW inequality, with probability >= 1 - delta the empirical tail shares of U and S are both within
e_U and e_S of the true ones at every threshold at once. So at the chosen threshold c:
  - lower <= q_U(c) / q_S(c) <= upper, for the TRUE shares (this is what the interval means);
  - q_U(c) / q_S(c) = beta when the bin at c holds no normal data (the top-bin assumption), so on
    well-separated clouds lower <= beta <= upper;
  - BBE chose c to minimise the upper end, so upper is no larger than the upper end at the bin
    c0 = min(S scores), which holds all of S (empirical q_S = 1) and, on separated clouds, no N:
    there the empirical q_U is within e_U of beta, so upper <= (beta + 2 e_U) / (1 - e_S).
Seeds are fixed, so each check is deterministic; DKW is conservative, so passing is not luck of a seed.

Hand arithmetic for the tiny example (delta = 0.1, log(40) = 3.6888794541139363):
  U = [0.1, 0.2, 0.3, 0.4, 0.8, 0.96], S = [0.8, 0.85, 0.95]
  threshold c : 0.1   0.2   0.3   0.4   0.8   0.85  0.95  0.96
  q_U(c)      : 6/6   5/6   4/6   3/6   2/6   1/6   1/6   1/6
  q_S(c)      : 1     1     1     1     1     2/3   1/3   0      (0.8 counts: scores >= c)
  n_U = 6, n_S = 3: e_U = sqrt(3.68888/12) = 0.554443, e_S = sqrt(3.68888/6) = 0.784100.
    Only q_S = 1 > e_S qualifies (c <= 0.8); the smallest q_U there is 2/6 at c = 0.8, so
    beta = 1/3, lower = max(0, (1/3 - 0.554)/(1 + 0.784)) = 0, upper = min(1, 0.888/0.216) = 1.
    (The top bin c = 0.95 has q_U/q_S = 0.5 and c = 0.96 has no S: too few S to trust them.)
  Each score repeated 100 times (n_U = 600, n_S = 300): e_U = 0.0554443, e_S = 0.0784100, and
    c = 0.8 : (2/6 + 0.05544) / (1   - 0.07841) = 0.421855
    c = 0.85: (1/6 + 0.05544) / (2/3 - 0.07841) = 0.377575   <- smallest
    c = 0.95: (1/6 + 0.05544) / (1/3 - 0.07841) = 0.871285
    so beta = (1/6)/(2/3) = 0.25, lower = (1/6 - 0.05544)/(2/3 + 0.07841) = 0.149276.
  AUC (S above U, ties half): 0.8 -> 4.5 of 6, 0.85 -> 5, 0.95 -> 5; 14.5 / 18 = 0.806.
"""
import math

import numpy as np
import pytest

from utils.prior import (MIN_TOP_BIN_S_SHARE, PriorEstimate, best_bin_estimate, cross_fitted_scores,
                         estimate_prior_from_features)

DELTA = 0.1
PRIORS = (0.05, 1 / 11, 0.2)     # 1/11 is every image config's share of sensitive data in U
N_U, N_S = 5000, 1000
SEPARATED = 10.0                 # distance of the cloud means in units of the clouds' sd: N's and
                                 # S's tails meet 5 sd out, so no N sample reaches S's range
OVERLAPPING = 2.0                # the clouds overlap: every bin holds some N
DIRECTION = np.array([1.0, 1.0]) / math.sqrt(2.0)


def margin(n):
    """The DKW half-width, written out here rather than imported: the test checks the formula."""
    return math.sqrt(math.log(4 / DELTA) / (2 * n))


def clouds(beta, separation, n_u=N_U, n_s=N_S, seed=0):
    """2-D Gaussian clouds: N at the origin, S `separation` away along DIRECTION, both unit sd.

    U is drawn i.i.d. from the mixture (each sample sensitive with probability beta), so beta is the
    mixing weight of the population that DKW speaks about. S is drawn from the S cloud.
    """
    rng = np.random.default_rng(seed)
    is_sensitive = rng.random(n_u) < beta
    features_u = rng.normal(size=(n_u, 2)) + np.outer(is_sensitive, separation * DIRECTION)
    features_s = rng.normal(size=(n_s, 2)) + separation * DIRECTION
    return features_u, features_s


def oracle_scores(features_u, features_s):
    """The projection on the mean difference: for equal-covariance Gaussians the likelihood ratio
    p_S / p_N is monotone in it, so it ranks samples as well as any score can."""
    return features_u @ DIRECTION, features_s @ DIRECTION


def assert_recovers(estimate, beta):
    assert estimate.lower <= beta <= estimate.upper
    assert estimate.lower <= estimate.beta <= estimate.upper
    assert estimate.upper <= (beta + 2 * margin(N_U)) / (1 - margin(N_S))


@pytest.mark.parametrize("beta", PRIORS)
def test_recovers_known_prior_from_oracle_scores(beta):
    estimate = best_bin_estimate(*oracle_scores(*clouds(beta, SEPARATED)), delta=DELTA)
    assert_recovers(estimate, beta)
    assert estimate.warning is None
    assert (estimate.n_u, estimate.n_s) == (N_U, N_S)


@pytest.mark.parametrize("beta", PRIORS)
def test_recovers_known_prior_from_features(beta):
    estimate = estimate_prior_from_features(*clouds(beta, SEPARATED, seed=1), delta=DELTA)
    assert_recovers(estimate, beta)
    assert estimate.warning is None
    assert "logistic" in estimate.method


@pytest.mark.parametrize("beta", PRIORS)
def test_overlapping_clouds_bias_the_estimate_up_but_the_interval_holds(beta):
    """With overlap the chosen bin holds N too, so q_U/q_S = beta + (1 - beta) q_N/q_S > beta.
    The true ratio at the chosen threshold is known in closed form (Gaussian tails of the oracle
    score: N(0, 1) for N, N(2, 1) for S), and DKW says the interval covers it."""
    from scipy.stats import norm
    estimates = []
    for seed in range(3):
        estimate = best_bin_estimate(*oracle_scores(*clouds(beta, OVERLAPPING, seed=seed)), delta=DELTA)
        c = estimate.threshold
        true_ratio = beta + (1 - beta) * norm.sf(c) / norm.sf(c - OVERLAPPING)
        assert estimate.lower <= true_ratio <= estimate.upper
        assert estimate.upper >= beta        # the upper end bounds beta whatever the overlap
        estimates.append(estimate.beta)
    assert np.mean(estimates) > beta         # biased up, as the paper's bound says, not down


def test_interval_widens_as_s_shrinks():
    beta = 1 / 11
    widths = []
    for n_s in (1000, 100, 20):
        features_u, features_s = clouds(beta, SEPARATED, n_s=n_s, seed=2)
        estimate = best_bin_estimate(*oracle_scores(features_u, features_s), delta=DELTA)
        assert estimate.lower <= beta <= estimate.upper
        widths.append(estimate.upper - estimate.lower)
    assert widths[0] < widths[1] < widths[2]


def test_prior_zero_gives_an_estimate_near_zero():
    for estimate in (best_bin_estimate(*oracle_scores(*clouds(0.0, SEPARATED)), delta=DELTA),
                     estimate_prior_from_features(*clouds(0.0, SEPARATED), delta=DELTA)):
        assert estimate.lower == 0.0
        assert estimate.beta <= estimate.upper <= 2 * margin(N_U) / (1 - margin(N_S))
        # beta = 0 and "S looks like nothing in U" are the same data: the warning names both.
        assert "includes 0" in estimate.warning


def test_s_unlike_anything_in_u_sets_a_warning():
    """U = normal data + sensitive data of one kind; the labeled S is of another kind (SCAR is
    violated): the scores find nothing like S in U, so the estimate is ~0 and a warning says why."""
    rng = np.random.default_rng(3)
    features_u = np.concatenate([rng.normal(size=(4500, 2)),
                                 rng.normal(size=(500, 2)) + [SEPARATED, 0.0]])
    features_s = rng.normal(size=(N_S, 2)) + [0.0, SEPARATED]
    estimate = estimate_prior_from_features(features_u, features_s, delta=DELTA)
    assert estimate.beta < 0.01 < 500 / 5000
    assert "not a fair sample" in estimate.warning


def test_s_like_all_of_u_sets_a_warning():
    """S drawn from U's own mixture: nothing singles S out, AUC ~ 0.5, and q_U/q_S ~ 1."""
    features_u, _ = clouds(1 / 11, SEPARATED, seed=4)
    features_s, _ = clouds(1 / 11, SEPARATED, n_u=N_S, seed=5)
    estimate = estimate_prior_from_features(features_u, features_s, delta=DELTA)
    assert estimate.beta > 0.5
    assert "AUC" in estimate.warning


def test_thin_top_bin_sets_a_warning():
    """S is U's distribution plus 8% far above it: the chosen bin is that 8% tail."""
    rng = np.random.default_rng(6)
    scores_u = rng.random(N_U)
    scores_s = np.concatenate([rng.random(920), np.full(80, 2.0)])
    estimate = best_bin_estimate(scores_u, scores_s, delta=DELTA)
    assert 0.08 <= estimate.q_s < MIN_TOP_BIN_S_SHARE   # the tail, and perhaps U's top few S
    assert "the chosen bin holds only" in estimate.warning


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="scores_s is empty"):
        best_bin_estimate([0.1, 0.2], [])
    with pytest.raises(ValueError, match="scores_u is empty"):
        best_bin_estimate([], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        best_bin_estimate([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="delta"):
        best_bin_estimate([0.1], [0.1, 0.2], delta=1.0)
    with pytest.raises(ValueError, match="Label at least 2"):
        best_bin_estimate([0.1, 0.2], [0.3])              # e_S = 1.36 > 1 at n_S = 1
    with pytest.raises(ValueError, match="both U and labeled S"):
        estimate_prior_from_features(np.zeros((10, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="both U and labeled S"):
        estimate_prior_from_features(np.zeros((0, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="same model"):
        estimate_prior_from_features(np.zeros((10, 2)), np.zeros((10, 3)))


HAND_U = [0.1, 0.2, 0.3, 0.4, 0.8, 0.96]
HAND_S = [0.8, 0.85, 0.95]


def test_hand_computed_tiny_example():
    estimate = best_bin_estimate(HAND_U, HAND_S, delta=DELTA)
    assert estimate == PriorEstimate(beta=pytest.approx(1 / 3), lower=0.0, upper=1.0, threshold=0.8,
                                     q_u=pytest.approx(2 / 6), q_s=1.0, n_u=6, n_s=3,
                                     method="best_bin", warning=estimate.warning)
    assert "includes 0" in estimate.warning


def test_hand_computed_example_with_more_data_trades_s_share_for_purity():
    estimate = best_bin_estimate(np.repeat(HAND_U, 100), np.repeat(HAND_S, 100), delta=DELTA)
    assert estimate.threshold == 0.85
    assert (estimate.q_u, estimate.q_s) == (pytest.approx(1 / 6), pytest.approx(2 / 3))
    assert estimate.beta == pytest.approx(0.25)
    assert estimate.upper == pytest.approx(0.377575, abs=1e-6)
    assert estimate.lower == pytest.approx(0.149276, abs=1e-6)
    assert estimate.warning is None          # AUC 0.806, 2/3 of S in the bin, lower > 0


class RecordingFitPredict:
    """A fit_predict stub: checks each call keeps its test indices out of training and returns
    scores that name the index they belong to (U: i, S: -1 - i)."""

    def __init__(self):
        self.calls = []

    def __call__(self, train_u, train_s, test_u, test_s):
        assert not set(train_u) & set(test_u)
        assert not set(train_s) & set(test_s)
        self.calls.append((train_u, train_s, test_u, test_s))
        return test_u.astype(float), -1.0 - test_s


@pytest.mark.parametrize("n_u, n_s, n_folds", [(23, 7, 5), (10, 2, 2), (100, 5, 5)])
def test_cross_fitting_scores_every_index_once_and_never_in_training(n_u, n_s, n_folds):
    stub = RecordingFitPredict()
    scores_u, scores_s = cross_fitted_scores(n_u, n_s, stub, n_folds=n_folds, seed=0)
    assert len(stub.calls) == n_folds
    test_u = np.concatenate([call[2] for call in stub.calls])
    test_s = np.concatenate([call[3] for call in stub.calls])
    assert sorted(test_u) == list(range(n_u)) and sorted(test_s) == list(range(n_s))
    for train_u, train_s, fold_u, fold_s in stub.calls:
        assert sorted(np.concatenate([train_u, fold_u])) == list(range(n_u))
        assert sorted(np.concatenate([train_s, fold_s])) == list(range(n_s))
    np.testing.assert_array_equal(scores_u, np.arange(n_u))
    np.testing.assert_array_equal(scores_s, -1.0 - np.arange(n_s))


def test_cross_fitting_folds_follow_the_seed():
    def folds(seed):
        stub = RecordingFitPredict()
        cross_fitted_scores(20, 10, stub, n_folds=5, seed=seed)
        return [call[2].tolist() for call in stub.calls]
    assert folds(0) == folds(0)
    assert folds(0) != folds(1)


def test_cross_fitting_bad_input_raises_value_error():
    stub = RecordingFitPredict()
    with pytest.raises(ValueError, match="n_s=3 is smaller than n_folds=5"):
        cross_fitted_scores(100, 3, stub, n_folds=5)
    with pytest.raises(ValueError, match="n_u=4 is smaller than n_folds=5"):
        cross_fitted_scores(4, 30, stub, n_folds=5)
    with pytest.raises(ValueError, match="n_folds=1"):
        cross_fitted_scores(10, 10, stub, n_folds=1)
    with pytest.raises(ValueError, match="one score per test index"):
        cross_fitted_scores(10, 10, lambda tu, ts, eu, es: (np.zeros(1), np.zeros(len(es))), n_folds=2)
