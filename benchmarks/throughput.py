"""Training and sampling throughput of our loop against the naive torchvision path; JSON on stdout.

    python benchmarks/throughput.py --config_name MNIST_even --unet digits --steps 10

Both training paths run utils.training.train, the loop the scripts run (benchmarks/paths.py):
ours over the images materialized once (utils.data, on the GPU when they fit), the naive one over
the torchvision dataset with the paper's transforms applied per item in the main process
(DataLoader, num_workers=0, shuffle=True), with the same images and labels. A training rate is
--steps batches over the time a run of --warmup_steps + --steps batches takes beyond one of
--warmup_steps; the best of --repeats. `ours_over_naive` compares them; `naive_data_share` is the
naive loader's share of the naive step and `ratio_bound` the most a free data path could gain.
Sampling times utils.sampling.generate. MNIST configs use a synthetic MNIST in idx format unless
--data_dir holds the real files. FLOPs, peaks, MFU and memory: benchmarks/measure.py.
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
from configs import DEFAULT_BETA, DIGITS_UNET, get_config, with_overrides  # noqa: E402
from losses import ALGORITHMS, get_objective  # noqa: E402
from models import build_noise_scheduler, build_unet  # noqa: E402
from utils.cli import MIXED_PRECISION, batch_size_or_auto, positive_int  # noqa: E402
from utils.data import DATA_ON_DEVICE, SCRATCH_CONFIGS  # noqa: E402
from utils.errors import UsageError, exits_on_usage_error  # noqa: E402
from utils.sampling import AUTO, Sampling, generate, resolve_eval_batch_size, sampling_precision  # noqa: E402
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
    p.add_argument("--sample_images", type=positive_int,
                   help="images sampled (default: one batch of what --eval_batch_size gives the evaluation)")
    p.add_argument("--eval_batch_size", type=batch_size_or_auto, default=AUTO,
                   help="sampling batch: a number or auto, as the scripts' --eval_batch_size")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", help="data root with the real files (default: synthetic MNIST)")
    p.add_argument("--algorithm", default="PU", choices=tuple(ALGORITHMS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="default: fp16 on CUDA, no on CPU")
    speed = p.add_argument_group("the scripts' speed options (utils.cli), for both paths")
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
    """Images/s and MFU; None where a difference of two noisy timings came out non-positive."""
    if seconds <= 0:
        return dict(images_per_s=None, seconds=seconds, mfu=None)
    return dict(images_per_s=images / seconds, seconds=seconds,
                mfu=flops_per_image * images / seconds / peak if peak else None)


def fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def compare(result):
    """ours / naive, and where the naive loop's time goes: the share its loader alone takes, and so
    the most any data path could gain over it (the loader's cost brought to zero)."""
    ours, naive = (result["train"][name]["images_per_s"] for name in ("ours", "naive"))
    loader_s = result["loader_only"]["naive"]["seconds"] / result["loader_only"]["naive"]["images"]
    step_s = result["train"]["naive"]["seconds"] / (result["steps"] * result["batch_size"])
    share = loader_s / step_s if naive else None
    return dict(ours_over_naive=ours / naive if ours and naive else None, naive_data_share=share,
                ratio_bound=1 / (1 - share) if share is not None and share < 1 else None)


@exits_on_usage_error
def main(args):
    config = with_overrides(get_config(args.config_name), batch_size=args.batch_size, num_epochs=1,
                            unet=dict(DIGITS_UNET) if args.unet == "digits" else None)
    batch, images = config.batch_size, args.steps * config.batch_size
    with tempfile.TemporaryDirectory() as folder:
        short, long, source = per_item_views(config, args, folder)
        accelerator = make_benchmark_accelerator(args)
        device = accelerator.device
        pristine = build_unet(config).to(device)
        noise_scheduler = build_noise_scheduler(config)
        shape = (pristine.config.in_channels, config.image_size, config.image_size)
        train_flops, sample_flops = measure.count_flops(pristine, noise_scheduler, shape,
                                                        get_objective(args.algorithm, DEFAULT_BETA))
        prec = measure.precision(accelerator, args.allow_tf32)
        peak, peak_source = measure.peak_flops(device, prec)
        measure.reset_peak_memory(device)
        materialize_s, loader_s, train_s, model = time_training(accelerator, pristine, noise_scheduler, config,
                                                                args, short, long)
        train_memory = measure.peak_memory(device)
    result = dict(config=args.config_name, unet=args.unet, parameters=sum(p.numel() for p in pristine.parameters()),
                  image_size=config.image_size, batch_size=batch, steps=args.steps, repeats=args.repeats,
                  algorithm=args.algorithm, data=source, device=str(device), device_name=measure.device_name(device),
                  torch_threads=torch.get_num_threads(), load_average=os.getloadavg(), precision=prec,
                  options=dict(channels_last=args.channels_last, compile=args.compile, allow_tf32=args.allow_tf32,
                               data_on_device=args.data_on_device),
                  flops_per_train_image=train_flops, flops_per_sample_step_image=sample_flops,
                  peak_flops=peak, peak_flops_source=peak_source,
                  materialize=dict(images=len(long), seconds=materialize_s, images_per_s=len(long) / materialize_s),
                  loader_only={name: dict(images=len(long), seconds=s, images_per_s=len(long) / s)
                               for name, s in loader_s.items()},
                  train={name: dict(rate(images, min((t for t in s if t > 0), default=min(s)), train_flops, peak),
                                    all_seconds=s) for name, s in train_s.items()},
                  train_peak_memory=dict(zip(("bytes", "measure"), train_memory)))
    result.update(compare(result))
    result["sampling"] = sample(model, noise_scheduler, config, args, accelerator, sample_flops, peak)
    ours, naive = (fmt(result["train"][name]["images_per_s"], ".1f") for name in ("ours", "naive"))
    print(f"training images/s: ours {ours}, naive {naive}, ours / naive {fmt(result['ours_over_naive'])}; the "
          f"naive loader takes {fmt(result['naive_data_share'], '.1%')} of the naive step", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return result


def sample(model, noise_scheduler, config, args, accelerator, flops_per_step, peak):
    """Images/s of utils.sampling.generate at --sample_steps, after a one-step warm-up, in the batch
    --eval_batch_size gives the config's evaluation (--sample_images, default one such batch, caps
    it); and that evaluation's sampling time extrapolated from the rate: its images times its
    sampler steps over the image-steps per second timed here."""
    device, dtype = sampling_precision(accelerator.device, accelerator.mixed_precision)
    eval_batch = resolve_eval_batch_size(args.eval_batch_size, model, num_samples=config.num_eval_samples, dtype=dtype)
    n = args.sample_images or eval_batch
    batch = min(eval_batch, n)
    common = dict(sampler=config.sampler, batch_size=batch, seed=args.seed)
    generate(model, noise_scheduler, Sampling(num_inference_steps=1, num_samples=batch, **common), dtype=dtype)
    measure.reset_peak_memory(device)
    timed = Sampling(num_inference_steps=args.sample_steps, num_samples=n, **common)
    _, seconds = measure.timed(device, lambda: generate(model, noise_scheduler, timed, dtype=dtype))
    steps = rate(n * args.sample_steps, seconds, flops_per_step, peak)
    return dict(images=n, batch_size=batch, sample_steps=args.sample_steps, sampler=config.sampler,
                images_per_s=n / seconds, seconds=seconds, image_steps_per_s=steps["images_per_s"], mfu=steps["mfu"],
                peak_memory=dict(zip(("bytes", "measure"), measure.peak_memory(device))),
                evaluation=dict(num_samples=config.num_eval_samples, batch_size=eval_batch,
                                num_inference_steps=config.num_inference_steps, timed_at_this_batch=batch == eval_batch,
                                seconds=config.num_eval_samples * config.num_inference_steps / steps["images_per_s"]
                                if steps["images_per_s"] else None))


if __name__ == "__main__":
    main(parse_args())
