"""Peak memory and step time of the fine-tuning runs' models, trained by the scripts' loop; JSON on stdout.

    python benchmarks/memory.py --model sd-v1-4 --batch_size 16 [--gradient_checkpointing]
    python benchmarks/memory.py --model ddpm-celebahq-256 --batch_size 16

The models are the pretrained ones' architectures, as their hub configs state them (written out
below), with random weights: nothing is downloaded, and memory and time do not depend on the
weights. A step is utils.training.train's, as main-ft.py and main-sd.py run it: AdamW (fused on
CUDA) under the accelerator's mixed precision (fp16 autocast with the grad scaler by default on
CUDA) and the PU objective. For Stable Diffusion a batch of 512 px images and caption ids becomes
latents and text embeddings through frozen half-precision copies of the VAE and the text encoder
(utils.sd.make_sd_model_input), as in main-sd.py, and only the UNet trains. The step time is the
difference between runs of --warmup_steps + --steps and of --warmup_steps batches (set-up and first
batches cancel); the peak memory is the longer run's (torch.cuda.max_memory_allocated on CUDA), with
what was allocated when it started beside it (the frozen VAE and text encoder; the pristine
weights each run copies stay on the CPU). The synthetic images stay on the CPU: a real run whose data --data_on_device auto places on
the GPU adds its size (main-ft.py's CelebA set, 2,400 images at 256 px in fp32: 1.9 GB).
"""
import argparse
import contextlib
import copy
import gc
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from benchmarks import measure  # noqa: E402
from benchmarks.throughput import make_benchmark_accelerator  # noqa: E402
from configs import DEFAULT_BETA, get_config  # noqa: E402
from configs.sd import SD_CONFIG  # noqa: E402
from utils.cli import MIXED_PRECISION, positive_int  # noqa: E402
from utils.data import TensorPUDataset  # noqa: E402
from utils.errors import exits_on_usage_error  # noqa: E402
from utils.sampling import sampling_precision  # noqa: E402
from utils.sd import frozen_copy, make_sd_model_input  # noqa: E402
from utils.training import TrainingData, TrainingSpec, images_to_model_input, train  # noqa: E402

# CompVis/stable-diffusion-v1-4: UNet 859.5M, VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M parameters.
SD_V1_4 = dict(
    unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
              block_out_channels=(320, 640, 1280, 1280),
              down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
              cross_attention_dim=768, attention_head_dim=8),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
             block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512),
    text_encoder=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                      projection_dim=768))
# google/ddpm-celebahq-256's UNet2DModel: 113.7M parameters, attention at 16 x 16.
CELEBAHQ_256_UNET = dict(sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
                         block_out_channels=(128, 128, 256, 256, 512, 512),
                         down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
                         downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)
