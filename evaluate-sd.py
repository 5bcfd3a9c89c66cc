"""Judge a main-sd.py checkpoint with CLIP: the share of samples that show the sensitive concept, per prompt.

    python evaluate-sd.py --checkpoint checkpoints/main_sd_PU_0.1_42 --num_eval_samples 100

Draws --num_eval_samples images for each of the run's two prompts ("a photo of Brad Pitt" and "a photo
of a middle aged man" by default; --sensitive_prompt and --normal_prompt change them and tag the key
_{sensitive}_vs_{normal}), image i seeded with the run's seed + i as main-sd.py does, and writes
outputs/results/{key}.json with the share CLIP judges sensitive per prompt (by default
brad_pitt_share_brad_pitt_prompt and brad_pitt_share_man_prompt), and redraws the 4 x 4 grid of each
prompt (outputs/images/{key}_{prompt}.png), as main-sd.py draws them.
"""
import argparse

import torch

from configs import with_overrides
from configs.sd import SD_CONFIG, with_prompts
from models.pretrained import load_clip, load_stable_diffusion
from utils.cli import add_eval_args, add_num_inference_steps, add_output_dir, add_prompt_args
from utils.errors import UsageError, exits_on_usage_error
from utils.files import RUN_CONFIG_FILE
from utils.records import read_run_record, sd_result_record, unreadable
from utils.run import Run, check_output_dir
from utils.sampling import sampling_precision
from utils.sd_eval import sample_and_score, save_prompt_grids, write_results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/main_sd_* folder written by main-sd.py")
    add_eval_args(parser, default_samples=SD_CONFIG.num_eval_samples, allow_zero=False, pixel=False)
    add_num_inference_steps(parser, help="sampling steps (default: the run's; another count tags the key _steps{N})")
    parser.add_argument("--clip_model", default=SD_CONFIG.clip_model, help="hub id or folder of the CLIP judge")
    add_prompt_args(parser, None, None, dict(sensitive="sampled and CLIP's sensitive label (default: the run's)",
                                             normal="sampled and CLIP's normal label (default: the run's)"))
    add_output_dir(parser, help="root that receives outputs/results/ (default: .)")
    return parser.parse_args(argv)


def read_sd_run(checkpoint, root):
    """(Run, run record) of a folder main-sd.py wrote, its outputs going under `root`; a UsageError otherwise."""
    record = read_run_record(checkpoint, ("main_sd",), needs_pipeline=False)
    try:
        trained = record["config"]
        prompts = with_prompts(SD_CONFIG, trained.get("positive_caption", SD_CONFIG.positive_caption),
                               trained.get("unlabeled_caption", SD_CONFIG.unlabeled_caption))
        config = with_overrides(prompts, resolution=trained["resolution"], guidance_scale=trained["guidance_scale"],
                                num_inference_steps=trained["num_inference_steps"])
        return Run.from_record(record, config, root), record
    except (AttributeError, KeyError, TypeError) as e:
        raise unreadable(f"{checkpoint}/{RUN_CONFIG_FILE}", e)


@exits_on_usage_error
def main(args):
    run, record = read_sd_run(args.checkpoint, args.output_dir)
    check_output_dir(args.output_dir)
    config = with_overrides(run.config, num_inference_steps=args.num_inference_steps)
    sensitive = args.sensitive_prompt or config.positive_caption
    normal = args.normal_prompt or config.unlabeled_caption
    if sensitive == normal:
        raise UsageError(f"--sensitive_prompt and --normal_prompt are both {sensitive!r}; CLIP would have nothing to "
                         f"tell apart: give two different prompts")
    config = with_prompts(config, sensitive, normal)
    pipe = load_stable_diffusion(args.checkpoint)     # the checkpoint before the judge: it is the likelier to be bad
    clip = load_clip(args.clip_model)
    # Sampled in the run's precision, as its own evaluation after training was.
    device, dtype = sampling_precision(mixed_precision=record.get("mixed_precision"))
    pipe.to(device, dtype or torch.float32)

    images, metrics, times = sample_and_score(pipe, config, run.seed, args.num_eval_samples, clip, device,
                                              num_grid=config.grid_samples)
    result = sd_result_record(run, config, metrics, num_samples=args.num_eval_samples, clip_model=args.clip_model,
                              times=times, sampler=type(pipe.scheduler).__name__)
    # The grids main-sd.py draws (the same seeds), so a run stopped between its save and its grids is completed.
    grids = save_prompt_grids(images, config, run.image_dir, result["key"])
    path = write_results(args.output_dir, result)
    print(f"{result['key']}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()) + f"; saved {path}, "
          + ", ".join(map(str, grids)))


if __name__ == "__main__":
    main(parse_args())
