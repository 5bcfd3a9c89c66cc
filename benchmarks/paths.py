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

from benchmarks import measure
from benchmarks.synthetic_mnist import write_mnist
from utils.data import PUDataset, image_transform, load_dataset, materialize, place_on_device
from utils.errors import UsageError
from utils.run import DEFAULT_BETA
from utils.training import make_loader, train

SYNTHETIC_TEST_IMAGES = 10   # torchvision's MNIST wants a test split; the benchmark never reads it


def per_item_views(config, args, folder, sizes):
    """Per-item views of the train split (the paper's transforms), one per size in `sizes`, with
    seeded PU labels at the config's share of S; and a note on where the images came from."""
    data_dir, source = args.data_dir, f"{config.dataset} in {args.data_dir}"
    if data_dir is None and config.dataset == "MNIST":
        data_dir, source = write_mnist(folder, sum(sizes), SYNTHETIC_TEST_IMAGES, args.seed), "synthetic MNIST (idx)"
    elif data_dir is None and config.dataset == "Digits":
        source = "scikit-learn digits"
    elif data_dir is None:
        raise UsageError(f"{config.dataset} needs --data_dir with its files; only MNIST has a synthetic stand-in")
    base, _ = load_dataset(config, data_dir, train=True, transform=image_transform(config))
    rng = np.random.default_rng(args.seed)
    indices = np.resize(rng.permutation(len(base)), sum(sizes))     # repeats when the split is smaller
    s_share = config.n_s / (config.n_sensitive_drawn + config.n_u_normal)
    labels = (rng.random(sum(sizes)) < s_share).astype(np.int64)
    bounds = np.cumsum([0, *sizes])
    return [PUDataset(base, indices[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])], source


def timed_train(accelerator, model, noise_scheduler, dataset, config, args):
    """(trained model, seconds) for one epoch of utils.training.train over `dataset`."""
    def run():
        with contextlib.redirect_stdout(sys.stderr):   # the loop's progress lines; stdout is the JSON
            return train(accelerator, model, noise_scheduler, dataset, algorithm=args.algorithm, beta=DEFAULT_BETA,
                         correction="abs", config=config, seed=args.seed, channels_last=args.channels_last,
                         data_on_device=args.data_on_device, compile_model=args.compile)
    return measure.timed(accelerator.device, run)


def timed_loader(dataset, device, args, batch):
    """Seconds to draw every batch of `dataset` onto `device` with the loop's loader and no model."""
    def run():
        for x, y in make_loader(place_on_device(dataset, device, args.data_on_device), batch, args.seed):
            x.to(device), y.to(device)
    return measure.timed(device, run)[1]


def time_training(accelerator, pristine, noise_scheduler, config, args, warm, timed):
    """Seconds of the loader alone and of training, for ours and naive, and ours' materialization."""
    device, batch = accelerator.device, config.batch_size
    ours_warm = materialize(warm)
    ours, materialize_s = measure.timed(device, lambda: materialize(timed))
    paths = dict(ours=(ours_warm, ours), naive=(warm, timed))
    loader_s = {name: timed_loader(data, device, args, batch) for name, (_, data) in paths.items()}
    models, train_s = {}, {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, (warm_data, data) in paths.items():
            model, _ = timed_train(accelerator, copy.deepcopy(pristine), noise_scheduler, warm_data, config, args)
            models[name], seconds = timed_train(accelerator, model, noise_scheduler, data, config, args)
            train_s[name].append(seconds)
    return materialize_s, loader_s, train_s, models["ours"]
