"""How far the sensitive share alone moves fd_classes, precision and recall: real images mixed at chosen shares.

    python analysis/fd_by_sensitive_share.py FashionMNIST_clothes_cpu --shares 0 0.073 0.082 --data_dir DIR

fd_classes, precision and recall compare the samples with the normal-only test set, so a model
that draws the sensitive classes its training data holds is farther from that reference than one
that draws none, however good its images. This measures that part without any model: sets of `--num_images` real training
images (as many as the evaluation samples), each a share p of sensitive images drawn at random from
the train split's sensitive classes and the rest from its normal classes, in the class classifier's
features (utils.classifier, task CLASSES; trained on first use). Per share it prints fd_classes,
precision and recall (k = 3) against the normal-only test set, each mean ± sample std over `--draws`
draws: the values real images get, to read a model's beside. Writes nothing but a
classifier cache on first use.
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


def class_features(judge, dataset):
    """The class classifier's penultimate features [N, D] of every image of `dataset`."""
    features, _ = features_and_predictions(judge, (x for x, _ in classifier_loader(dataset, PREDICT_BATCH, DEVICE)),
                                           DEVICE)
    return features


def measures_at_shares(config_name, shares, num_images, draws, seed, data_dir, output_dir):
    """{share: [(fd_classes, precision, recall) of each draw]} of real train images mixed at each
    sensitive share."""
    config = get_config(config_name)
    judge, _ = load_or_train_classifier(config_name, config, data_dir, output_dir, DEVICE, task=CLASSES)
    train = labeled_split(config, data_dir, train=True, task=CLASSES)
    pool = class_features(judge, train)
    reference = class_features(judge, normal_test_set(config, data_dir))
    is_normal = np.isin(train.labels, config.normal_classes)
    normal, sensitive = np.flatnonzero(is_normal), np.flatnonzero(~is_normal)
    largest = max(shares)
    if round(largest * num_images) > len(sensitive) or num_images - round(min(shares) * num_images) > len(normal):
        raise UsageError(f"--num_images {num_images} at shares {min(shares)}-{largest} needs more images than the "
                         f"train split's {len(normal)} normal and {len(sensitive)} sensitive; pass fewer")
    rng = np.random.default_rng(seed)
    result = {}
    for share in shares:
        n_sensitive = round(share * num_images)
        result[share] = []
        for _ in range(draws):
            chosen = np.concatenate([rng.choice(sensitive, n_sensitive, replace=False),
                                     rng.choice(normal, num_images - n_sensitive, replace=False)])
            features = pool[torch.from_numpy(chosen)]
            result[share].append((frechet_distance(features, reference), *precision_recall(features, reference)))
    return result


def share_value(text):
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
    parser.add_argument("--seed", type=seed_value, default=0, help="seeds the draws")
    parser.add_argument("--data_dir", default="datasets")
    parser.add_argument("--output_dir", default=".", help="root holding checkpoints/classifiers/")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    if args.num_images < 2 or args.draws < 2:
        raise UsageError(f"--num_images and --draws must be at least 2 (a covariance and a std need two), got "
                         f"{args.num_images} and {args.draws}")
    measures = measures_at_shares(args.config_name, args.shares, args.num_images, args.draws, args.seed, args.data_dir,
                       args.output_dir)
    print(f"{args.config_name}: {args.num_images} real train images against the normal-only test set, "
          f"{args.draws} draws (seed {args.seed})")
    print("| sensitive share | fd_classes | precision | recall |\n|---|---|---|---|")
    for share, draws in measures.items():
        cells = [f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for v in zip(*draws)]
        print(f"| {share:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(parse_args())
