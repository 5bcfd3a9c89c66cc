"""The paper's from-scratch UNet (DESIGN section 3), its noise schedule and the sampler registry."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from configs import CONFIGS, get_config
from models import build_noise_scheduler, build_sampler, build_unet

# diffusers UNet2DModel with the paper's arguments at 32 px: "61.5M parameters" in DESIGN section 3.
PAPER_UNET_PARAMETERS = 61_529_091


@pytest.fixture(scope="module")
def paper_unet():
    return build_unet(get_config("MNIST_even"))


def test_paper_unet_blocks(paper_unet):
    assert paper_unet.config.sample_size == 32
    assert (paper_unet.config.in_channels, paper_unet.config.out_channels) == (3, 3)
    assert tuple(paper_unet.config.block_out_channels) == (128, 128, 256, 512)
    assert paper_unet.config.layers_per_block == 2
    assert [type(b).__name__ for b in paper_unet.down_blocks] == \
        ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    assert [type(b).__name__ for b in paper_unet.up_blocks] == \
        ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    # Two resnets in every down block, three (layers_per_block + 1) in every up block.
    assert [len(b.resnets) for b in paper_unet.down_blocks] == [2, 2, 2, 2]
    assert [len(b.resnets) for b in paper_unet.up_blocks] == [3, 3, 3, 3]


def test_paper_unet_has_61_5m_parameters(paper_unet):
    assert sum(p.numel() for p in paper_unet.parameters()) == PAPER_UNET_PARAMETERS


def test_every_scratch_config_uses_the_paper_unet():
    for name in ("MNIST_even", "MNIST_odd", "CIFAR10_vehicles", "CIFAR10_animals", "STL10_vehicles",
                 "STL10_animals"):
        config = CONFIGS[name]
        assert config.unet["block_out_channels"] == (128, 128, 256, 512), name
        assert config.unet["layers_per_block"] == 2, name


@torch.no_grad()
def test_paper_unet_maps_32px_images_to_noise_of_the_same_shape(paper_unet):
    x = torch.randn(1, 3, 32, 32)
    assert paper_unet(x, torch.tensor([10])).sample.shape == (1, 3, 32, 32)


def test_noise_scheduler_is_ddpm_linear_1000():
    scheduler = build_noise_scheduler(get_config("MNIST_even"))
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "linear"
    assert scheduler.betas[0].item() == pytest.approx(1e-4)
    assert scheduler.betas[-1].item() == pytest.approx(0.02)


def test_build_sampler_keeps_the_training_schedule_and_rejects_unknown_names():
    scheduler = build_noise_scheduler(get_config("Digits_even"))
    for name, cls in (("ddpm", DDPMScheduler), ("ddim", DDIMScheduler)):
        sampler = build_sampler(scheduler, name)
        assert isinstance(sampler, cls)
        assert torch.equal(sampler.alphas_cumprod, scheduler.alphas_cumprod)
    with pytest.raises(KeyError, match="ddpm, ddim"):
        build_sampler(scheduler, "euler")
