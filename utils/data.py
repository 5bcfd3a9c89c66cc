"""Datasets, the PU split, and the in-memory tensors that training iterates over.

Every dataset loads through torchvision (`download=True` into the data folder) or, for the digits,
scikit-learn. The PU split (DESIGN section 3) draws indices with its own generator seeded by --seed
and keeps the labels y in an array beside the dataset: nothing is ever written into a torchvision
dataset. Deterministic transforms are applied once (`materialize`) and the results kept as tensors,
since redoing them per item per epoch would make the loop data-bound. Image folders
(--train_data_dir) come from utils/folders.py as the same PUData.
"""
import gzip
import os
import pickle
import shutil
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T
from tqdm.auto import tqdm

from configs import CONFIGS
from utils.errors import UsageError, first_line
from utils.files import write_file_atomically

CELEBA_MALE_ATTR = 20       # index of "Male" among CelebA's 40 attributes
DIGITS_TRAIN_SIZE = 1500    # scikit-learn's digits: the first 1500 images are the train split
DIGITS_MAX_VALUE = 16.0     # digits pixels are integers 0..16


# torchvision checks the md5 of CIFAR10, STL10 and CelebA files on every load; a copy placed by hand
# (or a small fixture in the same format) would be rejected. Downloads are still md5-checked by
# torchvision; an existing local copy is trusted once its files are present.
class CIFAR10(tvd.CIFAR10):
    # _load_meta checks batches.meta's md5 separately; md5 None means "present is enough".
    meta = {**tvd.CIFAR10.meta, "md5": None}

    def _check_integrity(self):
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                   for f, _ in self.train_list + self.test_list)


class STL10(tvd.STL10):
    def _check_integrity(self):
        names = [self.train_list[0][0], self.train_list[1][0]] + [f for f, _ in self.test_list]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in names)


class CelebA(tvd.CelebA):
    def _check_integrity(self):
        folder = os.path.join(self.root, self.base_folder)
        lists = [f for _, _, f in self.file_list if not f.endswith(".zip")]
        return (all(os.path.isfile(os.path.join(folder, f)) for f in lists)
                and os.path.isdir(os.path.join(folder, "img_align_celeba")))


def gunzip_placed(raw_folder):
    """Decompress every `*.gz` idx file placed in `raw_folder` whose decompressed copy is missing.

    torchvision reads the decompressed idx files and only decompresses its own downloads, whose md5
    it knows; copies placed by hand (Debian's dataset-fashion-mnist package recompresses them, so
    their md5 differs) are decompressed here, written aside under a per-process name and renamed:
    runs started together on a fresh folder (a seed sweep in parallel) each write their own copy,
    and whichever rename lands last replaces an identical file.
    """
    if not os.path.isdir(raw_folder):
        return
    for name in os.listdir(raw_folder):
        target = os.path.join(raw_folder, name[:-len(".gz")])
        if name.endswith(".gz") and not os.path.exists(target):
            write_file_atomically(target, partial(gunzip, os.path.join(raw_folder, name)))


def gunzip(source, target):
    with gzip.open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


class MNIST(tvd.MNIST):
    def __init__(self, root, *args, **kwargs):
        gunzip_placed(os.path.join(root, type(self).__name__, "raw"))
        super().__init__(root, *args, **kwargs)


class FashionMNIST(tvd.FashionMNIST):
    def __init__(self, root, *args, **kwargs):
        gunzip_placed(os.path.join(root, type(self).__name__, "raw"))
        super().__init__(root, *args, **kwargs)


class Digits(Dataset):
    """scikit-learn's bundled 8x8 handwritten digits as 3-channel images in [0, 1], upsampled (bilinear)."""

    def __init__(self, train=True, image_size=16, transform=None):
        from sklearn.datasets import load_digits
        digits = load_digits()
        part = slice(0, DIGITS_TRAIN_SIZE) if train else slice(DIGITS_TRAIN_SIZE, None)
        images = torch.tensor(digits.images[part], dtype=torch.float32) / DIGITS_MAX_VALUE
        images = images[:, None].expand(-1, 3, -1, -1)
        self.data = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
        self.targets = digits.target[part].tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = self.data[i]
        return (self.transform(x) if self.transform else x), self.targets[i]


@dataclass(frozen=True)
class Recipe:
    """How a dataset's classifiers, the sensitivity judge and the class judge, are built and trained (utils.classifier)."""

    arch: str               # cnn | resnet18
    epochs: int
    batch_size: int
    learning_rate: float
    flip: bool              # random horizontal flips (natural images; never digits)


