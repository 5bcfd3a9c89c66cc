"""Evaluate a checkpoint main.py or main-ft.py wrote: non-sensitive rate, FID, one result JSON.

    python evaluate.py checkpoints/main_MNIST_even_PU_0.1_42 --num_samples 10000

Draws --num_samples images with the run's sampler and seed, judges them with the config's
sensitivity classifier (trained and cached under checkpoints/classifiers/ on first use) and
writes outputs/results/{key}.json for report.py. FID needs torch-fidelity's Inception weights
(downloaded, or --inception_weights); without them it is null with the reason, and
fd_classifier, the Frechet distance in the classifier's features, stands in for it.
"""
import argparse
from pathlib import Path

import torch

from utils.errors import exits_on_usage_error
from utils.evaluation import check_eval_args, evaluate_and_save, load_checkpoint_model, read_checkpoint_record
from utils.run import batch_size_or_auto, check_output_dir, positive_int
from utils.sampling import AUTO


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", help="a checkpoints/main_* folder written by main.py or main-ft.py")
    parser.add_argument("--num_samples", type=positive_int, help="generated images (default: the config's num_eval_samples)")
    parser.add_argument("--num_inference_steps", type=positive_int,
                        help="sampling steps (default: the run's; another count is recorded and tags the key)")
    parser.add_argument("--eval_batch_size", type=batch_size_or_auto, default=AUTO,
                        help="images per sampling batch: a number, or auto (the largest that fits on CUDA; "
                             "a fixed size on CPU) (default: auto)")
    parser.add_argument("--data_dir", help="data root (default: the one the run trained from)")
    parser.add_argument("--output_dir",
                        help="root that receives outputs/results/ and checkpoints/classifiers/ "
                             "(default: the folder that holds the checkpoint's checkpoints/)")
    parser.add_argument("--classifier_weights", help="local torchvision ResNet-18 ImageNet weights (CIFAR10, STL10, CelebA)")
    parser.add_argument("--inception_weights", help="local torch-fidelity Inception-v3 weights for FID")
    return parser.parse_args(argv)


def default_output_dir(checkpoint):
    """The run's root: the folder above checkpoints/{key}, or the current folder."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path(".")


@exits_on_usage_error
def main(args):
    record, config_name, config = read_checkpoint_record(args.checkpoint_dir)
    check_eval_args(args.classifier_weights, args.inception_weights)
    check_output_dir(args.output_dir or default_output_dir(args.checkpoint_dir))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet, noise_scheduler = load_checkpoint_model(args.checkpoint_dir, device)
    evaluate_and_save(unet, noise_scheduler, run_record=record, config_name=config_name, config=config,
                      checkpoint=args.checkpoint_dir,
                      output_dir=args.output_dir or default_output_dir(args.checkpoint_dir),
                      num_samples=args.num_samples or config.num_eval_samples,
                      num_inference_steps=args.num_inference_steps, batch_size=args.eval_batch_size,
                      data_dir=args.data_dir or record["args"].get("data_dir", "datasets"), device=device,
                      dtype=torch.float16 if device.type == "cuda" else None,
                      classifier_weights=args.classifier_weights, inception_weights=args.inception_weights)


if __name__ == "__main__":
    main(parse_args())
