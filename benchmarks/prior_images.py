"""The class prior estimated from real PU images against the known truth (`--beta auto`; docs/results.md).

    OMP_NUM_THREADS=1 python benchmarks/prior_images.py --config_name Digits_even
    OMP_NUM_THREADS=1 python benchmarks/prior_images.py --config_name FashionMNIST_clothes \\
        --data_dir /tmp/fm --n_u_normal 5000 --n_s 500

For each true prior and seed: the PU split that training draws for that seed (utils.data.load_pu_data)
and the estimate of estimate-beta.py (utils.prior_data.estimate_prior_for_images, the config's classifier
recipe, 5 folds, a 90% interval). The true prior varies through the sensitive images hidden in U:
n_u_normal x 1/20, 1/10 and 1/4 by default (priors 0.048, 0.091 and 0.2), or --n_u_sensitive.
Prints one row per estimate, then the mean absolute error and the interval's coverage per prior.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from configs import CONFIGS, get_config, with_overrides  # noqa: E402
from utils.cli import DATA_COUNT_ARGS, non_negative_int, seed_value  # noqa: E402
from utils.data import load_pu_data  # noqa: E402
from utils.prior_data import estimate_prior_for_images  # noqa: E402

SENSITIVE_PER_NORMAL = (1 / 20, 1 / 10, 1 / 4)   # priors 1/21, 1/11, 1/5
SEEDS = (0, 1, 2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_name", default="Digits_even", choices=tuple(CONFIGS))
    parser.add_argument("--data_dir", default="datasets", help="data folder (default: %(default)s)")
    for name in ("n_u_normal", "n_s"):
        kind, what = DATA_COUNT_ARGS[name]
        parser.add_argument(f"--{name}", type=kind, help=f"{what} (default: the config's)")
    parser.add_argument("--n_u_sensitive", type=non_negative_int, nargs="+",
                        help="sensitive images hidden in U, one true prior each "
                             "(default: n_u_normal x 1/20, 1/10, 1/4)")
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=SEEDS, help="default: 0 1 2")
    return parser.parse_args(argv)


def main(args):
    base = with_overrides(get_config(args.config_name), n_u_normal=args.n_u_normal, n_s=args.n_s)
    counts = args.n_u_sensitive or [round(base.n_u_normal * r) for r in SENSITIVE_PER_NORMAL]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{args.config_name}: n_u_normal {base.n_u_normal}, n_s {base.n_s}, device {device}, "
          f"{torch.get_num_threads()} thread(s); 90% intervals")
    header = (f"{'truth':>6} {'seed':>4} | {'estimate':>8} {'[lower, upper]':>16} {'covered':>7} "
              f"{'|error|':>7} | {'s':>6} warning")
    rows = []
    for n_u_sensitive in counts:
        config = with_overrides(base, n_u_sensitive=n_u_sensitive)
        for seed in args.seeds:
            start = time.perf_counter()
            train = load_pu_data(config, args.data_dir, seed).train
            estimate = estimate_prior_for_images(train, config, device, seed=seed)
            seconds = time.perf_counter() - start
            truth = config.true_prior
            covered = estimate.lower <= truth <= estimate.upper
            error = abs(estimate.beta - truth)
            rows.append((truth, covered, error, seconds))
            if len(rows) == 1:
                print(header)
            print(f"{truth:6.4f} {seed:4d} | {estimate.beta:8.4f} [{estimate.lower:.4f}, {estimate.upper:.4f}] "
                  f"{'yes' if covered else 'NO':>7} {error:7.4f} | {seconds:6.1f} {estimate.warning or '-'}",
                  flush=True)

    print(f"\n{'truth':>6} {'n_U':>6} | {'mean |error|':>12} {'covered':>7}")
    for n_u_sensitive in counts:
        truth = with_overrides(base, n_u_sensitive=n_u_sensitive).true_prior
        mine = [r for r in rows if r[0] == truth]
        print(f"{truth:6.4f} {base.n_u_normal + n_u_sensitive:6d} | {np.mean([r[2] for r in mine]):12.4f} "
              f"{sum(r[1] for r in mine):3d}/{len(mine)}")
    print(f"{'all':>6} {'':>6} | {np.mean([r[2] for r in rows]):12.4f} {sum(r[1] for r in rows):3d}/{len(rows)}"
          f"   ({sum(r[3] for r in rows):.0f} s in all)")


if __name__ == "__main__":
    main(parse_args())
