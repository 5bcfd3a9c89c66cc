"""UNet definitions and noise schedules: the paper's from-scratch UNet, built from the config registry."""
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

IMAGE_CHANNELS = 3


def build_unet(config):
    """A fresh diffusers UNet2DModel for `config` (the paper's 61.5M-parameter UNet by default)."""
    return UNet2DModel(sample_size=config.image_size, in_channels=IMAGE_CHANNELS,
                       out_channels=IMAGE_CHANNELS, **config.unet)


def build_noise_scheduler(config):
    """The training noise schedule: DDPMScheduler defaults (linear betas 1e-4..0.02) over T steps."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps)


SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def build_sampler(noise_scheduler, sampler):
    """The sampling scheduler `sampler` (ddpm | ddim) on the training schedule's betas."""
    if sampler not in SAMPLERS:
        raise KeyError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler].from_config(noise_scheduler.config)
