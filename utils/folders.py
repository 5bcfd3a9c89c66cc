"""Image folders as PU data: the layout, its check, and the in-memory tensors a run trains on.

    DIR/unlabeled/        U: normal images with some sensitive ones, unlabeled (y = 0)
    DIR/sensitive/        S: a few labeled sensitive images (y = 1)
    DIR/test/normal/      optional: the quality reference (FID) and, with test/sensitive,
    DIR/test/sensitive/   optional: the data of the sensitivity judge

Any file Pillow opens counts as an image (hidden files and other suffixes are skipped); folders may
be nested. `scan_folder` lists and checks the layout without decoding anything; `load_images`
decodes: the short side resized to the run's size (bilinear, antialiased), the centre cropped to a
square, converted to 1 channel (L) or 3 (RGB). `load_folder_data` returns the same PUData as a
config's split: S then U as one TensorPUDataset in [-1, 1], so the training loop cannot tell them
apart. U's labels are unknown, so a folder's config holds no U-normal / U-sensitive counts
(`folder_config`); the run's key names the folder's base name (`folder_name`).
"""
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import TensorDataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from utils.data import PUData, PUSplit, TensorPUDataset, dataset_spec
from utils.errors import UsageError, first_line

UNLABELED, SENSITIVE = "unlabeled", "sensitive"
TEST_NORMAL, TEST_SENSITIVE = "test/normal", "test/sensitive"
CHANNEL_MODES = {1: "L", 3: "RGB"}
# The sensitivity judge of a folder trains on test/normal against test/sensitive and is tested on this
# share of each (at least one image), held out by a seeded draw.
JUDGE_HELD_OUT = 0.2
MIN_JUDGE_IMAGES = 2          # per class: one to train on, one to test it
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def image_suffixes():
    """The file suffixes of every format Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def list_images(folder):
    """Image files under `folder` (nested folders included), sorted by path; hidden files and folders
    (half-written .*.tmp-* files among them) are skipped."""
    folder, suffixes = Path(folder), image_suffixes()
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expected_layout(root):
    return (f"expected {root}/{UNLABELED}/ (U: normal images and some sensitive ones), {root}/{SENSITIVE}/ (S: "
            f"labeled sensitive images) and optionally {root}/{TEST_NORMAL}/ and {root}/{TEST_SENSITIVE}/")


def rate_needs_labels(root):
    """Why a folder without test/normal and test/sensitive gets no non-sensitive rate."""
    return (f"the non-sensitive rate needs labeled test images: normal ones in {root}/{TEST_NORMAL}/ and sensitive "
            f"ones in {root}/{TEST_SENSITIVE}/")


def reference_needs_images(root):
    """Why a folder without test/normal gets no FID."""
    return f"FID needs normal test images in {root}/{TEST_NORMAL}/"


def folder_name(root):
    """The name a folder gives run keys and caches: its base name, reduced to letters, digits, '.', '_'
    and '-' (anything else becomes '-')."""
    return SAFE_NAME.sub("-", Path(root).resolve().name).strip("-._") or "folder"


@dataclass(frozen=True)
class ImageFolder:
    """A checked folder in the layout above: its absolute root and the image files of each part."""

    root: Path
    unlabeled: tuple
    sensitive: tuple
    test_normal: tuple = ()
    test_sensitive: tuple = ()

    @property
    def name(self):
        return folder_name(self.root)

    @property
    def has_judge(self):
        """Whether the folder holds the labeled test images a sensitivity judge trains on."""
        return bool(self.test_normal and self.test_sensitive)

    def counts(self):
        return dict(n_unlabeled=len(self.unlabeled), n_s=len(self.sensitive), n_test=len(self.test_normal),
                    n_test_sensitive=len(self.test_sensitive))

    def check_batch(self, batch_size):
        """UsageError unless U and S hold at least one batch."""
        n = len(self.unlabeled) + len(self.sensitive)
        if n < batch_size:
            raise UsageError(f"{self.root} holds {n} training images ({len(self.unlabeled)} in {UNLABELED}/, "
                             f"{len(self.sensitive)} in {SENSITIVE}/), fewer than one batch of {batch_size}; "
                             f"pass --batch_size {n} or less, or add images")

    def fingerprint(self, parts=(TEST_NORMAL, TEST_SENSITIVE)):
        """A short hash of the names, sizes and modification times of `parts`' files: a cached judge is
        reused only while its images are the same."""
        digest = hashlib.sha1()
        for part in parts:
            for path in self.files(part):
                stat = path.stat()
                digest.update(f"{path.relative_to(self.root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:12]

    def files(self, part):
        return {UNLABELED: self.unlabeled, SENSITIVE: self.sensitive, TEST_NORMAL: self.test_normal,
                TEST_SENSITIVE: self.test_sensitive}[part]


def scan_folder(root):
    """The ImageFolder at `root`, checked without decoding an image: unlabeled/ and sensitive/ hold images,
    a test/ part that exists holds some, test/sensitive comes with test/normal, and a judge has at least
    MIN_JUDGE_IMAGES of each class. A UsageError names what is wrong otherwise."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"--train_data_dir {root} is not a folder; {expected_layout(root)}")
    files = {}
    for part in (UNLABELED, SENSITIVE, TEST_NORMAL, TEST_SENSITIVE):
        folder = root / part
        if not folder.is_dir():
            if part in (UNLABELED, SENSITIVE):
                raise UsageError(f"{folder} is missing; {expected_layout(root)}")
            continue
        files[part] = tuple(list_images(folder))
        if not files[part]:
            raise UsageError(f"{folder} holds no images (any format Pillow reads, nested folders allowed); "
                             + ("add some" if part in (UNLABELED, SENSITIVE) else "add some or remove the folder")
                             + f"; {expected_layout(root)}")
    if TEST_SENSITIVE in files and TEST_NORMAL not in files:
        raise UsageError(f"{root / TEST_SENSITIVE} has no {root / TEST_NORMAL} beside it: the sensitivity judge "
                         f"learns normal against sensitive; add normal test images or remove {TEST_SENSITIVE}/")
    if TEST_SENSITIVE in files:
        for part in (TEST_NORMAL, TEST_SENSITIVE):
            if len(files[part]) < MIN_JUDGE_IMAGES:
                raise UsageError(f"{root / part} holds {len(files[part])} image; the sensitivity judge needs at "
                                 f"least {MIN_JUDGE_IMAGES} of each class (one to train on, one to test it)")
    return ImageFolder(root, files[UNLABELED], files[SENSITIVE], files.get(TEST_NORMAL, ()),
                       files.get(TEST_SENSITIVE, ()))


