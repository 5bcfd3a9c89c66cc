"""Evaluate a checkpoint main.py or main-ft.py wrote, or any pixel-space diffusers pipeline folder:
non-sensitive rate, FID, one result JSON.

    python evaluate.py checkpoints/main_MNIST_even_PU_0.1_42 --num_eval_samples 10000
    python evaluate.py PIPELINE_DIR --train_data_dir DIR --save_samples samples/

Draws --num_eval_samples images with the run's seed and sampler (or --sampler, --num_inference_steps;
either tags the result key), judges them with the config's sensitivity classifier (trained and cached
under checkpoints/classifiers/ on first use) and writes outputs/results/{key}.json for report.py
(with another sampler or step count, also that setting's 8 x 8 grid as outputs/images/{key}.png).
FID needs torch-fidelity's Inception weights (downloaded, or --inception_weights); without them it
is null with the reason, and fd_classifier, the Frechet distance in the classifier's features,
stands in for it. --save_samples DIR writes every evaluated sample as DIR/000000.png, ... for a judge
of your own.

A training state of a finished run (checkpoints/{key}.state/checkpoint-STEP, saved by
--checkpointing_steps) is judged as its run, with the state's weights: a point of the learning curve,
keyed as the run with the tag ckpt{STEP} before the seed, and recorded with the training loop's time
up to it.

A pipeline folder this project did not train (a DDPMPipeline, a DDIMPipeline or any folder with a
UNet2DModel in unet/ and a scheduler/) needs the data to judge it against: --config_name (the config's
test set and judges; the model must take its images) or --train_data_dir (an image folder, resized to
the model's size; its sensitivity judge trains on DIR/test/normal/ against DIR/test/sensitive/, and
without them there is no rate). It samples with --seed (default 0) and its own sampler where
models.SAMPLERS has it (DDPMPipeline: ddpm, 1000 steps; DDIMPipeline: ddim, 50), and its result key is
pipeline_{pipeline folder}_{config or folder}_{sampler}_steps{N}_{seed}.
"""
import argparse

from configs import CONFIGS, DEFAULT_FOLDER_CONFIG
from models import SAMPLERS
from utils.cli import add_eval_args, add_num_inference_steps, add_output_dir, eval_options, seed_value
from utils.errors import exits_on_usage_error
from utils.evaluation import check_eval_args, evaluate_and_save
from utils.experiment import save_sample_grid
from utils.pipelines import FOREIGN_SEED, default_output_dir, foreign_pipeline_run, is_foreign_pipeline, \
    is_training_state, load_judged_model, trained_run, training_state_run
from utils.run import check_output_dir
from utils.sampling import sampling_precision


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", help="a checkpoints/main_* folder written by main.py or main-ft.py, one of "
                                               "its training states (checkpoints/main_*.state/checkpoint-STEP), or any "
                                               "pixel-space diffusers pipeline folder")
    add_eval_args(parser, allow_zero=False)
    add_num_inference_steps(parser, help="sampling steps (default: the run's; another count is recorded and tags the key)")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS),
                        help="sampler (default: the run's; another is recorded and tags the key)")
    parser.add_argument("--data_dir", help="data root (default: the one the run trained from)")
    parser.add_argument("--train_data_dir", metavar="DIR",
                        help="an image folder to judge against: the run's own when it trained on one that has moved, "
                             "or the data of a pipeline this project did not train")
    add_output_dir(parser, default=None, help="root that receives outputs/results/ and checkpoints/classifiers/ "
                                              "(default: the folder that holds the checkpoint's checkpoints/)")
    pipeline = parser.add_argument_group("a pipeline this project did not train")
    pipeline.add_argument("--config_name", choices=tuple(CONFIGS),
                          help=f"the config whose data and judges to use; with --train_data_dir, the recipe of the "
                               f"folder's judge and the evaluation count (default then: {DEFAULT_FOLDER_CONFIG})")
    pipeline.add_argument("--seed", type=seed_value, help=f"sampling seed (default: {FOREIGN_SEED})")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    output_dir = args.output_dir or default_output_dir(args.checkpoint_dir)
    data = dict(config_name=args.config_name, train_data_dir=args.train_data_dir, seed=args.seed)
    if is_foreign_pipeline(args.checkpoint_dir):
        run, record = foreign_pipeline_run(args.checkpoint_dir, output_dir, sampler=args.sampler, data_dir=args.data_dir,
                                           num_inference_steps=args.num_inference_steps, **data), {}
    elif is_training_state(args.checkpoint_dir):
        run, record = training_state_run(args.checkpoint_dir, output_dir, **data)
    else:
        run, record = trained_run(args.checkpoint_dir, output_dir, **data)
    check_eval_args(args.classifier_weights, args.inception_weights, args.save_samples)
    check_output_dir(output_dir)
    # Sampled in the run's precision, as its own evaluation after training was (fp32 for --mixed_precision no).
    device, dtype = sampling_precision(mixed_precision=record.get("mixed_precision"))
    unet, noise_scheduler = load_judged_model(args.checkpoint_dir, device)
    _, result = evaluate_and_save(run, unet, noise_scheduler, eval_options(args, data_dir=args.data_dir), dtype=dtype,
                                  checkpoint=args.checkpoint_dir)
    if result["key"] != run.key:     # another sampler or step count: its own grid beside its own result
        save_sample_grid(run, unet, noise_scheduler, dtype, result["sampler"], result["num_inference_steps"])


if __name__ == "__main__":
    main(parse_args())
