"""Class-prior estimators side by side on synthetic mixtures: our BBE against pulearn's (docs/results.md).

    python benchmarks/prior_estimators.py                 # pulearn columns need `pip install pulearn`

U is drawn i.i.d. from beta * S-cloud + (1 - beta) * N-cloud (2-D Gaussians, unit sd, means
`separation` apart), S from the S-cloud. Every estimate is reported as PUDM's beta, the sensitive
share of U. pulearn states its results for the pooled data (labeled S plus U), so they are converted:
  - Elkan-Noto's c = P(labeled | sensitive) in the pool, which holds n_S + beta n_U sensitive
    samples, so c = n_S / (n_S + beta n_U), i.e. beta = n_S (1 - c) / (c n_U);
  - the histogram-match and SCAR-EM priors pi = sensitive share of the pool = (n_S + beta n_U) /
    (n_S + n_U), i.e. beta = (pi - r) / (1 - r) with r = n_S / (n_S + n_U).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from utils.prior import estimate_prior_from_features  # noqa: E402

PRIORS = (0.05, 1 / 11, 0.2)
SEEDS = (0, 1, 2)
SEPARATIONS = {"separated": 6.0, "overlapping": 2.0}   # distance of the means in sd
ELKAN_NOTO_HOLD_OUT = 0.1                               # pulearn's default share held out for c
LOGISTIC_MAX_ITER = 1000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_u", type=int, default=5000)
    parser.add_argument("--n_s", type=int, default=1000)
    return parser.parse_args(argv)


def clouds(beta, separation, n_u, n_s, seed):
    rng = np.random.default_rng(seed)
    direction = np.array([1.0, 1.0]) / np.sqrt(2.0)
    is_sensitive = rng.random(n_u) < beta
    features_u = rng.normal(size=(n_u, 2)) + np.outer(is_sensitive, separation * direction)
    features_s = rng.normal(size=(n_s, 2)) + separation * direction
    return features_u, features_s


def pulearn_estimates(features_u, features_s, seed):
    """pulearn's three prior estimates, each converted to beta; None where pulearn is missing."""
    try:
        from pulearn import ElkanotoPuClassifier
        from pulearn.priors import HistogramMatchPriorEstimator, ScarEMPriorEstimator
    except ImportError:
        return None
    n_u, n_s = len(features_u), len(features_s)
    x = np.concatenate([features_u, features_s])
    y = np.concatenate([np.zeros(n_u, dtype=int), np.ones(n_s, dtype=int)])
    labeled_share = n_s / (n_s + n_u)

    def beta_from_pi(pi):
        return (pi - labeled_share) / (1 - labeled_share)

    elkan_noto = ElkanotoPuClassifier(LogisticRegression(max_iter=LOGISTIC_MAX_ITER),
                                      hold_out_ratio=ELKAN_NOTO_HOLD_OUT, random_state=seed).fit(x, y)
    histogram = HistogramMatchPriorEstimator().estimate(x, y)
    scar_em = ScarEMPriorEstimator().estimate(x, y)
    return dict(elkan_noto=n_s * (1 - elkan_noto.c) / (elkan_noto.c * n_u),
                histogram=beta_from_pi(histogram.pi), scar_em=beta_from_pi(scar_em.pi))


def main(args):
    rows, missing_pulearn = [], False
    print(f"n_U = {args.n_u}, n_S = {args.n_s}; BBE interval at delta = 0.1 (90%)")
    print(f"{'clouds':<12} {'truth':>6} {'seed':>4} | {'BBE':>6} {'[lower, upper]':>16} | "
          f"{'Elkan-Noto':>10} {'hist':>6} {'SCAR-EM':>7} | {'s BBE':>5} {'s pulearn':>9}")
    for name, separation in SEPARATIONS.items():
        for beta in PRIORS:
            for seed in SEEDS:
                features_u, features_s = clouds(beta, separation, args.n_u, args.n_s, seed)
                start = time.perf_counter()
                bbe = estimate_prior_from_features(features_u, features_s, seed=seed)
                bbe_time = time.perf_counter() - start
                start = time.perf_counter()
                others = pulearn_estimates(features_u, features_s, seed)
                others_time = time.perf_counter() - start
                missing_pulearn |= others is None
                cells = ("-" * 10, "-" * 6, "-" * 7) if others is None else (
                    f"{others['elkan_noto']:10.4f}", f"{others['histogram']:6.4f}",
                    f"{others['scar_em']:7.4f}")
                print(f"{name:<12} {beta:6.4f} {seed:4d} | {bbe.beta:6.4f} "
                      f"[{bbe.lower:.4f}, {bbe.upper:.4f}] | {cells[0]} {cells[1]} {cells[2]} | "
                      f"{bbe_time:5.2f} {others_time:9.2f}")
                rows.append((name, beta, bbe, others))

    print("\nmean |estimate - truth| over priors and seeds (BBE coverage: truth in its interval)")
    for name in SEPARATIONS:
        mine = [r for r in rows if r[0] == name]
        summary = (f"{name:<12} BBE {np.mean([abs(r[2].beta - r[1]) for r in mine]):.4f} "
                   f"(covered {sum(r[2].lower <= r[1] <= r[2].upper for r in mine)}/{len(mine)})")
        if not missing_pulearn:
            for key in ("elkan_noto", "histogram", "scar_em"):
                summary += f"  {key} {np.mean([abs(r[3][key] - r[1]) for r in mine]):.4f}"
        print(summary)
    if missing_pulearn:
        print("\npulearn is not installed: its columns are skipped (pip install pulearn to fill them).")


if __name__ == "__main__":
    main(parse_args())