def folder_transform(size):
    """Resize the short side to `size` (bilinear, antialiased), crop the centre square, to [0, 1]."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      T.CenterCrop(size), T.ToTensor()])


def load_images(paths, size, channels, desc="decoding images"):
    """Float32 [N, channels, size, size] in [0, 1] of the image files `paths`; a UsageError names the
    first file Pillow cannot decode."""
    if channels not in CHANNEL_MODES:
        raise UsageError(f"images have 1 (grayscale) or 3 (RGB) channels, not {channels}")
    transform, mode = folder_transform(size), CHANNEL_MODES[channels]
    out = torch.empty(len(paths), channels, size, size)
    for i, path in enumerate(tqdm(paths, desc=desc, leave=False)):
        try:
            with Image.open(path) as image:
                out[i] = transform(image.convert(mode))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"{path} is not a readable image ({first_line(e)}); replace or delete it")
    return out


def judge_size(config, image_size):
    """The sensitivity judge's input size on a folder: a small CNN sees the images at their own size,
    a ResNet-18 at its config's (224, what its ImageNet weights saw)."""
    return image_size if dataset_spec(config.dataset).classifier.arch == "cnn" else config.classifier_size


def folder_config(recipe, folder):
    """The config of a run on `folder` (an ImageFolder) with `recipe`'s model, optimisation, sampler and
    judge recipe (its `dataset` names only the classifier recipe then). U's normal and sensitive counts
    are unknown (None); |S| and the test count are the folder's."""
    return replace(recipe, train_data_dir=str(folder.root), normal_classes=(), n_u_normal=None, n_u_sensitive=None,
                   n_s=len(folder.sensitive), n_test=len(folder.test_normal),
                   classifier_size=judge_size(recipe, recipe.image_size))


