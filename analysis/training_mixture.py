"""The class mixture a model was trained on, as the truth and as the class classifier sees it.

    python analysis/training_mixture.py FashionMNIST_clothes_cpu --seed 0 --data_dir DIR [--output_dir runs/fashion]

An Unsupervised model trains on U alone, so its samples should reproduce U's class shares. This
prints, per class, U's true share (from the dataset's labels) and the share the cached class
classifier (utils.classifier, task CLASSES; trained on first use) gives U's real images: the level
a sample share is read against, since the classifier's own confusions move shares too. Reads the
split the run drew (same config and seed); writes nothing but a classifier cache on first use.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from configs import CONFIGS, get_config  # noqa: E402
from utils.classifier import CLASSES, PREDICT_BATCH, features_and_predictions, labeled_split, \
    load_or_train_classifier, num_outputs  # noqa: E402
from utils.cli import seed_value  # noqa: E402
from utils.data import dataset_spec, pu_split  # noqa: E402
from utils.errors import exits_on_usage_error  # noqa: E402
from utils.metrics import batches  # noqa: E402


def mixture(config_name, seed, data_dir, output_dir):
    """{class: (true share of U, class classifier's share of U's images)} and U's size."""
    config = get_config(config_name)
    train = labeled_split(config, data_dir, train=True, task=CLASSES)    # every train image with its class
    u = pu_split(train.labels, config, seed).indices[config.n_s:]          # the split puts S first
    judge, _ = load_or_train_classifier(config_name, config, data_dir, output_dir, "cpu", task=CLASSES)
    images = torch.stack([train[int(i)][0] for i in u])
    _, predicted = features_and_predictions(judge, batches(images, PREDICT_BATCH), "cpu")
    k = num_outputs(config, CLASSES)
    true = np.bincount(train.labels[u], minlength=k) / len(u)
    seen = np.bincount(predicted.numpy(), minlength=k) / len(u)
    return {c: (true[c], seen[c]) for c in range(k)}, len(u)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_name", choices=tuple(CONFIGS))
    parser.add_argument("--seed", type=seed_value, default=0, help="the run's seed (it draws the split)")
    parser.add_argument("--data_dir", default="datasets")
    parser.add_argument("--output_dir", default=".", help="root holding checkpoints/classifiers/")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    config = get_config(args.config_name)
    shares, n_u = mixture(args.config_name, args.seed, args.data_dir, args.output_dir)
    names = dataset_spec(config.dataset).class_names
    print(f"U of {args.config_name}, seed {args.seed}: {n_u} images (* sensitive)")
    print("| class | true share | class classifier's share |\n|---|---|---|")
    for c, (true, seen) in shares.items():
        star = "" if c in config.normal_classes else "*"
        print(f"| {names[c]}{star} | {true:.3f} | {seen:.3f} |")
    sensitive = [c for c in shares if c not in config.normal_classes]
    print(f"| sensitive, all | {sum(shares[c][0] for c in sensitive):.3f} | {sum(shares[c][1] for c in sensitive):.3f} |")


if __name__ == "__main__":
    main(parse_args())
