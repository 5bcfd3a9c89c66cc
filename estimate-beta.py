"""Estimate the class prior beta (the share of sensitive data in U) from U and the labeled S.

    python estimate-beta.py --config_name MNIST_even --seed 42
    python estimate-beta.py --config_name SD --data_dir datasets/middle_aged_man100 --json
    python estimate-beta.py --train_data_dir DIR --resolution 32

Image configs: the PU split that training draws for --seed (and the same count overrides), scored by
the dataset's own classifier recipe trained on S against U in 5 folds. An image folder
(--train_data_dir, docs/own-data.md): its unlabeled/ and sensitive/ as main.py --beta auto reads them,
with --config_name the recipe (default FashionMNIST_clothes_cpu). SD: the two image folders, scored by
logistic regression on CLIP image features. Either way the best-bin estimator (utils/prior.py) gives
the estimate, a 90% interval and a warning where its assumption looks violated.
"""
import argparse
import contextlib
import json
import sys

import torch

from configs import CONFIGS, DEFAULT_FOLDER_CONFIG, DEFAULT_SEED, get_config, with_overrides
from configs.sd import SD_CONFIG, SD_CONFIG_NAME
from models.pretrained import load_clip
from utils.cli import DATA_COUNT_ARGS, add_folder_args, seed_value, settle_config_name
from utils.data import load_pu_data
from utils.errors import UsageError, exits_on_usage_error
from utils.folders import folder_config, folder_overrides, load_folder_data, scan_folder
from utils.prior import check_prior_counts
from utils.prior_data import estimate_prior_for_images, estimate_prior_for_sd
from utils.sd import POSITIVE, UNLABELED, sd_data_dirs, validate_sd_folder

COUNT_NAMES = ("n_u_normal", "n_u_sensitive", "n_s")   # the test set plays no part in the estimate
IMAGE_DATA_DIR = "datasets"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_name", choices=(*CONFIGS, SD_CONFIG_NAME),
                        help="an experiment of the config registry, or SD for the Stable Diffusion folders; with "
                             f"--train_data_dir the recipe of the folds (default then: {DEFAULT_FOLDER_CONFIG})")
    counts = parser.add_argument_group("PU data counts (image configs; as given to the training script)")
    for name in COUNT_NAMES:
        kind, what = DATA_COUNT_ARGS[name]
        counts.add_argument(f"--{name}", type=kind, help=f"{what} (default: the config's)")
    parser.add_argument("--seed", type=seed_value, default=DEFAULT_SEED,
                        help="the training run's seed, which draws its PU split; it also seeds the folds "
                             "(default: %(default)s)")
    parser.add_argument("--data_dir", help=f"data folder (default: {IMAGE_DATA_DIR}; for SD, {SD_CONFIG.data_dir})")
    parser.add_argument("--clip_model", default=SD_CONFIG.clip_model,
                        help="SD only: hub id or folder of the CLIP model (default: %(default)s)")
    parser.add_argument("--classifier_weights",
                        help="local torchvision ResNet-18 ImageNet weights for the CIFAR10/STL10/CelebA folds, as "
                             "main.py --beta auto takes them (default: torchvision's download)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_folder_args(parser)
    args = parser.parse_args(argv)
    if not (args.config_name or args.train_data_dir):
        parser.error("pass --config_name (a config, or SD) or --train_data_dir (an image folder)")
    return settle_config_name(parser, args, None, DEFAULT_FOLDER_CONFIG)


def estimate_prior(args, device):
    """(PriorEstimate, the true prior where the config knows it, else None) for `args`."""
    overrides = {name: getattr(args, name) for name in COUNT_NAMES}
    if args.train_data_dir:   # an image folder: U's labels are unknown, so there is no true prior to show
        if args.config_name == SD_CONFIG_NAME:
            raise UsageError("--train_data_dir takes an image config as the recipe; for SD pass --data_dir instead")
        folder = scan_folder(args.train_data_dir)
        config = folder_config(get_config(args.config_name), folder)
        config = with_overrides(config, **folder_overrides(config, args.resolution, args.channels))
        check_prior_counts(len(folder.unlabeled), len(folder.sensitive))   # before any image is decoded
        train = load_folder_data(config, folder).train
        return estimate_prior_for_images(train, config, device, seed=args.seed,
                                         weights_path=args.classifier_weights), None
    if args.config_name == SD_CONFIG_NAME:
        given = [f"--{name}" for name, value in overrides.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only image configs take data counts; SD's U and S are the images in "
                             f"{SD_CONFIG.unlabeled_dir}/ and {SD_CONFIG.positive_dir}/ of --data_dir")
        data_dir = args.data_dir or SD_CONFIG.data_dir
        files = validate_sd_folder(data_dir, with_overrides(SD_CONFIG, **sd_data_dirs(data_dir)))
        check_prior_counts(len(files[UNLABELED]), len(files[POSITIVE]))   # before CLIP loads
        return estimate_prior_for_sd(files, load_clip(args.clip_model), device, seed=args.seed), None
    config = with_overrides(get_config(args.config_name), **overrides)
    check_prior_counts(config.n_u_normal + config.n_u_sensitive, config.n_s)   # before any data loads
    train = load_pu_data(config, args.data_dir or IMAGE_DATA_DIR, args.seed).train
    return (estimate_prior_for_images(train, config, device, seed=args.seed, weights_path=args.classifier_weights),
            config.true_prior)


@exits_on_usage_error
def main(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # With --json, stdout holds the one JSON object: notes printed on the way go to stderr.
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        estimate, truth = estimate_prior(args, device)
    if args.json:
        print(json.dumps(dict(config_name=args.config_name, seed=args.seed, **estimate.to_record(),
                              true_prior=truth)))
        return
    print(f"{args.config_name} (seed {args.seed}): beta = {estimate.beta:.4f}, "
          f"{1 - estimate.delta:.0%} interval [{estimate.lower:.4f}, {estimate.upper:.4f}]; "
          f"n_U = {estimate.n_u}, n_S = {estimate.n_s}; {estimate.method}; the top bin (score >= "
          f"{estimate.threshold:.3g}) holds {estimate.q_s:.1%} of S and {estimate.q_u:.1%} of U")
    if truth is not None:
        print(f"the split's true share, known to this config: {truth:.4f}")
    print(f"warning: {estimate.warning}" if estimate.warning else "no warning: the top-bin checks passed")


if __name__ == "__main__":
    main(parse_args())
