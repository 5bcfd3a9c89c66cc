"""Fine-tune a pretrained DDPM with a PU objective (CIFAR10 and CelebA, DESIGN section 3, or any
UNet2DModel pipeline on any config whose images it takes, or on your own image folders).

    python main-ft.py --config_name CIFAR10_vehicles --algorithm PU --beta 0.1 --seed 42
    python main-ft.py --pretrained_model MODEL --train_data_dir DIR --algorithm PU --seed 0

Starts from --pretrained_model (a hub id or a folder: a DDPMPipeline, a DDIMPipeline or any folder with
unet/ and scheduler/; default the config's, google/ddpm-cifar10-32 or google/ddpm-celebahq-256) and
keeps its noise schedule. The model must take the data's images: a config's 3-channel images at its
size, or a folder's images, which are resized to the model's size and given its channel count; one
that does not is refused before any weights load. Training, saving (a DDIMPipeline in
checkpoints/main_ft_{config or folder}_{algorithm}_{beta}_{seed}/), the 8 x 8 grid and the evaluation
are main.py's; samples are drawn with DDIM in 50 steps. The source is recorded in run_config.json.
"""
import argparse
from dataclasses import replace

from diffusers import DDIMPipeline

from configs import CONFIGS, DEFAULT_FOLDER_CONFIG, FINETUNE_CONFIGS, FINETUNE_SAMPLER, get_config
from models import IMAGE_CHANNELS
from models.pretrained import load_ddpm_configs, load_pretrained_ddpm, unet_image_shape
from utils.cli import add_eval_args, add_folder_args, add_pretrained_model, add_run_args, eval_options, run_request, \
    settle_config_name
from utils.errors import UsageError, exits_on_usage_error
from utils.experiment import run_pixel_experiment
from utils.folders import CHANNEL_MODES, folder_config, scan_folder
from utils.prior_data import beta_estimator_for_images
from utils.run import Run

DEFAULT_CONFIG = FINETUNE_CONFIGS[0]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, configs=tuple(CONFIGS),
                 config_help=f"experiment from the config registry (default: {DEFAULT_CONFIG}); with --train_data_dir "
                             f"the recipe of the run (default then: {DEFAULT_FOLDER_CONFIG}); a config without a "
                             f"pretrained model ({', '.join(FINETUNE_CONFIGS)} have one) needs --pretrained_model")
    add_folder_args(parser, channels_help="the pretrained model's channel count, 1 or 3 (default: the model's)")
    add_eval_args(parser)
    add_pretrained_model(parser, help="hub id or saved DDPM pipeline folder (default: the config's, "
                                      "google/ddpm-cifar10-32 for CIFAR10 and google/ddpm-celebahq-256 for CelebA)")
    args = settle_config_name(parser, parser.parse_args(argv), DEFAULT_CONFIG, DEFAULT_FOLDER_CONFIG)
    if not (args.pretrained_model or get_config(args.config_name).pretrained_model):
        parser.error(f"--config_name {args.config_name} has no pretrained model: pass --pretrained_model (a hub id or "
                     f"a pipeline folder), or choose a config that has one: {', '.join(FINETUNE_CONFIGS)}")
    return args


def check_pretrained_unet(unet_config, source, config=None, resolution=None, channels=None):
    """(channels, size) of the images the pretrained UNet takes, refused (UsageError, naming what would fit)
    unless they are the data's: a `config`'s 3-channel images at config.image_size, or else an image
    folder's at `resolution` and with `channels` (each the model's when None)."""
    in_channels, size = unet_image_shape(unet_config)
    takes = f"{source} takes {in_channels}-channel {size} px images"
    if unet_config.get("out_channels", in_channels) != in_channels:
        raise UsageError(f"{source} predicts {unet_config['out_channels']} channels for {in_channels}-channel images; "
                         f"the PU losses need a model that predicts the noise itself (out_channels = in_channels)")
    if config is not None:
        if in_channels != IMAGE_CHANNELS or size != config.image_size:
            raise UsageError(f"{takes} but {config.dataset} is {IMAGE_CHANNELS}-channel {config.image_size} px; pass a "
                             f"--pretrained_model trained at that size, or fine-tune this one on image folders "
                             f"(--train_data_dir DIR: images resized to {size} px)")
        return in_channels, size
    if in_channels not in CHANNEL_MODES:
        raise UsageError(f"{takes}; image folders give 1 (grayscale) or 3 (RGB) channels: pass a --pretrained_model "
                         f"with in_channels 1 or 3")
    if resolution not in (None, size):
        raise UsageError(f"{takes} but --resolution is {resolution}; pass --resolution {size} or leave it out")
    if channels not in (None, in_channels):
        raise UsageError(f"{takes} but --channels is {channels}; pass --channels {in_channels} or leave it out")
    return in_channels, size


@exits_on_usage_error
def main(args):
    config = get_config(args.config_name)
    source = args.pretrained_model or config.pretrained_model
    folder = scan_folder(args.train_data_dir) if args.train_data_dir else None
    # The model's configs next (two small files): everything is checked before any weights load.
    unet_config, scheduler_config = load_ddpm_configs(source)
    channels, size = check_pretrained_unet(unet_config, source, None if folder else config, args.resolution,
                                           args.channels)
    # The base of the run: the config with main-ft's sampler and the pretrained model's own schedule,
    # architecture and image shape (what trains, and what run_config.json records).
    architecture = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    base = replace(config, num_train_timesteps=scheduler_config["num_train_timesteps"], unet=architecture,
                   image_size=size, channels=channels, **FINETUNE_SAMPLER)
    name = args.config_name
    if folder:   # the folder's images replace the config's split; the key names the folder
        name, base = folder.name, folder_config(base, folder)
        folder.check_batch(args.batch_size or base.batch_size)
    run = Run.resolve(run_request(args, pretrained_model=source), "main_ft", name, base,
                      estimate_beta=beta_estimator_for_images(args.data_dir, args.seed, args.classifier_weights))
    unet, noise_scheduler = (None, None) if run.done else load_pretrained_ddpm(source)
    run_pixel_experiment(run, unet, noise_scheduler, DDIMPipeline, eval_options(args))


if __name__ == "__main__":
    main(parse_args())
