"""UNet definitions, noise schedules and samplers: the paper's from-scratch UNet, built from the config registry."""
from dataclasses import dataclass, field

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       HeunDiscreteScheduler, UNet2DModel, UniPCMultistepScheduler)

IMAGE_CHANNELS = 3      # every registry dataset; image folders may be 1-channel (configs.Config.channels)
# The ODE/SDE solvers integrate from the last training timestep, as their schedulers do by default. A
# training schedule's config says "leading" (DDPMScheduler's default), which would start an N-step
# solver at T - T / N instead; DDPM and DDIM keep the training config's spacing.
SOLVER_TIMESTEP_SPACING = dict(timestep_spacing="linspace")


def build_unet(config):
    """A fresh diffusers UNet2DModel for `config` (the paper's 61.5M-parameter UNet by default), taking
    config.channels channels."""
    return UNet2DModel(sample_size=config.image_size, in_channels=config.channels,
                       out_channels=config.channels, **config.unet)


def build_noise_scheduler(config):
    """The training noise schedule: DDPMScheduler defaults (linear betas 1e-4..0.02) over T steps."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps)


@dataclass(frozen=True)
class SamplerSpec:
    """How one sampler is built on a training schedule and stepped.

    `overrides` change the training config where the sampler needs other settings; `step_kwargs`
    go to every step() call (DDIM's eta); `takes_generator` says whether step() accepts a generator,
    from which the stochastic samplers (DDPM, DDIM with eta > 0, SDE, ancestral) draw their noise.
    """

    scheduler: type
    overrides: dict = field(default_factory=dict)
    step_kwargs: dict = field(default_factory=dict)
    takes_generator: bool = True

    def step_arguments(self, generator):
        """The keyword arguments of step() beyond (model output, timestep, sample)."""
        return dict(self.step_kwargs, **({"generator": generator} if self.takes_generator else {}))


SAMPLERS = {
    "ddpm": SamplerSpec(DDPMScheduler),
    "ddim": SamplerSpec(DDIMScheduler, step_kwargs=dict(eta=0.0)),
    "ddim_eta1": SamplerSpec(DDIMScheduler, step_kwargs=dict(eta=1.0)),
    "dpmpp_2m": SamplerSpec(DPMSolverMultistepScheduler,
                            overrides=dict(SOLVER_TIMESTEP_SPACING, algorithm_type="dpmsolver++", solver_order=2)),
    "dpmpp_2m_sde": SamplerSpec(DPMSolverMultistepScheduler,
                                overrides=dict(SOLVER_TIMESTEP_SPACING, algorithm_type="sde-dpmsolver++",
                                               solver_order=2)),
    "unipc": SamplerSpec(UniPCMultistepScheduler, overrides=SOLVER_TIMESTEP_SPACING, takes_generator=False),
    "euler_a": SamplerSpec(EulerAncestralDiscreteScheduler, overrides=SOLVER_TIMESTEP_SPACING),
    "heun": SamplerSpec(HeunDiscreteScheduler, overrides=SOLVER_TIMESTEP_SPACING, takes_generator=False),
}


def sampler_spec(sampler):
    """The SamplerSpec of `sampler`; a KeyError listing the valid names otherwise."""
    if sampler not in SAMPLERS:
        raise KeyError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler]


def sampler_for_scheduler(class_name):
    """The first name in SAMPLERS built on the scheduler class `class_name` (a pipeline's own sampler),
    or None where none is."""
    return next((name for name, spec in SAMPLERS.items() if spec.scheduler.__name__ == class_name), None)


def build_sampler(noise_scheduler, sampler):
    """The sampling scheduler `sampler` (a name in SAMPLERS) on the training schedule's betas.

    Every value of the training config is passed explicitly: a scheduler built in memory marks the
    values it left at their defaults, and from_config into another class would replace those with
    that class's own defaults (HeunDiscreteScheduler's betas are Stable Diffusion's).
    """
    spec = sampler_spec(sampler)
    training = {k: v for k, v in noise_scheduler.config.items() if not k.startswith("_")}
    return spec.scheduler.from_config(training, **spec.overrides)


def unet_evaluations(noise_scheduler, sampler, num_inference_steps):
    """UNet evaluations per sample of `sampler` in `num_inference_steps` steps: one per timestep it
    visits. Heun evaluates twice a step except in the last (to sigma 0): 2N - 1."""
    scheduler = build_sampler(noise_scheduler, sampler)
    scheduler.set_timesteps(num_inference_steps)
    return len(scheduler.timesteps)
