"""Drawing images from a trained UNet: batched, seeded, in inference mode, and the grids and sample
folders we save."""
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image
from tqdm.auto import tqdm

from models import build_sampler, sampler_spec
from utils.errors import UsageError
from utils.files import save_folder_atomically

GRID_SAMPLES = 64   # an 8 x 8 grid, as in the paper's figures
HALF_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}
AUTO = "auto"       # a batch size found when sampling starts: the largest that fits
# CPU: images per batch at 32 px, more at 16 px, fewer at larger sizes (same pixels a batch). Past
# this a bigger batch runs slower, its activations falling out of cache: one thread samples 25% more
# image-steps a second in batches of 256 than of 1,000 at 16 px, and of 64 than of 256 at 32 px
# (`OMP_NUM_THREADS=1 python benchmarks/throughput.py --config_name FashionMNIST_clothes_cpu --device cpu
# --data_dir DIR --steps 1 --sample_steps 10 --sample_images 1000 --eval_batch_size 256`, then 1000).
CPU_EVAL_PIXELS = 64 * 32 * 32
# CUDA: the first batch tried, and the largest considered: far past the point where the GPU is
# saturated, and small enough that no activation tensor nears the 2**31 elements of 32-bit indexing.
PROBE_START = 64
MAX_EVAL_BATCH_SIZE = 4096
# A batch is accepted when 1 / EVAL_MEMORY_MARGIN times as many images fit one UNet step: room for
# the sampler's own tensors and for fragmentation.
EVAL_MEMORY_MARGIN = 0.9
SAMPLE_NAME = re.compile(r"^\d{6}\.png$")     # --save_samples: 000000.png, 000001.png, ...


@dataclass(frozen=True)
class Sampling:
    """How images are drawn: the sampler and its step count, how many images, in what batches (a
    number, or AUTO), from which seed."""

    sampler: str
    num_inference_steps: int
    num_samples: int
    batch_size: object = AUTO
    seed: int = 0


