"""Data loading and the PU split (DESIGN section 3) on tiny on-disk copies of MNIST, CIFAR10, STL10 and
CelebA in torchvision's formats, and on scikit-learn's digits."""
import copy

import numpy as np
import pytest
import torch

from configs import get_config, with_overrides
from utils.data import LabeledSubset, image_transform, load_dataset, load_pu_data, materialize, pu_split
from utils.data import test_indices as normal_test_indices   # renamed so pytest does not collect it
from utils.errors import UsageError

# What each dataset looks like after the paper's transforms: 3 channels at the config's image_size.
TRAIN_RANGE = (-1.0, 1.0)
TEST_RANGE = (0.0, 1.0)


@pytest.fixture(scope="module")
def digits():
    """The real Digits_even config on scikit-learn's digits; no files needed."""
    config = get_config("Digits_even")
    _, train_targets = load_dataset(config, None, train=True)
    _, test_targets = load_dataset(config, None, train=False)
    return config, train_targets, test_targets


def base_targets(ds):
    """The class ids a torchvision dataset (or Digits) holds, as a fresh copy."""
    for name in ("targets", "labels"):
        if hasattr(ds, name):
            return copy.deepcopy(np.asarray(getattr(ds, name)))
    return ds.attr.clone().numpy()      # CelebA


def check_split(split, targets, config):
    """Counts, disjointness, labels and class membership of one PU split."""
    n_s, n_us, n_un = config.n_s, config.n_u_sensitive, config.n_u_normal
    assert (split.n_s, split.n_u_sensitive, split.n_u_normal) == (n_s, n_us, n_un)
    assert len(split.indices) == len(split.labels) == n_s + n_us + n_un
    assert len(np.unique(split.indices)) == len(split.indices)
    # The first n_s are the labeled S (y = 1); U-sensitive and U-normal follow with y = 0.
    assert split.labels[:n_s].tolist() == [1] * n_s
    assert split.labels[n_s:].tolist() == [0] * (n_us + n_un)
    normal = np.isin(targets[split.indices], config.normal_classes)
    assert not normal[:n_s + n_us].any(), "S and U-sensitive hold only non-normal classes"
    assert normal[n_s + n_us:].all(), "U-normal holds only normal classes"


def test_tiny_datasets_load_with_their_class_ids(tiny):
    """The fixture files are read back by the loaders with the labels written."""
    _, train_targets = load_dataset(tiny.config, tiny.root, train=True)
    _, test_targets = load_dataset(tiny.config, tiny.root, train=False)
    assert train_targets.tolist() == tiny.train_labels.tolist()
    assert test_targets.tolist() == tiny.test_labels.tolist()


def test_pu_data_counts_labels_and_ranges(tiny):
    config = tiny.config
    data = load_pu_data(config, tiny.root, seed=0)
    check_split(data.split, tiny.train_labels, config)
    n = config.n_s + config.n_u_sensitive + config.n_u_normal
    size = config.image_size
    assert data.train.images.shape == (n, 3, size, size)
    assert data.train.images.dtype == torch.float32
    assert data.train.labels.tolist() == data.split.labels.tolist()
    lo, hi = data.train.images.min().item(), data.train.images.max().item()
    assert TRAIN_RANGE[0] <= lo < -0.9 and 0.9 < hi <= TRAIN_RANGE[1], "training images span [-1, 1]"
    # Test set: the first n_test normal-class indices of the test split, images in [0, 1].
    assert len(data.test) == config.n_test
    normal_test = np.flatnonzero(np.isin(tiny.test_labels, config.normal_classes))
    assert data.test.indices.tolist() == normal_test[:config.n_test].tolist()
    test_images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    assert test_images.shape == (config.n_test, 3, size, size)
    assert TEST_RANGE[0] <= test_images.min() and test_images.max() <= TEST_RANGE[1]
    assert test_images.min() < 0.1 and test_images.max() > 0.9


def test_materialize_equals_per_item_transforms(tiny):
    """The tensors training iterates over are exactly the paper's transform applied item by item."""
    config = tiny.config
    data = load_pu_data(config, tiny.root, seed=3)
    raw, _ = load_dataset(config, tiny.root, train=True)      # no transform: PIL images
    transform = image_transform(config)
    expected = torch.stack([transform(raw[int(i)][0]) for i in data.split.indices])
    assert torch.equal(data.train.images, expected)


def test_split_is_seeded(tiny):
    targets = tiny.train_labels
    first = pu_split(targets, tiny.config, seed=0)
    again = pu_split(targets, tiny.config, seed=0)
    other = pu_split(targets, tiny.config, seed=1)
    assert np.array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, other.indices)
    check_split(other, targets, tiny.config)


