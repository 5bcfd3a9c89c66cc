"""Training and sampling throughput of our loop against the naive torchvision path; JSON on stdout.

    python benchmarks/throughput.py --config_name MNIST_even --unet digits --steps 10

Both training paths run utils.training.train, the loop the scripts run, for one epoch of --steps
batches after --warmup_steps batches: ours over the images materialized once (utils.data, on the
GPU when they fit), the naive one over the torchvision dataset with the paper's transforms applied
per item in the main process (DataLoader, num_workers=0, shuffle=True). The same images and labels
go through both. Sampling times utils.sampling.generate. MNIST configs use a synthetic MNIST in
idx format unless --data_dir holds the real files. FLOPs, peaks and MFU: benchmarks/measure.py.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from accelerate import Accelerator  # noqa: E402

from benchmarks import measure  # noqa: E402
from benchmarks.paths import per_item_views, time_training  # noqa: E402
from configs import ALGORITHMS, DIGITS_UNET, SCRATCH_CONFIGS, get_config, with_overrides  # noqa: E402
from losses import get_objective  # noqa: E402
from models import build_noise_scheduler, build_unet  # noqa: E402
from utils.data import DATA_ON_DEVICE  # noqa: E402
from utils.errors import UsageError, exits_on_usage_error  # noqa: E402
from utils.experiment import sampling_dtype  # noqa: E402
from utils.run import DEFAULT_BETA, MIXED_PRECISION, batch_size_or_auto, positive_int  # noqa: E402
from utils.sampling import AUTO, generate, resolve_eval_batch_size  # noqa: E402
from utils.training import make_accelerator  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_name", default="MNIST_even", choices=SCRATCH_CONFIGS)
    p.add_argument("--unet", default="config", choices=("config", "digits"),
                   help="the config's UNet, or configs.DIGITS_UNET at the config's image size")
    p.add_argument("--steps", type=positive_int, default=20, help="timed training batches per data path")
    p.add_argument("--warmup_steps", type=positive_int, default=2, help="untimed batches before them")
    p.add_argument("--repeats", type=positive_int, default=1, help="time each path this many times, alternating")
    p.add_argument("--batch_size", type=positive_int, help="default: the config's")
    p.add_argument("--sample_steps", type=positive_int, default=10, help="sampler steps per image")
    p.add_argument("--sample_images", type=positive_int, help="images sampled (default: the batch size)")
    p.add_argument("--eval_batch_size", type=batch_size_or_auto, default=AUTO,
                   help="sampling batch: a number or auto, as the scripts' --eval_batch_size")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", help="data root with the real files (default: synthetic MNIST)")
    p.add_argument("--algorithm", default="PU", choices=ALGORITHMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="default: fp16 on CUDA, no on CPU")
    speed = p.add_argument_group("the scripts' speed options (utils.run), for both paths")
    speed.add_argument("--allow_tf32", action=argparse.BooleanOptionalAction, default=True)
    speed.add_argument("--channels_last", action="store_true")
    speed.add_argument("--compile", action="store_true")
    speed.add_argument("--data_on_device", choices=DATA_ON_DEVICE, default="auto")
    return p.parse_args(argv)


def make_benchmark_accelerator(args):
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda but no CUDA GPU is visible; use --device cpu")
        return make_accelerator(args.mixed_precision, args.allow_tf32)
    if args.mixed_precision == "fp16":
        raise UsageError("--mixed_precision fp16 needs --device cuda; use no or bf16 on CPU")
    return Accelerator(cpu=True, mixed_precision=args.mixed_precision or "no")


def rate(images, seconds, flops_per_image, peak):
    return dict(images_per_s=images / seconds, seconds=seconds,
                mfu=flops_per_image * images / seconds / peak if peak else None)


@exits_on_usage_error
def main(args):
    config = with_overrides(get_config(args.config_name), batch_size=args.batch_size, num_epochs=1,
                            unet=dict(DIGITS_UNET) if args.unet == "digits" else None)
    accelerator = make_benchmark_accelerator(args)
    device, batch, images = accelerator.device, config.batch_size, args.steps * config.batch_size
    with tempfile.TemporaryDirectory() as folder:
        (warm, timed), source = per_item_views(config, args, folder, [args.warmup_steps * batch, images])
        pristine = build_unet(config).to(device)
        noise_scheduler = build_noise_scheduler(config)
        shape = (pristine.config.in_channels, config.image_size, config.image_size)
        train_flops, sample_flops = measure.count_flops(pristine, noise_scheduler, shape,
                                                        get_objective(args.algorithm, DEFAULT_BETA))
        prec = measure.precision(accelerator, args.allow_tf32)
        peak, peak_source = measure.peak_flops(device, prec)
        measure.reset_peak_memory(device)
        materialize_s, loader_s, train_s, model = time_training(accelerator, pristine, noise_scheduler, config,
                                                                args, warm, timed)
        train_memory = measure.peak_memory(device)
    result = dict(config=args.config_name, unet=args.unet, parameters=sum(p.numel() for p in pristine.parameters()),
                  image_size=config.image_size, batch_size=batch, steps=args.steps, repeats=args.repeats,
                  algorithm=args.algorithm, data=source, device=str(device), device_name=measure.device_name(device),
                  torch_threads=torch.get_num_threads(), load_average=os.getloadavg(), precision=prec,
                  options=dict(channels_last=args.channels_last, compile=args.compile, allow_tf32=args.allow_tf32,
                               data_on_device=args.data_on_device),
                  flops_per_train_image=train_flops, flops_per_sample_step_image=sample_flops,
                  peak_flops=peak, peak_flops_source=peak_source,
                  materialize=dict(images=images, seconds=materialize_s, images_per_s=images / materialize_s),
                  loader_only={name: dict(images_per_s=images / s, seconds=s) for name, s in loader_s.items()},
                  train={name: dict(rate(images, min(s), train_flops, peak), all_seconds=s)
                         for name, s in train_s.items()},
                  train_peak_memory=dict(zip(("bytes", "measure"), train_memory)))
    result["ours_over_naive"] = result["train"]["ours"]["images_per_s"] / result["train"]["naive"]["images_per_s"]
    result["sampling"] = sample(model, noise_scheduler, config, args, accelerator, sample_flops, peak)
    print(f"training {result['train']['ours']['images_per_s']:.1f} images/s (ours) vs "
          f"{result['train']['naive']['images_per_s']:.1f} (naive): {result['ours_over_naive']:.2f}x", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return result


def sample(model, noise_scheduler, config, args, accelerator, flops_per_step, peak):
    """Images/s of utils.sampling.generate at --sample_steps, after a one-step warm-up."""
    device, dtype = accelerator.device, sampling_dtype(accelerator)
    n = args.sample_images or config.batch_size
    batch = resolve_eval_batch_size(args.eval_batch_size, model, num_samples=n, dtype=dtype)
    common = dict(sampler=config.sampler, batch_size=batch, seed=args.seed, dtype=dtype)
    generate(model, noise_scheduler, num_inference_steps=1, num_samples=batch, **common)
    measure.reset_peak_memory(device)
    _, seconds = measure.timed(device, lambda: generate(model, noise_scheduler, num_inference_steps=args.sample_steps,
                                                        num_samples=n, **common))
    steps = rate(n * args.sample_steps, seconds, flops_per_step, peak)
    return dict(images=n, batch_size=batch, sample_steps=args.sample_steps, sampler=config.sampler,
                images_per_s=n / seconds, seconds=seconds, image_steps_per_s=steps["images_per_s"], mfu=steps["mfu"],
                peak_memory=dict(zip(("bytes", "measure"), measure.peak_memory(device))))


if __name__ == "__main__":
    main(parse_args())
