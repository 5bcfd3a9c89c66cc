"""Generate main-sd.py's training images with Stable Diffusion v1-4, resumably.

    python make-sd-data.py --output_dir datasets/middle_aged_man100

Writes 64 "a photo of a middle-aged man" and 16 "a photo of Brad Pitt" images into 0_unlabeled/
and 20 "a photo of Brad Pitt" images into 1_positive/ (counts: configs/sd.py, or --num_* below).
--normal_prompt and --sensitive_prompt draw another concept (files named after the prompts, e.g.
red_car_0000.png; give main-sd.py the same prompts). Image i of each part comes from its own
generator seeded with --seed + the part's offset + i, so a rerun keeps the files that exist and
redraws a missing one as it was first drawn.
"""
import argparse
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from configs.sd import BRAD_PITT, MIDDLE_AGED_MAN_HYPHENATED, SD_CONFIG, with_prompts
from models.pretrained import load_stable_diffusion
from utils.cli import (add_num_inference_steps, add_output_dir, add_pretrained_model, add_prompt_args,
                       non_negative_int, positive_int, seed_value)
from utils.errors import UsageError, exits_on_usage_error
from utils.files import write_file_atomically
from utils.sampling import sampling_precision
from utils.sd import check_resolution

DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pretrained_model(parser, default=SD_CONFIG.pretrained_model)
    add_output_dir(parser, default=SD_CONFIG.data_dir, help="receives the two subfolders (default: %(default)s)")
    parser.add_argument("--seed", type=seed_value, default=DEFAULT_SEED,
                        help="base seed of the per-image generators (default: %(default)s)")
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help="images per pipeline call (default: %(default)s)")
    add_num_inference_steps(parser, default=SD_CONFIG.num_inference_steps,
                            help="denoising steps per image (default: %(default)s)")
    parser.add_argument("--resolution", type=positive_int,
                        help="image size (default: the pipeline's own, 512 for v1-4)")
    add_prompt_args(parser, BRAD_PITT, MIDDLE_AGED_MAN_HYPHENATED,
                    dict(sensitive="drawn into both folders", normal=f"drawn into {SD_CONFIG.unlabeled_dir}/"))
    for part in SD_CONFIG.data_parts:
        parser.add_argument(f"--num_{part.name}", type=non_negative_int, default=part.count,
                            help=f"'{part.prompt}' images in {part.folder}/ (or --"
                                 f"{'normal' if part.name == 'unlabeled_man' else 'sensitive'}_prompt's) "
                                 f"(default: %(default)s)")
    return parser.parse_args(argv)


def data_parts(sensitive_prompt, normal_prompt):
    """The parts to draw: SD_CONFIG's for the prompts its data were drawn with, else those of configs.sd.with_prompts."""
    if (sensitive_prompt, normal_prompt) == (BRAD_PITT, MIDDLE_AGED_MAN_HYPHENATED):
        return SD_CONFIG.data_parts
    if sensitive_prompt == normal_prompt:
        raise UsageError(f"--sensitive_prompt and --normal_prompt are both {sensitive_prompt!r}; give two different prompts")
    return with_prompts(SD_CONFIG, sensitive_prompt, normal_prompt).data_parts


def pending_images(root, parts, seed):
    """(path, prompt, seed) of every image of `parts` not yet under `root`, and the total count."""
    jobs, total = [], 0
    for part in parts:
        for i in range(part.count):
            path = root / part.folder / f"{part.stem}_{i:04d}.png"
            total += 1
            if not path.exists():
                jobs.append((path, part.prompt, seed + part.seed_offset + i))
    return jobs, total


@exits_on_usage_error
def main(args):
    root = Path(args.output_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--output_dir {root} is a file; pass a folder")
    parts = [replace(p, count=getattr(args, f"num_{p.name}")) for p in data_parts(args.sensitive_prompt, args.normal_prompt)]
    jobs, total = pending_images(root, parts, args.seed)
    print(f"{root}: {total - len(jobs)} of {total} images present, {len(jobs)} to generate")
    if not jobs:
        return
    pipe = load_stable_diffusion(args.pretrained_model)
    if args.resolution:
        check_resolution(pipe, args.resolution)
    device, dtype = sampling_precision()
    pipe.to(device, dtype or torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for folder in {p.folder for p in parts}:
        (root / folder).mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), desc="generating") as bar:
        for start in range(0, len(jobs), args.batch_size):
            batch = jobs[start:start + args.batch_size]
            images = pipe([prompt for _, prompt, _ in batch], height=args.resolution, width=args.resolution,
                          generator=[torch.Generator().manual_seed(s) for _, _, s in batch],
                          num_inference_steps=args.num_inference_steps,
                          guidance_scale=SD_CONFIG.guidance_scale).images
            for (path, _, _), image in zip(batch, images):
                write_file_atomically(path, image.save)
            bar.update(len(batch))
    print(f"wrote {len(jobs)} images to {root}")


if __name__ == "__main__":
    main(parse_args())
