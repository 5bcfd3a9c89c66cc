"""The fast data path: materialized tensors equal the per-item transforms, the batched loader
yields the per-item loader's batches, the GPU placement rules, and the loop returns the module it
was given. These run on the CPU also where there is a GPU (tests/conftest.py hides it): the
placement tests cover every branch that does not allocate on a GPU, and tests/test_gpu.py compares
batches served from GPU memory with these CPU ones."""
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader

from benchmarks.synthetic_mnist import write_mnist as write_synthetic_mnist
from configs import get_config, with_overrides
from fixtures import TINY_UNET, write_mnist
from models import build_noise_scheduler
from utils.data import (DEVICE_DATA_SHARE, LabeledSubset, TensorPUDataset, fits_on_device, image_transform,
                        load_dataset, materialize, place_on_device)
from utils.errors import UsageError
from utils.training import TrainingData, TrainingSpec, make_accelerator, make_train_loader, train

MNIST_PER_CLASS = 4          # 40 training images
BATCH = 6                    # does not divide 40: the last batch is partial
EPOCHS = 2                   # the generator carries over from one epoch to the next
MNIST_BYTES = 30_000 * 3 * 32 * 32 * 4   # the paper's MNIST training set as float32 tensors


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A tiny MNIST in idx format (tests/fixtures.py), its per-item training view and its materialization."""
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, MNIST_PER_CLASS, 1, seed=5)
    config = get_config("MNIST_even")
    base, targets = load_dataset(config, root, train=True, transform=image_transform(config))
    indices = np.random.default_rng(0).permutation(len(base))
    labels = (targets[indices] % 2).astype(np.int64)          # any PU labels will do
    per_item = LabeledSubset(base, indices, labels)
    return config, root, per_item, materialize(per_item)


def all_batches(loader, epochs=EPOCHS):
    return [batch for _ in range(epochs) for batch in loader]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert torch.equal(x, x_ref)
        assert torch.equal(y, y_ref)


def test_materialized_mnist_equals_the_per_item_transforms(mnist):
    config, root, per_item, tensors = mnist
    raw, _ = load_dataset(config, root, train=True)       # PIL images, no transform
    transform = image_transform(config)
    expected = torch.stack([transform(raw[int(i)][0]) for i in per_item.indices])
    assert tensors.images.shape == (len(per_item), 3, 32, 32)
    assert torch.equal(tensors.images, expected)
    assert tensors.labels.tolist() == per_item.labels.tolist()


def test_materialized_digits_equal_the_per_item_items():
    config = get_config("Digits_even")
    base, _ = load_dataset(config, None, train=True)
    view = LabeledSubset(base, np.arange(0, 60, 3), np.arange(20) % 2)
    tensors = materialize(view)
    assert torch.equal(tensors.images, torch.stack([view[i][0] for i in range(len(view))]))
    assert tensors.labels.tolist() == [view[i][1] for i in range(len(view))]


def test_batched_loader_yields_the_per_item_loaders_batches(mnist):
    """Same seed, same order, same tensors: one gather per batch changes nothing but the cost."""
    _, _, per_item, tensors = mnist
    plain = DataLoader(per_item, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(7))
    expected = all_batches(plain)
    assert_same_batches(all_batches(make_train_loader(tensors, BATCH, seed=7)), expected)
    assert expected[-1][0].shape[0] == len(per_item) % BATCH
    other_seed = all_batches(make_train_loader(tensors, BATCH, seed=8))
    assert any(not torch.equal(x, x_ref) for (x, _), (x_ref, _) in zip(other_seed, expected))


def test_prepared_loader_keeps_the_order(mnist):
    """What train iterates: the loader after accelerator.prepare, on the accelerator's device."""
    _, _, per_item, tensors = mnist
    accelerator = make_accelerator()
    plain = DataLoader(per_item, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert_same_batches(all_batches(accelerator.prepare(make_train_loader(tensors, BATCH, seed=3))), all_batches(plain))


def test_fits_on_device():
    assert fits_on_device(MNIST_BYTES, 80e9)
    assert not fits_on_device(MNIST_BYTES, 1e9)
    assert fits_on_device(DEVICE_DATA_SHARE * 8e9, 8e9)


def test_placement_leaves_cpu_data_and_per_item_data_alone(mnist):
    _, _, per_item, tensors = mnist
    for mode in ("auto", "yes", "no"):
        assert place_on_device(tensors, "cpu", mode) is tensors
        assert place_on_device(per_item, "cpu", mode) is per_item
    # No GPU memory is touched for these: "no" never moves, and per-item data cannot move.
    assert place_on_device(tensors, "cuda", "no") is tensors
    assert place_on_device(per_item, "cuda", "auto") is per_item
    with pytest.raises(UsageError, match="--data_on_device yes"):
        place_on_device(per_item, "cuda", "yes")
    with pytest.raises(ValueError, match="unknown data placement"):
        place_on_device(tensors, "cpu", "always")


def test_tensor_dataset_gathers_a_batch(mnist):
    _, _, _, tensors = mnist
    x, y = tensors.__getitems__([4, 0, 4])
    assert torch.equal(x, tensors.images[[4, 0, 4]]) and y.tolist() == tensors.labels[[4, 0, 4]].tolist()


@pytest.fixture
def bf16_accelerator():
    """A CPU accelerator with bf16 autocast, which patches the prepared model's forward; the shared
    accelerate state is reset around it so other tests keep their own settings."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_training(seed=1):
    """A one-epoch Digits_even config at 8 px, batch 4, and 8 random images in [-1, 1], half labeled S."""
    config = with_overrides(get_config("Digits_even"), image_size=8, batch_size=4, num_epochs=1, lr_warmup_steps=1)
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return config, TensorPUDataset(images, torch.tensor([0, 1] * 4))


def test_train_returns_the_module_it_was_given(bf16_accelerator):
    """No autocast patch on forward (a second prepare would stack another) and no compiled wrapper,
    so save_pretrained and later calls see the plain module."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    config, data = tiny_training()
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, **TINY_UNET)
    trained = train(bf16_accelerator, unet, build_noise_scheduler(config), TrainingData(data),
                    TrainingSpec(config, "PU", 0.1, correction="abs", seed=0, data_on_device="yes"))
    assert trained is unet
    assert "_original_forward" not in vars(trained), "accelerate's autocast patch was left on forward"
    assert trained.forward.__func__ is UNet2DModel.forward