def load_digits(data_dir, train, transform, image_size):
    ds = Digits(train=train, image_size=image_size, transform=transform)
    return ds, np.asarray(ds.targets)


def load_mnist(data_dir, train, transform, image_size):
    ds = MNIST(data_dir, train=train, transform=transform, download=True)
    return ds, ds.targets.numpy()


def load_fashion_mnist(data_dir, train, transform, image_size):
    ds = FashionMNIST(data_dir, train=train, transform=transform, download=True)
    return ds, ds.targets.numpy()


def load_cifar10(data_dir, train, transform, image_size):
    ds = CIFAR10(data_dir, train=train, transform=transform, download=True)
    return ds, np.asarray(ds.targets)


def load_stl10(data_dir, train, transform, image_size):
    ds = STL10(data_dir, split="train" if train else "test", transform=transform, download=True)
    return ds, np.asarray(ds.labels)


def load_celeba(data_dir, train, transform, image_size):
    ds = CelebA(data_dir, split="train" if train else "test", target_type=[], transform=transform, download=True)
    return ds, ds.attr[:, CELEBA_MALE_ATTR].numpy()


def no_steps(image_size):
    return []   # the digits are tensors in [0, 1] at the config's size already


def grayscale_resized(image_size):
    return [T.Grayscale(3), T.Resize(image_size, antialias=True), T.ToTensor()]


def as_is(image_size):
    return [T.ToTensor()]


def resized_center_crop(image_size):
    # Aligned CelebA is 178 x 218: resize the short side, then crop the centre to a square.
    return [T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.ToTensor()]


DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the code knows about one dataset; its configs (configs/) add the numbers of a split."""

    load: Callable          # (data_dir, train, transform, image_size) -> (dataset, int64 class ids)
    transform: Callable     # image_size -> the deterministic steps that give a [0, 1] tensor (DESIGN section 3)
    classifier: Recipe      # the recipe of its classifiers (sensitivity and class; utils.classifier)
    from_scratch: bool      # main.py trains on it (DESIGN section 3); CelebA is only fine-tuned
    class_names: tuple      # the names of class ids 0, 1, ... (CelebA: of the Male attribute's values)


# The one dataset table: a new dataset is an entry here plus its lines in configs/.
DATASETS = {
    # 98-99% held-out classifier accuracy on either digits split in about 10 s on one CPU core.
    "Digits": DatasetSpec(load_digits, no_steps, Recipe("cnn", 10, 32, 2e-3, flip=False), from_scratch=True,
                          class_names=DIGIT_NAMES),
    "MNIST": DatasetSpec(load_mnist, grayscale_resized, Recipe("cnn", 5, 128, 2e-3, flip=False), from_scratch=True,
                         class_names=DIGIT_NAMES),
    "FashionMNIST": DatasetSpec(load_fashion_mnist, grayscale_resized, Recipe("cnn", 5, 128, 2e-3, flip=False),
                                from_scratch=True, class_names=FASHION_NAMES),
    "CIFAR10": DatasetSpec(load_cifar10, as_is, Recipe("resnet18", 3, 128, 1e-4, flip=True), from_scratch=True,
                           class_names=CIFAR10_NAMES),
    "STL10": DatasetSpec(load_stl10, as_is, Recipe("resnet18", 10, 64, 1e-4, flip=True), from_scratch=True,
                         class_names=STL10_NAMES),
    "CelebA": DatasetSpec(load_celeba, resized_center_crop, Recipe("resnet18", 2, 128, 1e-4, flip=True),
                          from_scratch=False, class_names=("female", "male")),
}
# The configs main.py supports.
SCRATCH_CONFIGS = tuple(name for name, c in CONFIGS.items() if DATASETS[c.dataset].from_scratch)


def dataset_spec(name):
    """The table entry of dataset `name`; a KeyError listing the known ones otherwise."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def image_transform(config, to_unit_range=False):
    """The paper's deterministic transforms; training images end in [-1, 1], test images in [0, 1]."""
    steps = dataset_spec(config.dataset).transform(config.image_size)
    if not to_unit_range:
        steps.append(T.Normalize([0.5] * 3, [0.5] * 3))
    return T.Compose(steps) if steps else None


