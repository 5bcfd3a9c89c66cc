"""Fine-tune Stable Diffusion's UNet with a PU objective so it stops drawing Brad Pitt.

    python main-sd.py --algorithm PU --beta 0.1 --seed 42

Data: --data_dir holds 0_unlabeled/ (y = 0) and 1_positive/ (y = 1); make-sd-data.py writes it.
Only the UNet trains; the VAE and text encoder are frozen (fp16 on CUDA). Saves a
StableDiffusionPipeline to checkpoints/main_sd_{algorithm}_{beta}_{seed}/, a 4 x 4 grid per prompt
to outputs/images/, and the CLIP evaluation to outputs/results/ (--num_eval_samples 0 skips it).
"""
import argparse
import time

import torch
from diffusers import StableDiffusionPipeline
from torch.utils.tensorboard import SummaryWriter

from configs import with_overrides
from configs.sd import SD_CONFIG
from models.pretrained import load_clip, load_stable_diffusion, training_noise_scheduler
from utils.data import place_on_device
from utils.errors import exits_on_usage_error
from utils.experiment import sampling_dtype
from utils.run import Run, add_run_args, non_negative_int, positive_int, save_pipeline, seed_everything
from utils.sd import SDImageDataset, check_resolution, frozen_copy, make_sd_model_input, validate_sd_folder
from utils.sd_eval import results_record, sample_and_score, save_prompt_grids, write_results
from utils.training import make_accelerator, train

DEFAULT_NUM_WORKERS = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.set_defaults(data_dir=SD_CONFIG.data_dir)
    sd = parser.add_argument_group("Stable Diffusion")
    sd.add_argument("--pretrained_model", default=SD_CONFIG.pretrained_model,
                    help="hub id or saved pipeline folder (default: %(default)s)")
    sd.add_argument("--resolution", type=positive_int, help=f"image size (default: {SD_CONFIG.resolution})")
    sd.add_argument("--gradient_checkpointing", action="store_true",
                    help="recompute UNet activations during backward: less memory, slower steps")
    sd.add_argument("--num_workers", type=non_negative_int, default=DEFAULT_NUM_WORKERS,
                    help="DataLoader processes that decode and resize images (default: %(default)s)")
    sd.add_argument("--num_eval_samples", type=non_negative_int, default=SD_CONFIG.num_eval_samples,
                    help="images per prompt judged by CLIP after training; 0 skips it (default: %(default)s)")
    sd.add_argument("--clip_model", default=SD_CONFIG.clip_model, help="hub id or folder of the CLIP judge")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    run = Run.from_args(args, prefix="main_sd", key_parts=[],
                        config=with_overrides(SD_CONFIG.for_algorithm(args.algorithm), resolution=args.resolution))
    config = run.config     # with the command line's overrides
    files = validate_sd_folder(args.data_dir, config)
    clip = load_clip(args.clip_model) if args.num_eval_samples else None
    pipe = load_stable_diffusion(args.pretrained_model)
    check_resolution(pipe, config.resolution)
    noise_scheduler = training_noise_scheduler(pipe.scheduler, args.pretrained_model)

    accelerator = make_accelerator(args.mixed_precision, args.allow_tf32)
    dtype = sampling_dtype(accelerator) or torch.float32
    # Frozen copies on the device; the fp32 originals stay in `pipe` and are saved unchanged.
    vae = frozen_copy(pipe.vae, accelerator.device, dtype)
    text_encoder = frozen_copy(pipe.text_encoder, accelerator.device, dtype)
    if args.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    # Images are decoded per item by DataLoader workers; --data_on_device yes is refused here.
    dataset = place_on_device(SDImageDataset(files, config, pipe.tokenizer), accelerator.device,
                              args.data_on_device)
    seed_everything(args.seed)
    writer = SummaryWriter(run.log_dir) if accelerator.is_main_process else None
    unet = train(accelerator, pipe.unet, noise_scheduler, dataset,
                 algorithm=args.algorithm, beta=run.beta, correction=args.pu_correction, config=config,
                 seed=args.seed, to_model_input=make_sd_model_input(vae, text_encoder), writer=writer,
                 channels_last=args.channels_last, num_workers=args.num_workers,
                 trainable_parameters=pipe.unet.parameters(), checkpointing=run.checkpointing,
                 compile_model=args.compile)
    del vae, text_encoder
    accelerator.free_memory()   # drops the optimizer state before sampling
    if not accelerator.is_main_process:
        return
    times = dict(train_seconds=round(time.time() - run.started, 1))

    pipe = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    record = run.record(data=dict(n_unlabeled=len(files[0]), n_positive=len(files[1])),
                        device=str(accelerator.device), mixed_precision=accelerator.mixed_precision)
    path = save_pipeline(run, pipe, record)
    writer.close()

    pipe.to(accelerator.device, dtype)
    images, metrics, eval_times = sample_and_score(pipe, config, args.seed, args.num_eval_samples, clip,
                                                   accelerator.device, num_grid=config.grid_samples)
    grids = save_prompt_grids(images, config, run.image_dir, run.key)
    print(f"saved {path}, " + ", ".join(map(str, grids)))
    if metrics is not None:
        result = results_record(record, config, metrics, args.num_eval_samples, args.clip_model,
                                {**times, **eval_times}, type(pipe.scheduler).__name__)
        path = write_results(run.root, result)
        print(f"{run.key}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()) + f"; saved {path}")


if __name__ == "__main__":
    main(parse_args())
