"""Train a PU diffusion model from scratch (MNIST, Fashion-MNIST, CIFAR10, STL10 and the offline digits).

    python main.py --config_name MNIST_even --algorithm PU --beta 0.1 --seed 42
"""
import argparse

from diffusers import DDPMPipeline

from configs import get_config
from models import build_noise_scheduler, build_unet
from utils.cli import add_eval_args, add_run_args, eval_options, run_request
from utils.data import SCRATCH_CONFIGS
from utils.errors import exits_on_usage_error
from utils.experiment import run_pixel_experiment
from utils.prior_data import beta_estimator_for_images
from utils.run import Run
from utils.seeding import seed_everything


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, configs=SCRATCH_CONFIGS, default_config="MNIST_even")
    add_eval_args(parser)
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    run = Run.resolve(run_request(args), "main", args.config_name, get_config(args.config_name),
                      estimate_beta=beta_estimator_for_images(args.data_dir, args.seed, args.classifier_weights))
    seed_everything(run.seed)   # torch's default seed differs per process: the initial weights follow --seed
    unet = build_unet(run.config)
    run_pixel_experiment(run, unet, build_noise_scheduler(run.config), DDPMPipeline, eval_options(args))


if __name__ == "__main__":
    main(parse_args())