def load_dataset(config, data_dir, train, transform=None):
    """The train or test split of `config.dataset`, downloading into `data_dir` when missing.

    Returns (dataset, targets) where targets is an int64 array of class ids (CelebA: the Male
    attribute). A missing dataset that cannot be downloaded is a UsageError saying where to put it.
    """
    name, spec = config.dataset, dataset_spec(config.dataset)
    try:
        return spec.load(data_dir, train, transform, config.image_size)
    except gzip.BadGzipFile as e:
        # An OSError, but the file is there: a placed .gz that is not gzip (utils.data.gunzip_placed).
        raise UsageError(f"{name} files in {data_dir!s} are damaged ({e}); replace the .gz files with intact "
                         f"copies as datasets/README.md shows")
    except (RuntimeError, OSError, ImportError) as e:
        raise UsageError(f"{name} is not in {data_dir!s} and could not be downloaded ({first_line(e)}); "
                         f"put the files there as datasets/README.md shows, or run once with network access")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        # Files present but cut short or overwritten: unpickling (CIFAR10) or reshaping (STL10) fails.
        raise UsageError(f"{name} files in {data_dir!s} are damaged ({type(e).__name__}: {e}); delete them to "
                         f"download afresh, or put intact copies there as datasets/README.md shows")


@dataclass
class PUSplit:
    """Indices into the train split and their PU labels (1 = labeled sensitive S, 0 = unlabeled U).

    A config's split lies in the order S, U's sensitive images, U's normal images (`pu_split`), so U's
    true labels follow from the counts; an image folder's counts of U (None) are unknown.
    """

    indices: np.ndarray
    labels: np.ndarray
    n_u_normal: int
    n_u_sensitive: int
    n_s: int

    def sensitive_in_u(self):
        """bool [N]: True at U's sensitive images, the truth a config's split knows; None where U's labels
        are unknown (an image folder)."""
        if self.n_u_sensitive is None:
            return None
        mask = np.zeros(len(self.indices), dtype=bool)
        mask[self.n_s:self.n_s + self.n_u_sensitive] = True
        return mask

    def subset(self, kept):
        """The split of the images at positions `kept` (ascending), in the same order, with its counts."""
        kept = np.asarray(kept, dtype=np.int64)
        labels = self.labels[kept]
        n_s = int(labels.sum())
        truth = self.sensitive_in_u()
        n_u_sensitive = None if truth is None else int(truth[kept].sum())
        n_u_normal = None if truth is None else len(kept) - n_s - n_u_sensitive
        return PUSplit(self.indices[kept], labels, n_u_normal, n_u_sensitive, n_s)


def draw(pool, n, generator, what):
    """`n` indices from `pool` without replacement; a UsageError if the pool is too small."""
    if n > len(pool):
        raise UsageError(f"asked for {n} {what} images but the train split holds only {len(pool)}; "
                         f"lower the count in the config or choose other classes")
    return pool[torch.randperm(len(pool), generator=generator)[:n].numpy()]


def pu_split(targets, config, seed):
    """The PU split of DESIGN section 3, drawn with a generator of its own seeded by `seed`.

    U-normal comes from the normal-class indices, S + U-sensitive from the others; the first n_s of
    the sensitive draw are labeled y = 1, the rest join U with y = 0.
    """
    generator = torch.Generator().manual_seed(seed)
    is_normal = np.isin(targets, config.normal_classes)
    normal = draw(np.flatnonzero(is_normal), config.n_u_normal, generator, "normal")
    sensitive = draw(np.flatnonzero(~is_normal), config.n_sensitive_drawn, generator, "sensitive")
    indices = np.concatenate([sensitive[:config.n_s], sensitive[config.n_s:], normal])
    labels = np.zeros(len(indices), dtype=np.int64)
    labels[:config.n_s] = 1
    return PUSplit(indices, labels, config.n_u_normal, config.n_u_sensitive, config.n_s)


def test_indices(targets, config):
    """The first n_test normal-class indices of the test split (the FID reference)."""
    normal = np.flatnonzero(np.isin(targets, config.normal_classes))
    if config.n_test > len(normal):
        raise UsageError(f"asked for {config.n_test} normal test images but the test split holds only "
                         f"{len(normal)}; lower n_test in the config")
    return normal[:config.n_test]


class LabeledSubset(Dataset):
    """A view of `base` at `indices`, yielding (image, label) with labels kept here, beside the dataset:
    the PU labels y for training, 1 = normal for the classifier, 0 for the test set."""

    def __init__(self, base, indices, labels):
        self.base, self.indices, self.labels = base, np.asarray(indices), np.asarray(labels)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[int(self.indices[i])][0], int(self.labels[i])


