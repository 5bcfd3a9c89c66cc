"""The per-sample denoising error L(x) that every objective is built on."""
import torch


def denoising_error(model, scheduler, x0, t=None, noise=None, cond=None):
    """L(x) = || eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps, t) - eps ||^2, summed per sample.

    A sum over all elements, not a mean: the bounded term of the sensitive loss depends on that scale.
    `t` [B] and `noise` (shape of x0) are drawn here unless given, so tests can fix them.
    `cond` is the text embedding for conditional UNets (Stable Diffusion), None otherwise.
    Returns a float32 tensor [B].
    """
    batch = x0.shape[0]
    if t is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=x0.device)
    if noise is None:
        # Drawn in logical (contiguous) order, then laid out as x0 is: randn_like on a channels_last x0
        # would fill memory order, so --channels_last would train on other noise than the plain path.
        noise = torch.empty_like(x0).copy_(torch.randn_like(x0, memory_format=torch.contiguous_format))
    noisy = scheduler.add_noise(x0, noise, t)
    if cond is None:
        pred = model(noisy, t).sample
    else:
        pred = model(noisy, t, encoder_hidden_states=cond).sample
    return (pred.float() - noise.float()).pow(2).flatten(1).sum(dim=1)
