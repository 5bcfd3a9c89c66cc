"""Train a PU diffusion model from scratch (MNIST, Fashion-MNIST, CIFAR10, STL10, the offline digits, or
your own image folders).

    python main.py --config_name MNIST_even --algorithm PU --beta 0.1 --seed 42
    python main.py --train_data_dir DIR --resolution 32 --algorithm PU --seed 0

With --train_data_dir, U and S are the images in DIR/unlabeled/ and DIR/sensitive/ (docs/own-data.md),
the config is only the recipe (UNet, optimisation, sampler, evaluation count and judge; default
FashionMNIST_clothes_cpu), and the run's key names the folder: main_{folder}_{algorithm}_{beta}_{seed}.
"""
import argparse

from diffusers import DDPMPipeline

from configs import DEFAULT_FOLDER_CONFIG, get_config
from models import build_noise_scheduler, build_unet
from utils.cli import add_eval_args, add_folder_args, add_run_args, eval_options, run_request, settle_config_name
from utils.data import SCRATCH_CONFIGS
from utils.errors import exits_on_usage_error
from utils.experiment import run_pixel_experiment
from utils.folders import folder_config, folder_overrides, scan_folder
from utils.prior_data import beta_estimator_for_images
from utils.run import Run
from utils.seeding import seed_everything

DEFAULT_CONFIG = "MNIST_even"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, configs=SCRATCH_CONFIGS,
                 config_help=f"experiment from the config registry (default: {DEFAULT_CONFIG}); with --train_data_dir "
                             f"the recipe of the run (default then: {DEFAULT_FOLDER_CONFIG})")
    add_folder_args(parser)
    add_eval_args(parser)
    return settle_config_name(parser, parser.parse_args(argv), DEFAULT_CONFIG, DEFAULT_FOLDER_CONFIG)


@exits_on_usage_error
def main(args):
    name, base, shape = args.config_name, get_config(args.config_name), {}
    if args.train_data_dir:   # the folder's images replace the config's split; the key names the folder
        folder = scan_folder(args.train_data_dir)
        name, base = folder.name, folder_config(base, folder)
        shape = folder_overrides(base, args.resolution, args.channels)
        folder.check_batch(args.batch_size or base.batch_size)
    run = Run.resolve(run_request(args, **shape), "main", name, base,
                      estimate_beta=beta_estimator_for_images(args.data_dir, args.seed, args.classifier_weights))
    seed_everything(run.seed)   # torch's default seed differs per process: the initial weights follow --seed
    unet = build_unet(run.config)
    run_pixel_experiment(run, unet, build_noise_scheduler(run.config), DDPMPipeline, eval_options(args))


if __name__ == "__main__":
    main(parse_args())
