"""Sampling a Stable Diffusion pipeline per prompt and judging the samples with CLIP zero-shot.

The metric of the SD experiment: for each prompt of configs/sd.py, the share of N samples that
CLIP calls "a photo of Brad Pitt" rather than "a photo of a middle-aged man". A PU model should
drive the share down for the Brad Pitt prompt while the middle-aged-man prompt stays as it was.
Image i of every prompt is drawn from its own generator seeded with seed + i, so the first 16
samples are the grid whatever N is, and results do not depend on the batch size.
"""
import math
import time
from pathlib import Path

import torch
from torchvision.transforms.functional import to_tensor
from tqdm.auto import tqdm

from utils.files import RESULTS_DIR, write_file_atomically, write_json_atomically
from utils.sampling import save_grid

SAMPLE_BATCH_SIZE = 16      # images per pipeline call (x2 inside it for classifier-free guidance)
CLIP_BATCH_SIZE = 64


def sample_prompts(pipe, config, num_images, seed, resolution, batch_size=SAMPLE_BATCH_SIZE):
    """{prompt name: `num_images` PIL images} for every prompt in `config.sample_prompts`."""
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for p in config.sample_prompts:
        images = []
        for start in tqdm(range(0, num_images, batch_size), desc=f"sampling '{p.prompt}'", leave=False,
                          total=math.ceil(num_images / batch_size)):
            n = min(batch_size, num_images - start)
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
            images += pipe([p.prompt] * n, height=resolution, width=resolution, generator=generators,
                           num_inference_steps=config.num_inference_steps,
                           guidance_scale=config.guidance_scale).images
        out[p.name] = images
    return out


def save_grid_images(images, path, nrow):
    """Save PIL images as one PNG grid with `nrow` images a row, atomically."""
    batch = torch.stack([to_tensor(im) for im in images])
    return write_file_atomically(path, lambda tmp: save_grid(batch, tmp, nrow=nrow))


@torch.inference_mode()
def brad_pitt_flags(images, model, processor, labels, device, batch_size=CLIP_BATCH_SIZE):
    """A bool tensor [N]: True where CLIP ranks labels[0] above every other label for the image."""
    text = processor(text=list(labels), return_tensors="pt", padding=True)
    flags = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=images[start:start + batch_size], return_tensors="pt").pixel_values
        logits = model(input_ids=text.input_ids.to(device), attention_mask=text.attention_mask.to(device),
                       pixel_values=pixels.to(device, model.dtype)).logits_per_image
        flags.append(logits.argmax(dim=1).cpu() == 0)
    return torch.cat(flags)


def clip_shares(images_by_prompt, clip, config, device):
    """{metric name: share of the prompt's images judged labels[0]} for every sample prompt."""
    model, processor = clip
    model = model.to(device)
    shares = {}
    for p in config.sample_prompts:
        flags = brad_pitt_flags(images_by_prompt[p.name], model, processor, config.clip_labels, device)
        shares[p.metric] = flags.sum().item() / len(flags)    # exact in Python floats, e.g. 0.55
    return shares


def sample_and_score(pipe, config, seed, num_eval, clip, device, num_grid=0):
    """Sample max(num_grid, num_eval) images per prompt and score the first `num_eval` with `clip`.

    Returns ({prompt name: PIL images}, {metric: share} or None without `clip`, {stage: seconds}).
    """
    start = time.time()
    images = sample_prompts(pipe, config, max(num_grid, num_eval), seed, config.resolution)
    times = dict(sample_seconds=round(time.time() - start, 1))
    if clip is None or not num_eval:
        return images, None, times
    start = time.time()
    metrics = clip_shares({k: v[:num_eval] for k, v in images.items()}, clip, config, device)
    times["clip_seconds"] = round(time.time() - start, 1)
    return images, metrics, times


def save_prompt_grids(images, config, image_dir, key):
    """The first config.grid_samples images of each prompt as a square grid, {key}_{prompt name}.png."""
    return [save_grid_images(images[p.name][:config.grid_samples], Path(image_dir) / f"{key}_{p.name}.png",
                             nrow=math.isqrt(config.grid_samples))
            for p in config.sample_prompts]


def write_results(root, record):
    """Write `record` to {root}/outputs/results/{key}.json, atomically; returns the path."""
    return write_json_atomically(Path(root) / RESULTS_DIR / f"{record['key']}.json", record)
