"""Speed of the sampling loop on this CPU: each option as a ratio against today's default, in one run.

    python benchmarks/sampling_speed.py --config_name FashionMNIST_clothes_cpu --json outputs/sampling_speed.json

Times utils.sampling.generate on a checkpoint (--checkpoint) or on a config's freshly built UNet with
random weights (the same architecture costs the same). The default is what an evaluation does today:
the batch --eval_batch_size auto picks on a CPU, torch's thread count, inference_mode, fp32, the
contiguous memory format, the eager UNet. Every other variant changes one of these: a few other batch
sizes, 1 or 2 threads (torch.set_num_threads), no_grad instead of inference_mode, channels_last
weights, bf16 autocast, torch.compile of the UNet (its compilation, the first call, timed apart and
added into `total_s`). Each variant first runs one untimed step on one batch, then draws --num_samples
images in --steps steps, the best of --repeats times; `speedup` is the default's seconds over its own.
Each also reports whether its samples equal the default's bit for bit, else the largest difference
(other batch sizes draw other noise for the stochastic samplers, so theirs differ by design).
"""
import argparse
import copy
import inspect
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from benchmarks.measure import cpu_info  # noqa: E402
from configs import CONFIGS, get_config  # noqa: E402
from models import SAMPLERS, build_noise_scheduler, build_unet  # noqa: E402
from utils.cli import positive_int  # noqa: E402
from utils.errors import exits_on_usage_error  # noqa: E402
from utils.evaluation import load_checkpoint_model  # noqa: E402
from utils.files import write_json_atomically  # noqa: E402
from utils.sampling import AUTO, Sampling, generate, resolve_eval_batch_size  # noqa: E402

DEFAULT_CONFIG = "FashionMNIST_clothes_cpu"
MODEL_SEED = 0                           # the random weights of a config's fresh UNet
SAMPLE_SEED = 0
BATCH_FACTORS = (0.25, 0.5, 2)           # the other batch sizes, as multiples of the default's
THREAD_COUNTS = (1, 2)
KINDS = ("batch", "threads", "no_grad", "channels_last", "bf16", "compile")
DEFAULT_BATCHES = 2                      # the default --num_samples: two of the default's batches
WARMUP_STEPS = 1


