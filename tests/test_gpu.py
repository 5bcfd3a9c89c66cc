"""What only a CUDA GPU exercises: the fp16 default with its grad scaler, training data on the device,
and --eval_batch_size auto. Skipped where there is no GPU (tests/conftest.py hides CUDA from every
other test); benchmarks/gpu_check.sh runs them with `python -m pytest -m gpu`.

No bit-identity is asserted here: on a GPU the README promises the same split, order and noise, not
the same weights.
"""
import pytest
import torch

from configs import get_config, with_overrides
from models import build_noise_scheduler
from utils.data import TensorPUDataset, place_on_device
from utils.sampling import AUTO, Sampling, generate, resolve_eval_batch_size
from utils.training import TrainingData, TrainingSpec, make_accelerator, make_train_loader, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def tiny_data(n=64, size=8):
    generator = torch.Generator().manual_seed(0)
    return TensorPUDataset(torch.rand(n, 3, size, size, generator=generator) * 2 - 1, torch.tensor([0, 0, 0, 1] * (n // 4)))


def test_training_defaults_to_fp16_with_a_grad_scaler_and_trains(tiny_unet):
    accelerator = make_accelerator()
    assert accelerator.device.type == "cuda" and accelerator.mixed_precision == "fp16"
    assert accelerator.scaler is not None
    # 32 steps: the scaler starts at 2**16 and skips the first steps whose fp16 gradients overflow.
    config = with_overrides(get_config("Digits_even"), image_size=8, batch_size=4, num_epochs=2, lr_warmup_steps=1)
    before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    trained = train(accelerator, tiny_unet, build_noise_scheduler(config), TrainingData(tiny_data()),
                    TrainingSpec(config, "PU", 0.1, seed=0))
    assert trained is tiny_unet
    weights = {k: v.float().cpu() for k, v in trained.state_dict().items()}
    assert next(trained.parameters()).dtype == torch.float32          # fp32 weights, fp16 autocast
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert any(not torch.equal(before[k], weights[k]) for k in before), "no step was taken"
    assert 0 < accelerator.scaler.get_scale() <= 2 ** 16


def test_non_finite_guard_watches_only_the_loss_under_the_grad_scaler():
    from utils.checkpointing import NonFiniteGuard
    guard = NonFiniteGuard(make_accelerator(), "PU", steps_per_epoch=10)
    assert not guard.watch_grad       # the scaler skips overflowing steps itself
    assert guard.every > 1            # the flag is read every few steps, not every step


def test_training_data_on_the_gpu_gives_the_cpu_batches():
    data = tiny_data(n=40)
    on_gpu = place_on_device(data, "cuda", "auto")       # 31 kB: fits any GPU
    assert on_gpu.images.is_cuda and on_gpu.labels.is_cuda
    assert place_on_device(data, "cuda", "no") is data
    cpu_batches = list(make_train_loader(data, 6, seed=3))
    gpu_batches = list(make_train_loader(on_gpu, 6, seed=3, num_workers=2))   # workers are dropped for CUDA data
    assert len(gpu_batches) == len(cpu_batches) == 7
    for (x, y), (x_gpu, y_gpu) in zip(cpu_batches, gpu_batches):
        assert x_gpu.is_cuda
        assert torch.equal(x_gpu.cpu(), x) and torch.equal(y_gpu.cpu(), y)


def test_eval_batch_size_auto_probes_the_gpu(tiny_unet):
    unet = tiny_unet.to("cuda")
    # A tiny UNet at 8 px: every image fits at once, up to the cap.
    assert resolve_eval_batch_size(AUTO, unet, num_samples=300, dtype=torch.float16) == 300
    scheduler = build_noise_scheduler(get_config("Digits_even"))
    common = dict(sampler="ddpm", num_inference_steps=2, num_samples=3, seed=4)
    auto = generate(unet, scheduler, Sampling(batch_size=AUTO, **common), dtype=torch.float16)
    number = generate(unet, scheduler, Sampling(batch_size=3, **common), dtype=torch.float16)
    assert auto.shape == (3, 3, 8, 8) and auto.device.type == "cpu"
    torch.testing.assert_close(auto, number, rtol=0, atol=1e-2)     # fp16 kernels may differ run to run
