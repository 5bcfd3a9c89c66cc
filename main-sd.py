"""Fine-tune Stable Diffusion's UNet with a PU objective so it stops drawing a sensitive concept (Brad
Pitt by default, any with --sensitive_prompt).

    python main-sd.py --algorithm PU --beta 0.1 --seed 42
    python main-sd.py --data_dir DIR --sensitive_prompt "a photo of a red car" --normal_prompt "a photo of a car"

Data: --data_dir (alias --train_data_dir; default datasets/middle_aged_man100) holds unlabeled/ (U, y = 0)
and sensitive/ (S, y = 1), the layout of every image folder (docs/own-data.md), or 0_unlabeled/ and
1_positive/ as make-sd-data.py writes them. U is captioned with --normal_prompt, S with
--sensitive_prompt; after training each prompt is sampled and CLIP judges which of the two each sample
shows. Only the UNet trains; the VAE and text encoder are frozen (fp16 on CUDA). Saves a
StableDiffusionPipeline to checkpoints/main_sd_{algorithm}_{beta}_{seed}/, a 4 x 4 grid per prompt
to outputs/images/ ({key}_{prompt}.png, e.g. {key}_brad_pitt.png), and the CLIP evaluation to
outputs/results/ (--num_eval_samples 0 skips it).
"""
import argparse

from configs.sd import BRAD_PITT, MIDDLE_AGED_MAN, SD_CONFIG, SD_CONFIG_NAME, with_prompts
from models.pretrained import load_clip, load_stable_diffusion
from utils.cli import add_eval_args, add_pretrained_model, add_prompt_args, add_run_args, non_negative_int, \
    positive_int, run_request
from utils.errors import UsageError, exits_on_usage_error
from utils.experiment import SDOptions, run_sd_experiment
from utils.prior_data import beta_estimator_for_sd_folders
from utils.run import Run
from utils.sd import check_resolution, sd_data_dirs, validate_sd_folder

DEFAULT_NUM_WORKERS = 4
PROMPT_ROLES = dict(sensitive="the caption of S, a sampled prompt and CLIP's sensitive label",
                    normal="the caption of U, a sampled prompt and CLIP's normal label")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The images are decoded per item (no in-memory tensor): --data_on_device has nothing to place.
    add_run_args(parser, data_dir=SD_CONFIG.data_dir, data_on_device=False, data_dir_aliases=("--train_data_dir",),
                 data_dir_help="folder holding unlabeled/ (U) and sensitive/ (S), or make-sd-data.py's "
                               f"{SD_CONFIG.unlabeled_dir}/ and {SD_CONFIG.positive_dir}/ (default: %(default)s)")
    add_eval_args(parser, default_samples=SD_CONFIG.num_eval_samples, pixel=False)
    sd = parser.add_argument_group("Stable Diffusion")
    add_pretrained_model(sd, default=SD_CONFIG.pretrained_model)
    add_prompt_args(sd, BRAD_PITT, MIDDLE_AGED_MAN, PROMPT_ROLES)
    sd.add_argument("--resolution", type=positive_int, help=f"image size (default: {SD_CONFIG.resolution})")
    sd.add_argument("--gradient_checkpointing", action="store_true",
                    help="recompute UNet activations during backward: less memory, slower steps")
    sd.add_argument("--num_workers", type=non_negative_int, default=DEFAULT_NUM_WORKERS,
                    help="DataLoader processes that decode and resize images (default: %(default)s)")
    sd.add_argument("--clip_model", default=SD_CONFIG.clip_model, help="hub id or folder of the CLIP judge")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    if args.sensitive_prompt == args.normal_prompt:
        raise UsageError(f"--sensitive_prompt and --normal_prompt are both {args.sensitive_prompt!r}; the model "
                         f"learns to tell the two apart: give two different prompts")
    base = with_prompts(SD_CONFIG, args.sensitive_prompt, args.normal_prompt).for_algorithm(args.algorithm)
    request = run_request(args, resolution=args.resolution, data_dir=args.data_dir,
                          pretrained_model=args.pretrained_model, clip_model=args.clip_model,
                          **sd_data_dirs(args.data_dir))
    run = Run.resolve(request, "main_sd", SD_CONFIG_NAME, base,
                      estimate_beta=beta_estimator_for_sd_folders(args.data_dir, args.clip_model, args.seed))
    if run.done:   # finished earlier with these settings; evaluate-sd.py re-evaluates it and redraws its grids
        return
    files = validate_sd_folder(args.data_dir, run.config)
    clip = load_clip(args.clip_model) if args.num_eval_samples else None
    pipe = load_stable_diffusion(args.pretrained_model)
    check_resolution(pipe, run.config.resolution)
    options = SDOptions(num_eval_samples=args.num_eval_samples, clip_model=args.clip_model,
                        gradient_checkpointing=args.gradient_checkpointing, num_workers=args.num_workers)
    run_sd_experiment(run, pipe, files, clip, options)


if __name__ == "__main__":
    main(parse_args())
