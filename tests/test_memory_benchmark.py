"""benchmarks/memory.py: the pretrained architectures it builds, and a tiny run of each model on CPU.
No timing or memory figure is asserted; the record is checked for what it must hold."""
import json

import pytest
import torch

from benchmarks import memory
from tiny_models import tiny_sd_architecture

# The tiny stand-ins keep each model's layout (cross-attention UNet + VAE + CLIP text encoder; a
# pixel UNet with attention) at a size that trains a step in milliseconds.
TINY_SD = tiny_sd_architecture(latent_size=8, vocab_size=60, bos_id=0, eos_id=1)
TINY_PIXEL_UNET = dict(sample_size=16, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
TINY_ARGS = ["--resolution", "16", "--batch_size", "2", "--steps", "2", "--warmup_steps", "1", "--device", "cpu"]


def parameters(module):
    return sum(p.numel() for p in module.parameters())


def test_architectures_have_the_hub_models_parameter_counts():
    """The configs written out in the benchmark are the hub models': their published sizes, built on
    the meta device (no memory, no weights)."""
    with torch.device("meta"):
        unet, frozen, _ = memory.build_parts("sd-v1-4")
        celebahq, none, _ = memory.build_parts("ddpm-celebahq-256")
    assert parameters(unet) == 859_520_964
    assert {k: parameters(m) for k, m in frozen.items()} == dict(vae=83_653_863, text_encoder=123_060_480)
    assert parameters(celebahq) == 113_673_219 and none == {}


@pytest.mark.parametrize("model, architecture, extra", [
    ("sd-v1-4", TINY_SD, []),
    ("sd-v1-4", TINY_SD, ["--gradient_checkpointing"]),
    ("ddpm-celebahq-256", TINY_PIXEL_UNET, []),
])
def test_a_tiny_run_reports_its_step_and_peak_memory(model, architecture, extra):
    args = memory.parse_args(["--model", model, *TINY_ARGS, *extra])
    result = memory.measure_training(args, architecture)
    json.dumps(result)                                  # printable as the script prints it
    unet, frozen, _ = memory.build_parts(model, architecture)
    assert result["parameters"] == parameters(unet)
    assert result["frozen_parameters"] == {k: parameters(m) for k, m in frozen.items()}
    assert (result["resolution"], result["batch_size"], result["steps"]) == (16, 2, 2)
    assert result["gradient_checkpointing"] == bool(extra) and result["mixed_precision"] == "no"
    assert result["peak_memory"]["bytes"] > 0 and "ru_maxrss" in result["peak_memory"]["measure"]
    if result["seconds_per_step"] is not None:        # a difference of two timings; None where it is not positive
        assert result["images_per_s"] == pytest.approx(2 / result["seconds_per_step"])
