"""Drawing images from a trained UNet: batched, seeded, in inference mode, and the grids we save."""
import math

import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

from models import build_sampler

GRID_SAMPLES = 64   # an 8 x 8 grid, as in the paper's figures


@torch.inference_mode()
def generate(unet, noise_scheduler, *, sampler, num_inference_steps, num_samples, batch_size, seed,
             device=None, dtype=None, desc="sampling", to_images=None):
    """`num_samples` images in [0, 1] as a float32 CPU tensor [N, C, H, W].

    Initial noise and the DDPM step noise come from a CPU generator seeded by `seed`, so the same
    seed gives the same images on any device (up to floating-point differences). `dtype` (e.g.
    torch.float16 on CUDA) runs the UNet under autocast. `to_images` maps the final sample to pixel
    space in [-1, 1] (a VAE decode for latent models); identity by default.
    """
    device = device or next(unet.parameters()).device
    scheduler = build_sampler(noise_scheduler, sampler)
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    was_training = unet.training
    unet.eval()
    out = []
    for start in tqdm(range(0, num_samples, batch_size), desc=desc, leave=False,
                      total=math.ceil(num_samples / batch_size)):
        n = min(batch_size, num_samples - start)
        x = torch.randn((n, *shape), generator=generator).to(device)
        for t in scheduler.timesteps:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                eps = unet(x, t).sample
            x = scheduler.step(eps.float(), t, x, generator=generator).prev_sample
        if to_images is not None:
            x = to_images(x)
        out.append((x.float() / 2 + 0.5).clamp(0, 1).cpu())
    unet.train(was_training)
    return torch.cat(out)


def save_grid(images, path, nrow=8):
    """Save images in [0, 1] as one PNG grid with `nrow` images a row."""
    save_image(images, path, nrow=nrow)
