"""Evaluation sampling batched to the largest batch that fits: the search, the CPU default,
"auto" through generate, and the speed options on the command line. The CUDA probe itself needs a
GPU; the search it drives is tested here with exact predicates."""
import argparse

import pytest
import torch

from configs import get_config
from models import build_noise_scheduler
from utils.cli import add_run_args, batch_size_or_auto
from utils.sampling import AUTO, CPU_EVAL_PIXELS, Sampling, generate, largest_fitting, resolve_eval_batch_size


class Fits:
    """fits(b) = b <= capacity, counting the calls."""

    def __init__(self, capacity):
        self.capacity, self.calls = capacity, []

    def __call__(self, b):
        self.calls.append(b)
        return b <= self.capacity


@pytest.mark.parametrize("capacity,limit,start", [(37, 1000, 64), (64, 1000, 64), (1, 1000, 64), (999, 1000, 64),
                                                  (5000, 1000, 64), (1000, 1000, 64), (10, 10, 64), (3, 100, 1)])
def test_largest_fitting_finds_the_capacity(capacity, limit, start):
    fits = Fits(capacity)
    assert largest_fitting(fits, limit, start) == min(capacity, limit)
    assert max(fits.calls) <= limit
    assert len(fits.calls) <= 2 * max(limit, start).bit_length() + 2


def test_largest_fitting_is_zero_when_nothing_fits():
    assert largest_fitting(Fits(0), 100) == 0


def test_cpu_auto_is_a_fixed_size_capped_by_the_samples(tiny_unet):
    pixels = tiny_unet.config.sample_size ** 2
    assert resolve_eval_batch_size(AUTO, tiny_unet, num_samples=10) == 10
    assert resolve_eval_batch_size(AUTO, tiny_unet, num_samples=10**6) == CPU_EVAL_PIXELS // pixels
    assert (CPU_EVAL_PIXELS // 32 ** 2, CPU_EVAL_PIXELS // 16 ** 2) == (64, 256)       # the README's figures
    assert resolve_eval_batch_size(7, tiny_unet, num_samples=5) == 5
    assert resolve_eval_batch_size(7, tiny_unet, num_samples=50) == 7


def test_generate_with_auto_equals_the_resolved_number(tiny_unet):
    scheduler = build_noise_scheduler(get_config("Digits_even"))
    common = dict(sampler="ddpm", num_inference_steps=2, num_samples=3, seed=4)
    auto = generate(tiny_unet, scheduler, Sampling(batch_size=AUTO, **common))
    number = generate(tiny_unet, scheduler,
                      Sampling(batch_size=resolve_eval_batch_size(AUTO, tiny_unet, num_samples=3), **common))
    assert auto.shape == (3, 3, 8, 8)
    assert torch.equal(auto, number)


def test_generate_progress_counts_denoising_steps_over_all_batches(tiny_unet, capsys):
    scheduler = build_noise_scheduler(get_config("Digits_even"))
    images = generate(tiny_unet, scheduler, Sampling("ddim", num_inference_steps=3, num_samples=5, batch_size=2, seed=0),
                      desc="probe")
    err = capsys.readouterr().err
    assert images.shape[0] == 5
    assert "0/9 " in err and "step" in err          # the bar's total: 3 batches of 3 steps


def test_batch_size_or_auto():
    assert batch_size_or_auto("auto") == AUTO
    assert batch_size_or_auto("12") == 12
    with pytest.raises(argparse.ArgumentTypeError):
        batch_size_or_auto("0")


def test_speed_options_are_safe_by_default():
    """TF32 on (ignored before Ampere), every other speed option off or automatic."""
    args = add_run_args(argparse.ArgumentParser()).parse_args([])
    assert (args.allow_tf32, args.channels_last, args.compile, args.data_on_device) == (True, False, False, "auto")
    assert args.mixed_precision is None      # fp16 on CUDA as in the paper, fp32 on CPU
    args = add_run_args(argparse.ArgumentParser()).parse_args(["--compile", "--data_on_device", "no"])
    assert args.compile and args.data_on_device == "no"
