"""How far the sensitive share alone moves fd_classes, precision and recall: real images mixed at chosen shares.

    python analysis/fd_by_sensitive_share.py FashionMNIST_clothes_cpu --shares 0 0.073 0.082 --data_dir DIR

fd_classes, precision and recall compare the samples with the normal-only test set, so a model
that draws the sensitive classes its training data holds is farther from that reference than one
that draws none, however good its images. This measures that part without any model: sets of
--num_images real images (as many as the evaluation samples), a share p of them drawn at random
from the sensitive classes and the rest from the normal ones, in the class classifier's features
(utils.classifier, task CLASSES; trained on first use). Per share it prints fd_classes, precision
and recall (k = 3), each mean ± sample std over --draws draws: the values real images get, to read
a model's beside. --pool train draws from the train split against the evaluation's reference (all
normal test images), but the classifier trained on those images; --pool test draws from images it
never saw, half the normal test images, against the other half. Writes nothing but a classifier
cache on first use.
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from configs import CONFIGS, get_config  # noqa: E402
from utils.classifier import CLASSES, PREDICT_BATCH, classifier_loader, features_and_predictions, labeled_split, \
    load_or_train_classifier  # noqa: E402
from utils.cli import seed_value  # noqa: E402
from utils.data import normal_test_set  # noqa: E402
from utils.errors import UsageError, exits_on_usage_error  # noqa: E402
from utils.metrics import frechet_distance, precision_recall  # noqa: E402

DEVICE = torch.device("cpu")
POOLS = ("train", "test")


def class_features(judge, dataset):
    """The class classifier's penultimate features [N, D] of every image of `dataset`."""
    features, _ = features_and_predictions(judge, (x for x, _ in classifier_loader(dataset, PREDICT_BATCH, DEVICE)),
                                           DEVICE)
    return features


def real_sets(config, judge, data_dir, pool, seed):
    """(features of the normal pool, of the sensitive pool, of the reference) in the judge's features.

    pool "train": the train split's images (the judge trained on them) against the evaluation's
    reference, every normal test image. pool "test": images the judge never saw, from the test split:
    its normal images are halved at random (`seed`), one half the pool and the other the reference,
    and every sensitive test image joins the pool.
    """
    split = labeled_split(config, data_dir, train=pool == "train", task=CLASSES)
    features = class_features(judge, split)
    is_normal = np.isin(split.labels, config.normal_classes)
    normal, sensitive = np.flatnonzero(is_normal), np.flatnonzero(~is_normal)
    if pool == "train":
        return features[normal], features[sensitive], class_features(judge, normal_test_set(config, data_dir))
    halves = np.array_split(np.random.default_rng(seed).permutation(normal), 2)
    return features[halves[0]], features[sensitive], features[halves[1]]


def measures_at_shares(config_name, shares, num_images, draws, seed, data_dir, output_dir, pool="train"):
    """({share: [(fd_classes, precision, recall) of each draw]}, reference size) of real images from
    `pool` (real_sets) mixed at each sensitive share."""
    config = get_config(config_name)
    judge, _ = load_or_train_classifier(config_name, config, data_dir, output_dir, DEVICE, task=CLASSES)
    normal, sensitive, reference = real_sets(config, judge, data_dir, pool, seed)
    largest = max(shares)
    if round(largest * num_images) > len(sensitive) or num_images - round(min(shares) * num_images) > len(normal):
        raise UsageError(f"--num_images {num_images} at shares {min(shares)}-{largest} needs more images than the "
                         f"{pool} pool's {len(normal)} normal and {len(sensitive)} sensitive; pass fewer")
    rng = np.random.default_rng(seed)
    result = {}
    for share in shares:
        n_sensitive = round(share * num_images)
        result[share] = []
        for _ in range(draws):
            chosen_s = torch.from_numpy(rng.choice(len(sensitive), n_sensitive, replace=False))
            chosen_n = torch.from_numpy(rng.choice(len(normal), num_images - n_sensitive, replace=False))
            features = torch.cat([sensitive[chosen_s], normal[chosen_n]])
            result[share].append((frechet_distance(features, reference), *precision_recall(features, reference)))
    return result, len(reference)


def share_value(text):
    """argparse type: a sensitive share in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a sensitive share is in [0, 1], got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_name", choices=tuple(CONFIGS))
    parser.add_argument("--shares", type=share_value, nargs="+", default=[0.0, 0.05, 0.1],
                        help="sensitive shares of the image sets")
    parser.add_argument("--num_images", type=int, default=1000, help="images per set (the evaluation's samples)")
    parser.add_argument("--draws", type=int, default=5, help="random sets per share")
    parser.add_argument("--pool", choices=POOLS, default=POOLS[0],
                        help="where the real images come from: the train split (which the class classifier "
                             "trained on) or half the normal test images, the other half the reference")
    parser.add_argument("--seed", type=seed_value, default=0, help="seeds the draws (and the test split's halves)")
    parser.add_argument("--data_dir", default="datasets")
    parser.add_argument("--output_dir", default=".", help="root holding checkpoints/classifiers/")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    if args.num_images < 2 or args.draws < 2:
        raise UsageError(f"--num_images and --draws must be at least 2 (a covariance and a std need two), got "
                         f"{args.num_images} and {args.draws}")
    measures, n_reference = measures_at_shares(args.config_name, args.shares, args.num_images, args.draws, args.seed,
                                               args.data_dir, args.output_dir, args.pool)
    print(f"{args.config_name}: {args.num_images} real {args.pool} images against {n_reference} normal test images, "
          f"{args.draws} draws (seed {args.seed})")
    print("| sensitive share | fd_classes | precision | recall |\n|---|---|---|---|")
    for share, draws in measures.items():
        cells = [f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for v in zip(*draws)]
        print(f"| {share:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(parse_args())