@dataclass(frozen=True)
class Variant:
    """One way to run the sampling loop; None and False mean the default's setting."""

    name: str
    batch_size: int = None
    threads: int = None
    no_grad: bool = False                # generate's body under no_grad instead of its inference_mode
    channels_last: bool = False
    bf16: bool = False                   # bf16 autocast around the UNet
    compile: bool = False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoints/main_* folder (default: --config_name's fresh UNet)")
    source.add_argument("--config_name", default=DEFAULT_CONFIG, choices=tuple(CONFIGS),
                        help="build this config's UNet with random weights (default: %(default)s)")
    p.add_argument("--sampler", default="ddpm", choices=tuple(SAMPLERS))
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps per image (default: %(default)s)")
    p.add_argument("--num_samples", type=positive_int,
                   help=f"images per timed draw (default: {DEFAULT_BATCHES} of the default's batches)")
    p.add_argument("--batch_sizes", type=positive_int, nargs="+",
                   help=f"other batch sizes (default: {', '.join(map(str, BATCH_FACTORS))} times the default's)")
    p.add_argument("--threads", type=positive_int, nargs="+", default=list(THREAD_COUNTS),
                   help="thread counts to try (default: %(default)s)")
    p.add_argument("--variants", nargs="+", choices=KINDS, default=list(KINDS),
                   help="kinds of variant to run (default: all)")
    p.add_argument("--repeats", type=positive_int, default=1, help="timed draws per variant, the best counts")
    p.add_argument("--json", type=Path, default=Path("outputs") / "sampling_speed.json",
                   help="where the results go (default: %(default)s)")
    return p.parse_args(argv)


def load_model(args):
    """(unet, noise scheduler, what they are) on the CPU."""
    if args.checkpoint:
        unet, noise_scheduler = load_checkpoint_model(args.checkpoint, "cpu")
        return unet, noise_scheduler, args.checkpoint
    config = get_config(args.config_name)
    torch.manual_seed(MODEL_SEED)
    return build_unet(config).eval(), build_noise_scheduler(config), f"{args.config_name} (random weights)"


def variants(args, default_batch):
    """The default first, then one variant per option asked for in --variants."""
    batches = args.batch_sizes or [max(1, int(default_batch * f)) for f in BATCH_FACTORS]
    kinds = {
        "batch": [Variant(f"batch {b}", batch_size=b) for b in dict.fromkeys(batches) if b != default_batch],
        "threads": [Variant(f"{n} thread{'s' * (n > 1)}", threads=n) for n in dict.fromkeys(args.threads)],
        "no_grad": [Variant("no_grad", no_grad=True)],
        "channels_last": [Variant("channels_last", channels_last=True)],
        "bf16": [Variant("bf16 autocast", bf16=True)],
        "compile": [Variant("torch.compile", compile=True)],
    }
    return [Variant("default"), *(v for kind in args.variants for v in kinds[kind])]


@contextmanager
def thread_count(n):
    """torch's intra-op threads set to `n` (None: left as they are) for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepared_unet(unet, variant):
    """The UNet as `variant` runs it: a channels_last copy, or compiled for inference."""
    if variant.channels_last:
        return copy.deepcopy(unet).to(memory_format=torch.channels_last)
    if variant.compile:
        return torch.compile(unet)
    return unet


def draw(unet, noise_scheduler, variant, *, sampler, steps, num_samples, batch_size):
    """utils.sampling.generate as `variant` runs it; with no_grad, its undecorated body under no_grad."""
    loop = inspect.unwrap(generate) if variant.no_grad else generate
    with torch.no_grad() if variant.no_grad else nullcontext():
        return loop(unet, noise_scheduler, Sampling(sampler, steps, num_samples, batch_size, SAMPLE_SEED),
                    dtype=torch.bfloat16 if variant.bf16 else None, desc=variant.name)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def measure(variant, unet, noise_scheduler, args, default_batch, num_samples):
    """(the variant's samples, its timings): a warm-up of one step on one batch, then the best draw."""
    batch = variant.batch_size or default_batch
    model = prepared_unet(unet, variant)
    common = dict(sampler=args.sampler, batch_size=batch)
    with thread_count(variant.threads):
        _, warmup_s = timed(lambda: draw(model, noise_scheduler, variant, steps=WARMUP_STEPS,
                                         num_samples=min(batch, num_samples), **common))
        runs = [timed(lambda: draw(model, noise_scheduler, variant, steps=args.steps, num_samples=num_samples,
                                   **common)) for _ in range(args.repeats)]
        threads = torch.get_num_threads()
    images, seconds = min(runs, key=lambda run: run[1])
    compile_s = warmup_s if variant.compile else None
    return images, dict(batch_size=batch, threads=threads, seconds=seconds, warmup_s=warmup_s, compile_s=compile_s,
                        total_s=seconds + (compile_s or 0.0), image_steps_per_s=num_samples * args.steps / seconds)


def compare(images, default_images, timings, default_seconds):
    """Speed ratios against the default and how far the samples are from the default's."""
    same_shape = images.shape == default_images.shape
    return dict(speedup=default_seconds / timings["seconds"], speedup_with_compile=default_seconds / timings["total_s"],
                identical=same_shape and torch.equal(images, default_images),
                max_abs_diff=(images - default_images).abs().max().item() if same_shape else None)


def fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def markdown_table(rows):
    header = ("variant", "batch", "threads", "seconds", "image-steps/s", "speedup", "compile s",
              "speedup incl. compile", "bit-identical", "max abs diff")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | " + " | ".join(["n/a"] * (len(header) - 2)) + f" | {r['error']} |")
            continue
        lines.append("| " + " | ".join((r["name"], str(r["batch_size"]), str(r["threads"]), fmt(r["seconds"]),
                                        fmt(r["image_steps_per_s"], ".1f"), fmt(r["speedup"]), fmt(r["compile_s"]),
                                        fmt(r["speedup_with_compile"]), "yes" if r["identical"] else "no",
                                        fmt(r["max_abs_diff"], ".2e"))) + " |")
    return "\n".join(lines)


def measured_row(variant, unet, noise_scheduler, args, default_batch, num_samples, default=None):
    """The table row of `variant` and its samples; `default` is the default's (images, seconds)."""
    images, timings = measure(variant, unet, noise_scheduler, args, default_batch, num_samples)
    default_images, default_seconds = default or (images, timings["seconds"])
    print(f"{variant.name}: {timings['seconds']:.2f} s", file=sys.stderr)
    return images, dict(asdict(variant), **timings, **compare(images, default_images, timings, default_seconds))


@exits_on_usage_error
def main(args):
    unet, noise_scheduler, source = load_model(args)
    default_batch = resolve_eval_batch_size(AUTO, unet, num_samples=args.num_samples or 10 ** 9)
    num_samples = args.num_samples or DEFAULT_BATCHES * default_batch
    default, *others = variants(args, default_batch)
    images, row = measured_row(default, unet, noise_scheduler, args, default_batch, num_samples)
    rows, reference = [row], (images, row["seconds"])
    for variant in others:
        try:
            rows.append(measured_row(variant, unet, noise_scheduler, args, default_batch, num_samples, reference)[1])
        except Exception as e:
            if not variant.compile:
                raise
            # torch.compile needs a working C++ toolchain for the CPU; where it fails, the other rows still stand.
            print(f"{variant.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append(dict(asdict(variant), error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
    result = dict(model=source, sampler=args.sampler, steps=args.steps, num_samples=num_samples,
                  default_batch_size=default_batch, default_threads=torch.get_num_threads(), repeats=args.repeats,
                  cpu=cpu_info()[0], load_average=os.getloadavg(), torch=torch.__version__, variants=rows)
    print(markdown_table(rows))
    print(f"saved {write_json_atomically(args.json, result)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main(parse_args())
