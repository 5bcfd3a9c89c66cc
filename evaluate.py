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

A pipeline folder this project did not train (a DDPMPipeline, a DDIMPipeline or any folder with a
UNet2DModel in unet/ and a scheduler/) needs the data to judge it against: --config_name (the config's
test set and judges; the model must take its images) or --train_data_dir (an image folder, resized to
the model's size; its sensitivity judge trains on DIR/test/normal/ against DIR/test/sensitive/, and
without them there is no rate). It samples with --seed (default 0) and its own sampler where
models.SAMPLERS has it (DDPMPipeline: ddpm, 1000 steps; DDIMPipeline: ddim, 50), and its result key is
pipeline_{pipeline folder}_{config or folder}_{sampler}_steps{N}_{seed}.
"""
import argparse
from dataclasses import replace
from pathlib import Path

from configs import CONFIGS, DEFAULT_FOLDER_CONFIG, get_config
from models import IMAGE_CHANNELS, SAMPLERS
from models.pretrained import load_pipeline_configs, unet_image_shape
from utils.cli import add_eval_args, add_num_inference_steps, add_output_dir, eval_options, seed_value
from utils.errors import UsageError, exits_on_usage_error
from utils.evaluation import check_eval_args, evaluate_and_save, load_checkpoint_model, pipeline_run, \
    pipeline_sampling, read_checkpoint_run
from utils.experiment import save_sample_grid
from utils.files import PIPELINE_INDEX, RUN_CONFIG_FILE
from utils.folders import CHANNEL_MODES, folder_config, scan_folder
from utils.run import check_output_dir
from utils.sampling import sampling_precision

FOREIGN_SEED = 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", help="a checkpoints/main_* folder written by main.py or main-ft.py, or any "
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


def default_output_dir(checkpoint):
    """The run's root: the folder above checkpoints/{key}, or the current folder."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path(".")


def is_foreign_pipeline(folder):
    """A saved pipeline without this project's run record."""
    folder = Path(folder)
    return (folder / PIPELINE_INDEX).is_file() and not (folder / RUN_CONFIG_FILE).is_file()


def foreign_pipeline_run(args, output_dir):
    """The PipelineRun of a pipeline this project did not train, judged against --config_name's data or the
    --train_data_dir folder; refused (UsageError, naming what fits) where its images are not the data's."""
    if not (args.config_name or args.train_data_dir):
        raise UsageError(f"{args.checkpoint_dir} holds a pipeline without {RUN_CONFIG_FILE} (not trained by this "
                         f"project): pass --config_name NAME or --train_data_dir DIR to say what to judge it against")
    unet_config, scheduler_config, index = load_pipeline_configs(args.checkpoint_dir, "the pipeline")
    channels, size = unet_image_shape(unet_config)
    own_sampler, own_steps = pipeline_sampling(index, scheduler_config)
    sampler, steps = args.sampler or own_sampler, args.num_inference_steps or own_steps
    if sampler is None or steps is None:
        raise UsageError(f"cannot tell how {index.get('_class_name')} with {scheduler_config.get('_class_name')} samples; "
                         f"pass --sampler ({', '.join(SAMPLERS)}) and --num_inference_steps")
    takes = f"{args.checkpoint_dir} takes {channels}-channel {size} px images"
    if args.train_data_dir:
        if channels not in CHANNEL_MODES or size is None:
            raise UsageError(f"{takes}; image folders give square 1- or 3-channel images")
        folder = scan_folder(args.train_data_dir)
        recipe = get_config(args.config_name or DEFAULT_FOLDER_CONFIG)
        name, config = folder.name, folder_config(replace(recipe, image_size=size, channels=channels), folder)
    else:
        name, config = args.config_name, get_config(args.config_name)
        if channels != IMAGE_CHANNELS or size != config.image_size:
            raise UsageError(f"{takes} but {config.dataset} is {IMAGE_CHANNELS}-channel {config.image_size} px; judge it "
                             f"against image folders instead (--train_data_dir DIR: images resized to {size} px)")
    config = replace(config, sampler=sampler, num_inference_steps=steps)
    return pipeline_run(args.checkpoint_dir, name, config, FOREIGN_SEED if args.seed is None else args.seed,
                        output_dir, data_dir=args.data_dir)


def trained_run(args, output_dir):
    """(Run, record) of a checkpoint main.py or main-ft.py wrote; --train_data_dir moves a folder run's data."""
    run, record = read_checkpoint_run(args.checkpoint_dir, output_dir)
    if args.config_name:
        raise UsageError(f"--config_name is for pipelines this project did not train; {args.checkpoint_dir} records its "
                         f"own config ({run.config_name})")
    if args.seed is not None and args.seed != run.seed:
        raise UsageError(f"--seed is for pipelines this project did not train; {args.checkpoint_dir} is evaluated with "
                         f"its run's seed, {run.seed}")
    if args.train_data_dir:
        if not run.config.train_data_dir:
            raise UsageError(f"--train_data_dir: {args.checkpoint_dir} trained on {run.config.dataset}, not on an image "
                             f"folder; leave it out (--data_dir says where that dataset lies)")
        run.config = replace(run.config, train_data_dir=str(scan_folder(args.train_data_dir).root))
    return run, record


@exits_on_usage_error
def main(args):
    output_dir = args.output_dir or default_output_dir(args.checkpoint_dir)
    foreign = is_foreign_pipeline(args.checkpoint_dir)
    run, record = (foreign_pipeline_run(args, output_dir), {}) if foreign else trained_run(args, output_dir)
    check_eval_args(args.classifier_weights, args.inception_weights, args.save_samples)
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
