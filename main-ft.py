"""Fine-tune a pretrained DDPM with a PU objective (CIFAR10 and CelebA, DESIGN section 3).

    python main-ft.py --config_name CIFAR10_vehicles --algorithm PU --beta 0.1 --seed 42

Starts from the config's pretrained pipeline (google/ddpm-cifar10-32 or google/ddpm-celebahq-256;
--pretrained_model takes another hub id or a local folder) and keeps its noise schedule. Training,
saving (a DDIMPipeline in checkpoints/main_ft_{config}_{algorithm}_{beta}_{seed}/), the 8 x 8 grid
and the evaluation are main.py's; samples are drawn with DDIM in 50 steps.
"""
import argparse
from dataclasses import replace

from diffusers import DDIMPipeline

from configs import FINETUNE_CONFIGS, FINETUNE_SAMPLER, get_config
from models import IMAGE_CHANNELS
from models.pretrained import load_ddpm_configs, load_pretrained_ddpm
from utils.cli import add_eval_args, add_pretrained_model, add_run_args, eval_options, run_request
from utils.errors import UsageError, exits_on_usage_error
from utils.experiment import run_pixel_experiment
from utils.prior_data import beta_estimator_for_images
from utils.run import Run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, configs=FINETUNE_CONFIGS, default_config=FINETUNE_CONFIGS[0])
    add_eval_args(parser)
    add_pretrained_model(parser, help="hub id or saved DDPM pipeline folder (default: the config's, "
                                      "google/ddpm-cifar10-32 for CIFAR10 and google/ddpm-celebahq-256 for CelebA)")
    return parser.parse_args(argv)


def check_pretrained_unet(unet_config, config, source):
    """The pretrained UNet must take the config's images: 3 channels at config.image_size."""
    channels, size = unet_config["in_channels"], unet_config["sample_size"]
    if channels != IMAGE_CHANNELS or size not in (config.image_size, [config.image_size] * 2):
        raise UsageError(f"{source} takes {channels}-channel {size} px images but {config.dataset} is "
                         f"{IMAGE_CHANNELS}-channel {config.image_size} px; pass a --pretrained_model trained "
                         f"at that size")


@exits_on_usage_error
def main(args):
    config = get_config(args.config_name)
    source = args.pretrained_model or config.pretrained_model
    # The model's configs first (two small files): everything is checked before any weights load.
    unet_config, scheduler_config = load_ddpm_configs(source)
    check_pretrained_unet(unet_config, config, source)
    # The base of the run: the config with main-ft's sampler and the pretrained model's own schedule
    # and architecture (what trains, and what run_config.json records).
    architecture = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    base = replace(config, num_train_timesteps=scheduler_config["num_train_timesteps"], unet=architecture,
                   **FINETUNE_SAMPLER)
    run = Run.resolve(run_request(args, pretrained_model=source), "main_ft", args.config_name, base,
                      estimate_beta=beta_estimator_for_images(args.data_dir, args.seed, args.classifier_weights))
    unet, noise_scheduler = (None, None) if run.done else load_pretrained_ddpm(source)
    run_pixel_experiment(run, unet, noise_scheduler, DDIMPipeline, eval_options(args))


if __name__ == "__main__":
    main(parse_args())