class TensorPUDataset(Dataset):
    """Images [N, C, H, W] and labels [N] held as tensors; `__getitems__` serves a whole batch in one
    indexing op, so a DataLoader over it costs a gather per batch instead of N Python calls."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.images.is_cuda:
            # Pinned and non-blocking: a plain copy from pageable memory would synchronize the stream,
            # making the CPU wait for the previous step's kernels instead of queueing the next ones.
            idx = idx.pin_memory().to(self.images.device, non_blocking=True)
        return self.images[idx], self.labels[idx]

    def to(self, device):
        return TensorPUDataset(self.images.to(device), self.labels.to(device))


DATA_ON_DEVICE = ("auto", "yes", "no")
# `auto` keeps the training tensors on the GPU when they take at most this share of its free memory.
# The paper's largest set (MNIST: 30,000 images of 3 x 32 x 32 float32) is 0.37 GB.
DEVICE_DATA_SHARE = 0.25


def fits_on_device(nbytes, free_bytes, share=DEVICE_DATA_SHARE):
    """Whether `nbytes` of training data may live on a device with `free_bytes` free (`auto`)."""
    return nbytes <= share * free_bytes


def place_on_device(dataset, device, mode="auto"):
    """`dataset` with its tensors on the CUDA `device` where `mode` (auto | yes | no) allows.

    On the GPU a batch is one gather there, with no host-to-device copy. `auto` moves a
    TensorPUDataset when `fits_on_device`; `yes` always moves it; `no` never does. CPU devices and
    per-item datasets (Stable Diffusion's) are returned as they are; `yes` on a per-item dataset
    is a UsageError, since it cannot be honoured.
    """
    if mode not in DATA_ON_DEVICE:
        raise ValueError(f"unknown data placement {mode!r}; valid: {', '.join(DATA_ON_DEVICE)}")
    device = torch.device(device)
    if not isinstance(dataset, TensorPUDataset):
        if mode == "yes" and device.type == "cuda":
            raise UsageError("--data_on_device yes needs in-memory tensors, but this script transforms "
                             "its data per item; use --data_on_device auto or no")
        return dataset
    if mode == "no" or device.type != "cuda":
        return dataset
    nbytes = dataset.images.nbytes + dataset.labels.nbytes
    if mode == "auto" and not fits_on_device(nbytes, torch.cuda.mem_get_info(device)[0]):
        return dataset
    return dataset.to(device)


def collate_batch(batch):
    """Collate for TensorPUDataset: `__getitems__` already returns the stacked batch."""
    return batch


def materialize(dataset, desc="preparing images"):
    """Apply `dataset`'s (deterministic) transforms once and keep the results as a TensorPUDataset."""
    items = [dataset[i] for i in tqdm(range(len(dataset)), desc=desc, leave=False)]
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([y for _, y in items], dtype=torch.int64)
    return TensorPUDataset(images, labels)


@dataclass
class PUData:
    """What a from-scratch or fine-tuning run trains and evaluates on."""

    train: TensorPUDataset      # U and S images in [-1, 1] with PU labels
    split: PUSplit
    test: Dataset               # normal-only test images in [0, 1] (None for an image folder without test/normal)
    test_sensitive: Dataset = None   # an image folder's test/sensitive, in [0, 1]
    folder: object = None       # the utils.folders.ImageFolder the data came from

    def counts(self):
        """The counts a run records: the split's, and an image folder's sizes (U's labels unknown)."""
        counts = dict(n_u_normal=self.split.n_u_normal, n_u_sensitive=self.split.n_u_sensitive, n_s=self.split.n_s,
                      n_test=len(self.test) if self.test is not None else 0)
        return counts if self.folder is None else dict(self.folder.counts(), **counts)


def normal_test_set(config, data_dir):
    """The normal-only test images in [0, 1] (the FID reference), labelled 0."""
    base, targets = load_dataset(config, data_dir, train=False, transform=image_transform(config, to_unit_range=True))
    return LabeledSubset(base, test_indices(targets, config), np.zeros(config.n_test, dtype=np.int64))


def load_pu_data(config, data_dir, seed):
    """Load, split and materialize `config`'s data; raises UsageError before anything is written.
    An image folder's config (config.train_data_dir) reads the folder instead (utils.folders)."""
    if config.train_data_dir:
        from utils.folders import load_folder_data   # it builds on this module's datasets
        return load_folder_data(config)
    base, targets = load_dataset(config, data_dir, train=True, transform=image_transform(config))
    split = pu_split(targets, config, seed)
    test = normal_test_set(config, data_dir)
    train = materialize(LabeledSubset(base, split.indices, split.labels))
    return PUData(train=train, split=split, test=test)
