"""Shared test fixtures: tiny on-disk datasets, configs sized to them, a tiny UNet, no network, no GPU.

The datasets are written once per session (tests/fixtures.py) in torchvision's own formats;
each `tiny` config is a registry config with the counts shrunk to fit them, so the loaders,
transforms and split run exactly as in a real run.

Every test runs as on a CPU-only machine, also where there is a GPU: the README's promises that the
suite checks bit for bit (same seed, same weights; a resumed run equals one never stopped) are CPU
promises, and on CUDA the library would pick fp16 and nondeterministic kernels. In this process
torch.cuda reports no device (`cpu_only`); subprocesses get CUDA_VISIBLE_DEVICES="" from
fixtures.cpu_env. Tests marked `gpu` (tests/test_gpu.py) see the GPU and skip where there is none;
benchmarks/gpu_check.sh runs them.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from configs import Config, get_config, with_overrides  # noqa: E402

from fixtures import DEAD_PROXY, PROXY_VARIABLES, TINY_UNET, WRITERS  # noqa: E402

# Asked once, before any test hides the GPU: what this machine has.
CUDA_AVAILABLE = torch.cuda.is_available()
REAL_CUDA = {"is_available": torch.cuda.is_available, "device_count": torch.cuda.device_count}
# One thread, as the subprocesses have (OMP_NUM_THREADS=1): CPU kernels sum in a thread-dependent
# order, so runs compared bit for bit need the same count, and on a machine whose two cores are busy
# with other work two threads that wait for each other made a 7 s training run take 180 s.
torch.set_num_threads(1)

# Images per class written for each dataset (CelebA's two classes are the values of "Male").
PER_CLASS = {"MNIST": 12, "CIFAR10": 12, "STL10": 12, "CelebA": 36}
TEST_PER_CLASS = {"MNIST": 5, "CIFAR10": 5, "STL10": 5, "CelebA": 12}
# The paper's 10 : 1 : 1 proportions at a size every tiny dataset holds.
TINY_COUNTS = dict(n_u_normal=30, n_u_sensitive=3, n_s=3, n_test=10)
# One registry config per torchvision dataset; the normal classes and transforms are the paper's.
TINY_CONFIG_NAMES = ("MNIST_even", "CIFAR10_vehicles", "STL10_animals", "CelebA_male")


@dataclass
class TinyData:
    """A tiny dataset on disk and the config that reads it."""

    name: str                   # the registry config it shrinks
    config: Config
    root: Path                  # the --data_dir holding it
    train_labels: np.ndarray    # class ids in file order (CelebA: the Male attribute)
    test_labels: np.ndarray


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One folder holding all four tiny datasets; returns (root, {dataset: (train_labels, test_labels)})."""
    root = tmp_path_factory.mktemp("datasets")
    labels = {name: write(root, PER_CLASS[name], TEST_PER_CLASS[name], seed=i)
              for i, (name, write) in enumerate(WRITERS.items())}
    return root, labels


@pytest.fixture(scope="session", params=TINY_CONFIG_NAMES)
def tiny(request, data_root):
    """Each torchvision dataset in turn, with its registry config shrunk to the tiny data."""
    root, labels = data_root
    config = with_overrides(get_config(request.param), **TINY_COUNTS)
    return TinyData(request.param, config, root, *labels[config.dataset])


@pytest.fixture(scope="session", autouse=True)
def cpu_only():
    """For the whole session torch.cuda reports no device, so the library takes its CPU path (fp32,
    Accelerator(cpu=True), CPU sampling) exactly as on a machine without a GPU. Nothing here has
    touched CUDA before (only `CUDA_AVAILABLE` asked), so no tensor or state is left on a GPU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        patch.setattr(torch.cuda, "device_count", lambda: 0)
        yield


@pytest.fixture(autouse=True)
def gpu_for_gpu_tests(request, cpu_only):
    """A test marked `gpu` sees the machine's CUDA again (and is skipped where there is none), with
    accelerate's shared state reset around it: it holds the device and precision of whichever
    Accelerator came first, and the CPU tests before and after need theirs."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    if not CUDA_AVAILABLE:
        pytest.skip("needs a CUDA GPU")
    from accelerate.state import AcceleratorState
    with pytest.MonkeyPatch.context() as patch:
        for name, real in REAL_CUDA.items():
            patch.setattr(torch.cuda, name, real)
        AcceleratorState._reset_state(reset_partial_state=True)
        try:
            yield
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def offline(monkeypatch):
    """No network for this test, whatever the machine has: downloads go to a refused proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, DEAD_PROXY)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


@pytest.fixture
def tiny_unet():
    """A seeded 8 px UNet2DModel with both plain and attention blocks."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, **TINY_UNET).eval()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A tiny CIFAR10 in torchvision's on-disk format: 3 train and 1 test image per class."""
    root = tmp_path_factory.mktemp("cifar")
    WRITERS["CIFAR10"](root, per_class=3, test_per_class=1)
    return root
