"""Evaluate a checkpoint main.py or main-ft.py wrote: non-sensitive rate, FID, one result JSON.

    python evaluate.py checkpoints/main_MNIST_even_PU_0.1_42 --num_eval_samples 10000

Draws --num_eval_samples images with the run's seed and sampler (or --sampler, --num_inference_steps;
either tags the result key), judges them with the config's sensitivity classifier (trained and cached
under checkpoints/classifiers/ on first use) and writes outputs/results/{key}.json for report.py
(with another sampler or step count, also that setting's 8 x 8 grid as outputs/images/{key}.png).
FID needs torch-fidelity's Inception weights (downloaded, or --inception_weights); without them it
is null with the reason, and fd_classifier, the Frechet distance in the classifier's features,
stands in for it.
"""
import argparse
from pathlib import Path

from models import SAMPLERS
from utils.cli import add_eval_args, add_num_inference_steps, add_output_dir, eval_options
from utils.errors import exits_on_usage_error
from utils.evaluation import check_eval_args, evaluate_and_save, load_checkpoint_model, read_checkpoint_run
from utils.experiment import save_sample_grid
from utils.run import check_output_dir
from utils.sampling import sampling_precision


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", help="a checkpoints/main_* folder written by main.py or main-ft.py")
    add_eval_args(parser, allow_zero=False)
    add_num_inference_steps(parser, help="sampling steps (default: the run's; another count is recorded and tags the key)")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS),
                        help="sampler (default: the run's; another is recorded and tags the key)")
    parser.add_argument("--data_dir", help="data root (default: the one the run trained from)")
    add_output_dir(parser, default=None, help="root that receives outputs/results/ and checkpoints/classifiers/ "
                                              "(default: the folder that holds the checkpoint's checkpoints/)")
    return parser.parse_args(argv)


def default_output_dir(checkpoint):
    """The run's root: the folder above checkpoints/{key}, or the current folder."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path(".")


@exits_on_usage_error
def main(args):
    output_dir = args.output_dir or default_output_dir(args.checkpoint_dir)
    run, record = read_checkpoint_run(args.checkpoint_dir, output_dir)
    check_eval_args(args.classifier_weights, args.inception_weights)
    check_output_dir(output_dir)
    # Sampled in the run's precision, as its own evaluation after training was (fp32 for --mixed_precision no).
    device, dtype = sampling_precision(mixed_precision=record.get("mixed_precision"))
    unet, noise_scheduler = load_checkpoint_model(args.checkpoint_dir, device)
    _, result = evaluate_and_save(run, unet, noise_scheduler, eval_options(args, data_dir=args.data_dir), dtype=dtype,
                                  checkpoint=args.checkpoint_dir)
    if result["key"] != run.key:     # another sampler or step count: its own grid beside its own result
        save_sample_grid(run, unet, noise_scheduler, dtype, result["sampler"], result["num_inference_steps"])


if __name__ == "__main__":
    main(parse_args())