def test_synthetic_mnist_reads_back_through_torchvision(tmp_path):
    """The benchmark's MNIST stand-in is real idx: torchvision reads it with its labels."""
    write_synthetic_mnist(tmp_path, 30, 5, seed=1)
    config = get_config("MNIST_even")
    train_set, targets = load_dataset(config, tmp_path, train=True)
    test_set, _ = load_dataset(config, tmp_path, train=False)
    assert len(train_set) == 30 and len(test_set) == 5
    image, label = train_set[0]
    assert image.size == (28, 28) and label == targets[0]
    assert set(targets.tolist()) <= set(range(10)) and len(set(targets.tolist())) > 1
    pixels = np.asarray(image)
    assert pixels.max() > 200 and (pixels == 0).mean() > 0.3, "a bright digit on a black frame, as MNIST"


def test_channels_last_trains_the_same_model():
    """--channels_last changes how the step runs, not what it computes: the same noise (drawn in
    logical order whatever the layout), so two steps of the tiny UNet end at the plain path's weights
    to float rounding; train returns the plain module. (--compile is measured on the GPU by
    benchmarks/gpu_check.sh: compiling on CPU takes minutes.)"""
    from diffusers import UNet2DModel
    config, data = tiny_training()
    trained = {}
    for channels_last in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, **TINY_UNET)
        initial = {k: v.clone() for k, v in unet.state_dict().items()}
        spec = TrainingSpec(config, "PU", 0.1, correction="abs", seed=0, channels_last=channels_last)
        trained[channels_last] = train(Accelerator(cpu=True), unet, build_noise_scheduler(config), TrainingData(data),
                                       spec)
        assert trained[channels_last] is unet
    AcceleratorState._reset_state(reset_partial_state=True)
    plain, fast = trained[False].state_dict(), trained[True].state_dict()
    assert not all(torch.equal(plain[k], initial[k]) for k in plain)                     # it trained
    # Adam's first steps move every weight by about lr (1e-3), so other noise would show as ~1e-3 apart.
    assert all(torch.allclose(plain[k], fast[k], rtol=0, atol=1e-4) for k in plain)
    close = sum(int(torch.isclose(plain[k], fast[k], rtol=0, atol=1e-6).sum()) for k in plain)
    assert close >= 0.99 * sum(v.numel() for v in plain.values())


def test_the_loop_releases_its_optimizer_when_it_ends():
    """train drops what the accelerator prepared (the optimizer holds AdamW's two moments, twice the
    weights): after it, no optimizer it made is alive, so the evaluation and a next run get the memory."""
    import gc
    from diffusers import UNet2DModel

    def live_optimizers():
        gc.collect()
        return sum(isinstance(o, torch.optim.Optimizer) for o in gc.get_objects())
    config, data = tiny_training()
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator, before = Accelerator(cpu=True), live_optimizers()
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, **TINY_UNET)
    trained = train(accelerator, unet, build_noise_scheduler(config), TrainingData(data), TrainingSpec(config, "PU", 0.1))
    assert trained is unet and live_optimizers() == before
    assert not accelerator._custom_objects        # nothing of this run left registered for checkpointing
    AcceleratorState._reset_state(reset_partial_state=True)