def folder_overrides(config, resolution=None, channels=None):
    """Config overrides of a folder run's --resolution and --channels: the image size (with the judge's
    input size that follows it) and the channel count; {} for what is not given."""
    out = {}
    if resolution is not None:
        out.update(image_size=resolution, classifier_size=judge_size(config, resolution))
    if channels is not None:
        out["channels"] = channels
    return out


def load_folder_data(config, folder=None):
    """The PUData of a folder run's `config` (`folder`, its ImageFolder, is scanned when None): S then U,
    in file order, as images in [-1, 1] with y = 1 for S; the test parts in [0, 1] (None where absent).
    Every image is decoded here, so an unreadable one stops the run before anything is written."""
    folder = folder or scan_folder(config.train_data_dir)
    size, channels = config.image_size, config.channels
    s = load_images(folder.sensitive, size, channels, desc=f"decoding {SENSITIVE}/")
    u = load_images(folder.unlabeled, size, channels, desc=f"decoding {UNLABELED}/")
    labels = torch.cat([torch.ones(len(s), dtype=torch.int64), torch.zeros(len(u), dtype=torch.int64)])
    split = PUSplit(np.arange(len(labels)), labels.numpy(), n_u_normal=None, n_u_sensitive=None, n_s=len(s))
    test, test_sensitive = load_test_sets(config, folder)
    return PUData(train=TensorPUDataset(torch.cat([s, u]) * 2 - 1, labels), split=split, test=test,
                  test_sensitive=test_sensitive, folder=folder)


def load_test_sets(config, folder):
    """(test/normal, test/sensitive) of `folder` as TensorDatasets of (image in [0, 1], 0) at the config's
    size and channels; None for a part the folder lacks."""
    out = []
    for part in (TEST_NORMAL, TEST_SENSITIVE):
        paths = folder.files(part)
        images = load_images(paths, config.image_size, config.channels, desc=f"decoding {part}/") if paths else None
        out.append(None if images is None else TensorDataset(images, torch.zeros(len(images), dtype=torch.int64)))
    return tuple(out)


@dataclass(frozen=True)
class FolderJudgeData:
    """The sensitivity judge's data on a folder, as utils.classifier.load_or_train_classifier takes it:
    test/normal (label 1) against test/sensitive (label 0), a seeded JUDGE_HELD_OUT of each held out
    for its accuracy; `owner` names its cache file and `source` what a cached judge must match."""

    normal: torch.Tensor
    sensitive: torch.Tensor
    owner: str
    source: dict

    def splits(self, seed):
        """(train, held-out) TensorDatasets of (image in [0, 1], 1 if normal else 0)."""
        generator = torch.Generator().manual_seed(seed)
        parts = {"train": ([], []), "test": ([], [])}
        for images, label in ((self.normal, 1), (self.sensitive, 0)):
            order = torch.randperm(len(images), generator=generator)
            n_held = max(1, round(JUDGE_HELD_OUT * len(images)))
            for name, idx in (("test", order[:n_held]), ("train", order[n_held:])):
                parts[name][0].append(images[idx])
                parts[name][1].append(torch.full((len(idx),), label, dtype=torch.int64))
        return tuple(TensorDataset(torch.cat(x), torch.cat(y)) for x, y in (parts["train"], parts["test"]))


def folder_judge_data(config, folder, test, test_sensitive):
    """The FolderJudgeData of `folder` given its decoded test sets (TensorDatasets)."""
    return FolderJudgeData(test.tensors[0], test_sensitive.tensors[0], owner=f"folder_{folder.name}",
                           source=dict(train_data_dir=str(folder.root), fingerprint=folder.fingerprint(),
                                       channels=config.channels, image_size=config.image_size))