def sampling_precision(device=None, mixed_precision=None):
    """(device, autocast dtype or None) for sampling, decided here for every script.

    `device` defaults to CUDA where there is one. On CUDA, the half precision of `mixed_precision`
    (a run's --mixed_precision; fp16 when None, full precision for "no"); fp32 (None) elsewhere.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return device, None
    return device, HALF_PRECISION.get(mixed_precision or "fp16")


@torch.inference_mode()
def generate(unet, noise_scheduler, sampling, *, dtype=None, desc="sampling", to_images=None):
    """`sampling.num_samples` images in [0, 1] as a float32 CPU tensor [N, C, H, W], drawn on the
    UNet's device as `sampling` (a Sampling) says.

    `sampling.sampler` is a name in models.SAMPLERS. Initial noise and the step noise of the
    stochastic samplers come from a CPU generator seeded by `sampling.seed`, so the same seed gives
    the same images on any device (up to floating-point differences). The noise is drawn batch by
    batch, so the images also depend on the batch size; AUTO (`resolve_eval_batch_size`) picks it
    from the free memory, so pass a number where samples must match across machines. `dtype` (e.g.
    torch.float16 on CUDA) runs the UNet under autocast. `to_images` maps the final sample to pixel
    space in [-1, 1] (a VAE decode for latent models); identity by default.
    """
    device = next(unet.parameters()).device
    num_samples, num_inference_steps = sampling.num_samples, sampling.num_inference_steps
    batch_size = resolve_eval_batch_size(sampling.batch_size, unet, num_samples=num_samples, dtype=dtype)
    scheduler = build_sampler(noise_scheduler, sampling.sampler)
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(sampling.seed)
    step_kwargs = sampler_spec(sampling.sampler).step_arguments(generator)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    was_training = unet.training
    unet.eval()
    out = []
    # The bar counts denoising steps, not batches: on a CPU one batch of 1,000-step DDPM is half an hour.
    with tqdm(total=math.ceil(num_samples / batch_size) * len(scheduler.timesteps), desc=desc, unit="step",
              leave=False) as progress:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            # Multistep and Heun schedulers keep a history within a trajectory; each batch starts afresh.
            scheduler.set_timesteps(num_inference_steps)
            # Samplers in sigma space (Euler, Heun) start from noise of std sigma_max; DDPM's sigma is 1.
            x = torch.randn((n, *shape), generator=generator).to(device) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    eps = unet(scheduler.scale_model_input(x, t), t).sample
                x = scheduler.step(eps.float(), t, x, **step_kwargs).prev_sample
                progress.update()
            if to_images is not None:
                x = to_images(x)
            out.append((x.float() / 2 + 0.5).clamp(0, 1).cpu())
    unet.train(was_training)
    return torch.cat(out)


def largest_fitting(fits, limit, start=PROBE_START):
    """The largest b in 1..limit with fits(b), where fits holds up to some size and fails beyond it.

    Doubles from `start` until fits fails or `limit` is reached, then bisects between the last
    success and the first failure: about 2 log2(b) calls. 0 when not even b = 1 fits.
    """
    good, b = 0, min(start, limit)
    while fits(b):
        good = b
        if b == limit:
            return b
        b = min(2 * b, limit)
    bad = b
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def is_out_of_memory(error):
    # cuDNN and cuBLAS may report a failed allocation of their own as a plain RuntimeError.
    message = str(error)
    return (isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in message.lower()
            or "ALLOC_FAILED" in message)


def unet_step_fits(unet, batch_size, dtype=None):
    """Whether one UNet evaluation of `batch_size` images fits the memory of its CUDA device."""
    device = next(unet.parameters()).device
    size = unet.config.sample_size
    shape = (batch_size, unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            unet(torch.randn(shape, device=device), 0).sample.float()
        torch.cuda.synchronize(device)
        fits = True
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        fits = False
    # After the except clause the failed attempt's tensors are unreferenced; hand their memory back.
    torch.cuda.empty_cache()
    return fits


def resolve_eval_batch_size(requested, unet, *, num_samples, dtype=None):
    """The sampling batch size for `requested` (a number, or "auto"), at most `num_samples`.

    "auto" on CUDA: the largest batch (up to MAX_EVAL_BATCH_SIZE) for which 1 / EVAL_MEMORY_MARGIN
    times as many images fit one UNet step in `dtype`, found by doubling and bisection with the
    memory free now. On CPU: CPU_EVAL_PIXELS worth of images. The probe runs the UNet alone, so a
    heavier `to_images` (a VAE decode) should get a number instead.
    """
    num_samples = max(num_samples, 1)
    if requested != AUTO:
        return min(int(requested), num_samples)
    unet_device = next(unet.parameters()).device
    size = unet.config.sample_size
    pixels = size * size if isinstance(size, int) else math.prod(size)
    if unet_device.type != "cuda":
        return max(1, min(CPU_EVAL_PIXELS // pixels, num_samples))
    was_training = unet.training
    unet.eval()
    limit = min(num_samples, MAX_EVAL_BATCH_SIZE)
    batch = largest_fitting(lambda b: unet_step_fits(unet, math.ceil(b / EVAL_MEMORY_MARGIN), dtype), limit)
    unet.train(was_training)
    if batch == 0:
        raise torch.cuda.OutOfMemoryError(f"not even one image can be sampled on {unet_device}: "
                                           f"free GPU memory or pass a number as --eval_batch_size")
    return batch


def save_grid(images, path, nrow=8):
    """Save images in [0, 1] as one PNG grid with `nrow` images a row."""
    save_image(images, path, nrow=nrow)


def check_samples_folder(folder):
    """UsageError unless `folder` can take --save_samples: absent, empty, or holding only the numbered
    PNGs of an earlier --save_samples (then replaced whole)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--save_samples {folder} is a file; pass a folder")
    if folder.is_dir():
        others = [p.name for p in folder.iterdir() if not SAMPLE_NAME.match(p.name)]
        if others:
            raise UsageError(f"--save_samples {folder} holds other files ({others[0]}, ...); it would be replaced "
                             f"whole: pass a new or empty folder")


def save_samples(images, folder):
    """Every image of `images` ([N, C, H, W] in [0, 1], C = 1 or 3) as `folder`/000000.png, 000001.png, ...
    (grayscale or RGB, rounded as torchvision's save_image rounds); the folder is written aside and
    renamed into place, replacing an earlier one whole."""
    pixels = images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def write(tmp):
        for i, array in enumerate(pixels):
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp / f"{i:06d}.png")
    return save_folder_atomically(folder, write)
