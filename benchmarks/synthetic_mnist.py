"""A synthetic MNIST in torchvision's exact on-disk format (idx files under MNIST/raw/).

The benchmark needs MNIST-format data offline: torchvision.datasets.MNIST reads these files as it
reads the real ones, so the per-item cost (PIL image, Grayscale, Resize, ToTensor) is the real
one. The pictures are scikit-learn's 8x8 digits upscaled to 20 px and placed in a 28 px frame at a
seeded random offset, as MNIST centres its 20 px digits; the labels are the digits' own.
"""
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MNIST_SIZE = 28
DIGIT_SIZE = 20            # MNIST digits fit a 20 x 20 box inside the 28 x 28 frame
MAX_SHIFT = 4              # the box may move this many pixels from the top-left corner
DIGITS_MAX_VALUE = 16.0    # scikit-learn's digits pixels are integers 0..16
IDX_UBYTE = 0x08           # idx type code for unsigned bytes
RAW_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(path, array):
    """Write a uint8 array in idx format: magic (0, 0, type, ndim), big-endian int32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, IDX_UBYTE, array.ndim]))
        f.write(struct.pack(f">{array.ndim}i", *array.shape))
        f.write(array.tobytes())


def synthetic_digits(n, seed):
    """`n` MNIST-like uint8 images [n, 28, 28] and int labels [n], drawn with a seeded generator."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(digits.target), size=n)
    small = torch.tensor(digits.images[pick], dtype=torch.float32)[:, None] / DIGITS_MAX_VALUE
    big = F.interpolate(small, size=DIGIT_SIZE, mode="bilinear", align_corners=False)[:, 0]
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    images = np.zeros((n, MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    dy, dx = rng.integers(0, MAX_SHIFT + 1, size=(2, n))
    for i in range(n):
        images[i, dy[i]:dy[i] + DIGIT_SIZE, dx[i]:dx[i] + DIGIT_SIZE] = big[i]
    return images, digits.target[pick].astype(np.uint8)


def write_mnist(root, n_train, n_test, seed=0):
    """Write a synthetic MNIST of `n_train` + `n_test` images under `root`/MNIST/raw; returns `root`."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, n in ((True, n_train), (False, n_test)):
        images, labels = synthetic_digits(n, seed + int(train))
        write_idx(raw / RAW_FILES[train][0], images)
        write_idx(raw / RAW_FILES[train][1], labels)
    return Path(root)