# Their training schedules: SD v1's scaled-linear betas and google/ddpm-*'s linear ones, 1,000 steps each.
SD_V1_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
DDPM_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
MODELS = ("sd-v1-4", "ddpm-celebahq-256")
CAPTION_LENGTH = 77          # CLIP's model_max_length: main-sd.py pads every caption to it
S_SHARE = 0.1                # the share of the batch labeled sensitive (y = 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default=MODELS[0])
    p.add_argument("--batch_size", type=positive_int, default=16)
    p.add_argument("--resolution", type=positive_int,
                   help="image size in pixels (default: the model's, 512 for SD and 256 for CelebA-HQ)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed training batches")
    p.add_argument("--warmup_steps", type=positive_int, default=2, help="untimed batches before them")
    p.add_argument("--gradient_checkpointing", action="store_true", help="as main-sd.py's option")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="default: fp16 on CUDA, no on CPU")
    p.add_argument("--allow_tf32", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_parts(model, architecture=None):
    """(trainable UNet, frozen parts {vae, text_encoder} or {}, noise scheduler) of random weights;
    `architecture` overrides the configs above (the tests pass tiny ones of the same layout)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPTextConfig, CLIPTextModel
    if model == "sd-v1-4":
        parts = architecture or SD_V1_4
        frozen = dict(vae=AutoencoderKL(**parts["vae"]),
                      text_encoder=CLIPTextModel(CLIPTextConfig(**parts["text_encoder"])))
        return UNet2DConditionModel(**parts["unet"]), frozen, DDPMScheduler(**SD_V1_SCHEDULE)
    return UNet2DModel(**(architecture or CELEBAHQ_256_UNET)), {}, DDPMScheduler(**DDPM_SCHEDULE)


def synthetic_batches(model, n, resolution, vocab_size, seed):
    """`n` random training items in the script's batch format: (pixels, caption ids, y) for SD,
    (images, y) for the pixel-space UNet; images in [-1, 1], a share S_SHARE labeled sensitive."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, resolution, resolution, generator=generator) * 2 - 1
    labels = (torch.rand(n, generator=generator) < S_SHARE).long()
    if model != "sd-v1-4":
        return TensorPUDataset(images, labels)
    captions = torch.randint(vocab_size, (n, CAPTION_LENGTH), generator=generator)
    return torch.utils.data.TensorDataset(images, captions, labels)


def config_for(model, batch_size, resolution):
    """The config main-sd.py or main-ft.py (CelebA) trains with, at this batch size and resolution, one epoch."""
    if model == "sd-v1-4":
        return replace(SD_CONFIG, batch_size=batch_size, resolution=resolution, num_epochs=1)
    return replace(get_config("CelebA_male"), batch_size=batch_size, image_size=resolution, num_epochs=1)


def measure_training(args, architecture=None):
    """The result record: parameters, seconds per step, images/s and peak memory."""
    resolution = args.resolution or (SD_CONFIG.resolution if args.model == "sd-v1-4"
                                     else CELEBAHQ_256_UNET["sample_size"])
    accelerator = make_benchmark_accelerator(args)
    device = accelerator.device
    torch.manual_seed(args.seed)
    pristine, frozen, noise_scheduler = build_parts(args.model, architecture)
    if args.gradient_checkpointing:
        pristine.enable_gradient_checkpointing()
    to_model_input = images_to_model_input
    if frozen:      # in the dtype main-sd.py gives them: the sampling precision (fp16 on CUDA)
        dtype = sampling_precision(device, accelerator.mixed_precision)[1] or torch.float32
        to_model_input = make_sd_model_input(frozen_copy(frozen["vae"], device, dtype),
                                             frozen_copy(frozen["text_encoder"], device, dtype))
    config = config_for(args.model, args.batch_size, resolution)
    spec = TrainingSpec(config, "PU", DEFAULT_BETA, seed=args.seed, data_on_device="no")
    vocab = frozen["text_encoder"].config.vocab_size if frozen else None

    def run(batches):
        data = synthetic_batches(args.model, batches * args.batch_size, resolution, vocab, args.seed)
        with contextlib.redirect_stdout(sys.stderr):      # the loop's lines; stdout is the JSON
            return train(accelerator, copy.deepcopy(pristine), noise_scheduler, TrainingData(data, to_model_input), spec)

    def timed_run(batches):
        """Seconds of a run on a fresh copy. The trained copy is dropped ([1]) and collected before
        the next run: a model that went through accelerate's mixed-precision wrapper keeps a reference cycle (its
        restored forward is bound to itself), so only the collector frees it."""
        seconds = measure.timed(device, lambda: run(batches))[1]
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return seconds

    timed_run(args.warmup_steps)                                              # kernels, cuDNN's choices
    short_s = timed_run(args.warmup_steps)
    measure.reset_peak_memory(device)
    at_start = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    long_s = timed_run(args.warmup_steps + args.steps)
    step_s = (long_s - short_s) / args.steps
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return dict(model=args.model, parameters=count(pristine), frozen_parameters={k: count(m) for k, m in frozen.items()},
                resolution=resolution, batch_size=args.batch_size, steps=args.steps,
                gradient_checkpointing=args.gradient_checkpointing, device=str(device),
                device_name=measure.device_name(device), mixed_precision=accelerator.mixed_precision,
                seconds_per_step=step_s if step_s > 0 else None,
                images_per_s=args.batch_size / step_s if step_s > 0 else None,
                peak_memory=dict(zip(("bytes", "measure"), measure.peak_memory(device)), allocated_at_start=at_start))


@exits_on_usage_error
def main(args):
    result = measure_training(args)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(parse_args())