def test_pu_labels_are_not_written_into_the_dataset(tiny):
    base, targets = load_dataset(tiny.config, tiny.root, train=True, transform=image_transform(tiny.config))
    before, targets_before = base_targets(base), targets.copy()
    split = pu_split(targets, tiny.config, seed=0)
    view = LabeledSubset(base, split.indices, split.labels)
    train = materialize(view)
    assert np.array_equal(base_targets(base), before)
    assert np.array_equal(targets, targets_before)
    # The wrapper yields PU labels; the dataset still yields its own targets at the same index.
    i = 0     # an S sample: y = 1, class id a sensitive class
    assert view[i][1] == 1 and train.labels[i].item() == 1
    if tiny.config.dataset != "CelebA":         # CelebA is loaded with no target (target_type=[])
        assert base[int(split.indices[i])][1] == targets[split.indices[i]]


@pytest.mark.parametrize("field", ["n_u_normal", "n_sensitive"])
def test_more_images_than_a_class_holds_is_a_usage_error(tiny, field):
    targets = tiny.train_labels
    normal = int(np.isin(targets, tiny.config.normal_classes).sum())
    if field == "n_u_normal":
        exact = with_overrides(tiny.config, n_u_normal=normal)
        too_many = with_overrides(tiny.config, n_u_normal=normal + 1)
    else:
        sensitive = len(targets) - normal
        exact = with_overrides(tiny.config, n_s=sensitive - 1, n_u_sensitive=1)
        too_many = with_overrides(tiny.config, n_s=sensitive, n_u_sensitive=1)
    check_split(pu_split(targets, exact, seed=0), targets, exact)       # every image of the class: fine
    with pytest.raises(UsageError, match="holds only"):
        pu_split(targets, too_many, seed=0)


def test_more_test_images_than_the_test_split_holds_is_a_usage_error(tiny):
    normal = int(np.isin(tiny.test_labels, tiny.config.normal_classes).sum())
    assert len(normal_test_indices(tiny.test_labels, with_overrides(tiny.config, n_test=normal))) == normal
    with pytest.raises(UsageError, match="holds only"):
        normal_test_indices(tiny.test_labels, with_overrides(tiny.config, n_test=normal + 1))


def test_the_paper_config_asks_more_than_the_tiny_data_holds(tiny):
    with pytest.raises(UsageError, match="holds only"):
        load_pu_data(get_config(tiny.name), tiny.root, seed=42)


@pytest.mark.parametrize("name", ["MNIST_even", "CIFAR10_vehicles", "STL10_vehicles", "CelebA_female"])
def test_missing_dataset_without_network_is_a_usage_error(name, tmp_path, offline):
    with pytest.raises(UsageError, match=f"{get_config(name).dataset} is not in .*datasets/README.md"):
        load_dataset(get_config(name), tmp_path, train=True)


def test_digits_split_and_ranges(digits):
    config, train_targets, test_targets = digits
    assert len(train_targets) == 1500 and len(test_targets) == 297
    data = load_pu_data(config, None, seed=42)
    check_split(data.split, train_targets, config)
    assert (config.n_u_normal, config.n_u_sensitive, config.n_s) == (700, 70, 70)
    assert data.train.images.shape == (840, 3, config.image_size, config.image_size)
    assert data.train.images.min() >= -1 and data.train.images.max() <= 1
    assert data.train.images.min() == -1 and data.train.images.max() > 0.9
    assert len(data.test) == config.n_test == 145
    assert np.isin(test_targets[data.test.indices], config.normal_classes).all()
    test_images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    assert test_images.min() >= 0 and test_images.max() <= 1
    # Digits_even's n_test is every normal digit of the test split.
    assert len(data.test) == np.isin(test_targets, config.normal_classes).sum()


def test_digits_split_is_seeded(digits):
    config, targets, _ = digits
    assert np.array_equal(pu_split(targets, config, 42).indices, pu_split(targets, config, 42).indices)
    assert not np.array_equal(pu_split(targets, config, 42).indices, pu_split(targets, config, 43).indices)
    with pytest.raises(UsageError, match="holds only"):
        pu_split(targets, with_overrides(config, n_u_normal=int(np.isin(targets, config.normal_classes).sum()) + 1), 0)


def test_mnist_becomes_three_channel_32px(data_root):
    root, _ = data_root
    ds, _ = load_dataset(get_config("MNIST_even"), root, train=True, transform=image_transform(get_config("MNIST_even")))
    image = ds[0][0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
