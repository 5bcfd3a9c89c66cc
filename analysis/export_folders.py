"""Write a config's PU split as image folders, so that the same experiment runs through --train_data_dir
and can be compared with the config's own route.

    python analysis/export_folders.py FashionMNIST_clothes_cpu --seed 0 --data_dir DIR --output_dir folders/fashion
    python main.py --train_data_dir folders/fashion --resolution 16 --algorithm PU --seed 0

Writes, as 000000.png, 000001.png, ... in the order of the split that main.py draws for the same config
and seed (docs/own-data.md gives the layout):

    OUT/unlabeled/        U: the sensitive images hidden in it, then its normal ones
    OUT/sensitive/        S
    OUT/test/normal/      the config's normal test set (its first n_test normal test images)
    OUT/test/sensitive/   the first --n_test_sensitive sensitive test images (default: n_test, or all
                          of them where the test split holds fewer, e.g. Fashion-MNIST clothes' 4,000 against 6,000)
    OUT/unlabeled_truth.csv   each U file's class and whether it is sensitive, for analysis only: the
                              training scripts read images, never this file

Each image is the dataset's own (before the config's resize). For the datasets torchvision serves as
images (MNIST, Fashion-MNIST, CIFAR10, STL10, CelebA), --train_data_dir OUT with --resolution set to the
config's image size and 3 channels (the default) then trains on the same tensors in the same order as
the config does; the digits, served as float tensors already resized, are rounded to 8 bits. The
folders' judge differs: it trains on test/ (utils/folders.py) where the config's trains on the whole
train split. OUT must not exist yet; it is written aside and renamed into place.
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from torchvision.transforms.functional import to_pil_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from configs import CONFIGS, DEFAULT_SEED, get_config, with_overrides  # noqa: E402
from utils.cli import DATA_COUNT_ARGS, non_negative_int, seed_value  # noqa: E402
from utils.data import load_dataset, pu_split, test_indices  # noqa: E402
from utils.errors import UsageError, exits_on_usage_error  # noqa: E402
from utils.files import save_folder_atomically  # noqa: E402
from utils.folders import SENSITIVE, TEST_NORMAL, TEST_SENSITIVE, UNLABELED  # noqa: E402

TRUTH_FILE = "unlabeled_truth.csv"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_name", choices=tuple(CONFIGS))
    parser.add_argument("--seed", type=seed_value, default=DEFAULT_SEED,
                        help="the training run's seed, which draws its PU split (default: %(default)s)")
    counts = parser.add_argument_group("PU data counts (as given to main.py)")
    for name, (kind, what) in DATA_COUNT_ARGS.items():
        counts.add_argument(f"--{name}", type=kind, help=f"{what} (default: the config's)")
    parser.add_argument("--n_test_sensitive", type=non_negative_int,
                        help="sensitive test images for test/sensitive/ (default: n_test, or all of the test split's "
                             "where it holds fewer; 0 leaves the folder out)")
    parser.add_argument("--data_dir", default="datasets", help="data root (default: %(default)s)")
    parser.add_argument("--output_dir", required=True, help="the folder to write (must not exist)")
    return parser.parse_args(argv)


def as_image(item):
    """A dataset item's image as PIL: torchvision's own, or a [C, H, W] tensor in [0, 1] rounded to 8 bits."""
    return item if hasattr(item, "save") else to_pil_image(item)


def split_files(config, data_dir, seed, n_test_sensitive):
    """{part: [(dataset, index, class)]} of every image to write, in the split's order; `n_test_sensitive`
    None takes n_test sensitive test images, or all of them where the test split holds fewer."""
    train, train_targets = load_dataset(config, data_dir, train=True)
    test, test_targets = load_dataset(config, data_dir, train=False)
    split = pu_split(train_targets, config, seed)
    s, u = split.indices[:config.n_s], split.indices[config.n_s:]
    sensitive_test = np.flatnonzero(~np.isin(test_targets, config.normal_classes))
    if n_test_sensitive is None:
        n_test_sensitive = min(config.n_test, len(sensitive_test))
    elif n_test_sensitive > len(sensitive_test):
        raise UsageError(f"asked for {n_test_sensitive} sensitive test images but the test split holds only "
                         f"{len(sensitive_test)}; lower --n_test_sensitive")
    return {UNLABELED: [(train, i, train_targets[i]) for i in u], SENSITIVE: [(train, i, train_targets[i]) for i in s],
            TEST_NORMAL: [(test, i, test_targets[i]) for i in test_indices(test_targets, config)],
            TEST_SENSITIVE: [(test, i, test_targets[i]) for i in sensitive_test[:n_test_sensitive]]}


def export(config, data_dir, seed, output_dir, n_test_sensitive):
    """Write the folders; returns {part: image count}."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise UsageError(f"{output_dir} exists; pass a new --output_dir")
    files = split_files(config, data_dir, seed, n_test_sensitive)

    def write(tmp):
        for part, items in files.items():
            if not items:
                continue
            (tmp / part).mkdir(parents=True)
            for n, (dataset, i, _) in enumerate(items):
                as_image(dataset[int(i)][0]).save(tmp / part / f"{n:06d}.png")
        with open(tmp / TRUTH_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "class", "sensitive"])
            for n, (_, _, target) in enumerate(files[UNLABELED]):
                writer.writerow([f"{UNLABELED}/{n:06d}.png", int(target), int(target not in config.normal_classes)])
    save_folder_atomically(output_dir, write)
    return {part: len(items) for part, items in files.items()}


@exits_on_usage_error
def main(args):
    config = with_overrides(get_config(args.config_name), **{name: getattr(args, name) for name in DATA_COUNT_ARGS})
    counts = export(config, args.data_dir, args.seed, args.output_dir, args.n_test_sensitive)
    print(f"{args.output_dir}: " + ", ".join(f"{part}/ {n}" for part, n in counts.items())
          + f" images ({args.config_name}, seed {args.seed}; U holds {config.n_u_sensitive} sensitive); "
          f"train with --train_data_dir {args.output_dir} --resolution {config.image_size}")


if __name__ == "__main__":
    main(parse_args())
