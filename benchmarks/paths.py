"""The two training data paths the benchmark compares, each through the loop the scripts run.

ours: the paper's deterministic transforms applied once (utils.data.materialize), the tensors on
the GPU when they fit, one gather per batch. naive: the torchvision dataset with the transforms
applied per item in the main process, as a plain pipeline does (DataLoader, num_workers=0,
shuffle=True). Both go through utils.training.train with the same images, labels and options.
"""
import contextlib
import copy
import sys

import numpy as np
import torch

from benchmarks import measure
from benchmarks.synthetic_mnist import write_mnist
from configs import DEFAULT_BETA
from utils.data import LabeledSubset, image_transform, load_dataset, materialize, place_on_device
from utils.errors import UsageError
from utils.training import TrainingData, TrainingSpec, make_train_loader, train

SYNTHETIC_TEST_IMAGES = 10   # torchvision's MNIST wants a test split; the benchmark never reads it


def per_item_views(config, args, folder):
    """Per-item views (the paper's transforms) of --warmup_steps and of --warmup_steps + --steps
    batches of the train split, the first a prefix of the second, with seeded PU labels at the
    config's share of S; and a note on where the images came from."""
    short, long = args.warmup_steps * config.batch_size, (args.warmup_steps + args.steps) * config.batch_size
    data_dir, source = args.data_dir, f"{config.dataset} in {args.data_dir}"
    if data_dir is None and config.dataset == "MNIST":
        data_dir, source = write_mnist(folder, long, SYNTHETIC_TEST_IMAGES, args.seed), "synthetic MNIST (idx)"
    elif data_dir is None and config.dataset == "Digits":
        source = "scikit-learn digits"
    elif data_dir is None:
        raise UsageError(f"{config.dataset} needs --data_dir with its files; only MNIST has a synthetic stand-in")
    base, _ = load_dataset(config, data_dir, train=True, transform=image_transform(config))
    rng = np.random.default_rng(args.seed)
    indices = np.resize(rng.permutation(len(base)), long)     # repeats when the split is smaller
    s_share = config.n_s / (config.n_sensitive_drawn + config.n_u_normal)
    labels = (rng.random(long) < s_share).astype(np.int64)
    return LabeledSubset(base, indices[:short], labels[:short]), LabeledSubset(base, indices, labels), source


def timed_train(accelerator, model, noise_scheduler, dataset, config, args):
    """(trained model, seconds) for one epoch of utils.training.train over `dataset`."""
    if args.compile:
        # Every call prepares the model afresh, which dynamo sees as a new forward; without a reset
        # the recompilations would pile up to its limit and it would fall back to eager.
        torch._dynamo.reset()

    def run():
        with contextlib.redirect_stdout(sys.stderr):   # the loop's progress lines; stdout is the JSON
            spec = TrainingSpec(config, args.algorithm, DEFAULT_BETA, seed=args.seed, channels_last=args.channels_last,
                                compile=args.compile, data_on_device=args.data_on_device)
            return train(accelerator, model, noise_scheduler, TrainingData(dataset), spec)
    return measure.timed(accelerator.device, run)


def timed_loader(dataset, device, args, batch):
    """Seconds to draw every batch of `dataset` onto `device` with the loop's loader and no model."""
    def run():
        for x, y in make_train_loader(place_on_device(dataset, device, args.data_on_device), batch, args.seed):
            x.to(device), y.to(device)
    return measure.timed(device, run)[1]


def time_training(accelerator, pristine, noise_scheduler, config, args, short, long):
    """Seconds of --steps batches for ours and naive (each repeat's), of the loader alone over the
    long view, and of ours' materialization of it; and a model trained by our path.

    Each training figure is the difference between a run over `long` and one over `short`, both from
    a fresh copy of `pristine`: the set-up, compilation and first batches cancel. An untimed run over
    `short` first fills the caches (kernels, cuDNN's choices, compiled graphs).
    """
    device, batch = accelerator.device, config.batch_size
    ours_short = materialize(short)
    ours_long, materialize_s = measure.timed(device, lambda: materialize(long))
    paths = dict(ours=(ours_short, ours_long), naive=(short, long))
    loader_s = {name: timed_loader(data, device, args, batch) for name, (_, data) in paths.items()}
    train_s, models = {name: [] for name in paths}, {}
    for name, (short_data, _) in paths.items():
        timed_train(accelerator, copy.deepcopy(pristine), noise_scheduler, short_data, config, args)
    for _ in range(args.repeats):
        for name, (short_data, long_data) in paths.items():
            _, short_s = timed_train(accelerator, copy.deepcopy(pristine), noise_scheduler, short_data, config, args)
            models[name], long_s = timed_train(accelerator, copy.deepcopy(pristine), noise_scheduler, long_data,
                                               config, args)
            train_s[name].append(long_s - short_s)
    return materialize_s, loader_s, train_s, models["ours"]
