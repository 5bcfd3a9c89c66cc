"""Judge a main-sd.py checkpoint with CLIP: the share of samples that look like Brad Pitt, per prompt.

    python evaluate-sd.py --checkpoint checkpoints/main_sd_PU_0.1_42 --num_eval_samples 100

Draws --num_eval_samples images for each of "a photo of Brad Pitt" and "a photo of a middle aged man"
(image i seeded with the run's seed + i, as main-sd.py does) and writes
outputs/results/{key}.json with brad_pitt_share_brad_pitt_prompt and brad_pitt_share_man_prompt.
"""
import argparse
import json
from pathlib import Path

import torch

from configs import with_overrides
from configs.sd import SD_CONFIG
from models.pretrained import load_clip, load_stable_diffusion
from utils.cli import add_eval_args, add_num_inference_steps, add_output_dir
from utils.errors import UsageError, exits_on_usage_error
from utils.files import RUN_CONFIG_FILE
from utils.run import Run
from utils.sampling import sampling_precision
from utils.sd_eval import results_record, sample_and_score, write_results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/main_sd_* folder written by main-sd.py")
    add_eval_args(parser, default_samples=SD_CONFIG.num_eval_samples, allow_zero=False, pixel=False)
    add_num_inference_steps(parser, help="sampling steps (default: the run's; another count tags the key _steps{N})")
    parser.add_argument("--clip_model", default=SD_CONFIG.clip_model, help="hub id or folder of the CLIP judge")
    add_output_dir(parser, help="root that receives outputs/results/ (default: .)")
    return parser.parse_args(argv)


def read_run_config(checkpoint):
    path = Path(checkpoint) / RUN_CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing; --checkpoint must be a folder written by main-sd.py")
    run_config = json.loads(path.read_text())
    if run_config.get("script") != "main_sd":
        raise UsageError(f"{checkpoint} was written by {run_config.get('script')}, not main-sd.py; "
                         f"evaluate it with evaluate.py")
    return run_config


@exits_on_usage_error
def main(args):
    record = read_run_config(args.checkpoint)
    trained = record["config"]
    run = Run.from_record(record, with_overrides(SD_CONFIG, resolution=trained["resolution"],
                                                 guidance_scale=trained["guidance_scale"],
                                                 num_inference_steps=trained["num_inference_steps"]), args.output_dir)
    config = with_overrides(run.config, num_inference_steps=args.num_inference_steps)
    clip = load_clip(args.clip_model)
    pipe = load_stable_diffusion(args.checkpoint)
    device, dtype = sampling_precision()
    pipe.to(device, dtype or torch.float32)

    _, metrics, times = sample_and_score(pipe, config, run.seed, args.num_eval_samples, clip, device)
    result = results_record(run, config, metrics, args.num_eval_samples, args.clip_model, times,
                            type(pipe.scheduler).__name__)
    path = write_results(args.output_dir, result)
    print(f"{result['key']}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()) + f"; saved {path}")


if __name__ == "__main__":
    main(parse_args())
