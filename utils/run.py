"""What every entry script shares around the loop: arguments, the run key, paths, seeding, saving.

A script builds its parser with `add_run_args`, resolves a `Run` (which validates everything and
writes nothing), then trains with utils.training and saves through the helpers here, each of
which writes aside and renames, so no half-written checkpoint ever looks complete.
"""
import argparse
import glob
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed

from configs import ALGORITHMS, PU_CORRECTIONS, get_config, with_overrides
from utils.checkpointing import LATEST, Checkpointing
from utils.data import DATA_ON_DEVICE
from utils.errors import UsageError
from utils.sampling import AUTO

RUN_CONFIG_FILE = "run_config.json"
MIXED_PRECISION = ("no", "fp16", "bf16")
DEFAULT_BETA = 0.1


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices) from one number."""
    set_seed(seed)


def beta_value(text):
    beta = float(text)
    if not 0.0 <= beta < 1.0:
        raise argparse.ArgumentTypeError(f"beta must be in [0, 1), got {text}; it is the share of "
                                         f"sensitive data in the unlabeled set, e.g. 0.1")
    return beta


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def batch_size_or_auto(text):
    """A positive batch size, or 'auto': the largest that fits, found when sampling starts."""
    return AUTO if text == AUTO else positive_int(text)


# Config fields a registry script may override from the command line, with their types and meaning.
DATA_COUNT_ARGS = {"n_u_normal": (positive_int, "normal images in U"),
                   "n_u_sensitive": (non_negative_int, "sensitive images hidden in U"),
                   "n_s": (positive_int, "labeled sensitive images S"),
                   "n_test": (positive_int, "normal test images, the FID reference")}


def add_run_args(parser, configs=None, default_config=None):
    """The arguments every training script takes; `configs` are the config names it supports."""
    if configs is not None:
        parser.add_argument("--config_name", default=default_config, choices=configs,
                            help="experiment from the config registry (default: %(default)s)")
        counts = parser.add_argument_group("PU data counts (ablations and small trial runs)")
        for name, (kind, what) in DATA_COUNT_ARGS.items():
            counts.add_argument(f"--{name}", type=kind, help=f"{what} (default: the config's)")
    parser.add_argument("--algorithm", default="PU", choices=ALGORITHMS, help="training objective (default: PU)")
    parser.add_argument("--beta", type=beta_value, default=None,
                        help=f"class prior: share of sensitive data in U, used by PU only (default: {DEFAULT_BETA})")
    parser.add_argument("--seed", type=int, default=42, help="seeds training, the PU split and sampling")
    parser.add_argument("--pu_correction", default="abs", choices=PU_CORRECTIONS,
                        help="non-negativity correction of R_N: abs (R_S + |R_N|) or nn (default: abs)")
    parser.add_argument("--num_epochs", type=positive_int, help="default: the config's")
    parser.add_argument("--batch_size", type=positive_int, help="default: the config's")
    parser.add_argument("--learning_rate", type=positive_float, help="default: the config's")
    parser.add_argument("--num_inference_steps", type=positive_int, help="sampling steps (default: the config's)")
    parser.add_argument("--data_dir", default="datasets",
                        help="data folder: torchvision datasets download here; main-sd.py reads "
                             "0_unlabeled/ and 1_positive/ from it (default: %(default)s)")
    parser.add_argument("--output_dir", default=".",
                        help="root that receives checkpoints/ and outputs/ (default: the current folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run with the same key")
    state = parser.add_argument_group("training states (resume after a crash or a preemption)")
    state.add_argument("--checkpointing_steps", type=positive_int,
                       help="save the full training state every N optimizer steps to checkpoints/{key}.state/")
    state.add_argument("--checkpoints_total_limit", type=positive_int,
                       help="keep only the newest K training states (default: all)")
    state.add_argument("--resume_from_checkpoint", metavar="latest|PATH",
                       help=f"continue from a saved training state: '{LATEST}' (this run's newest; a fresh "
                            f"start if none) or a checkpoint-STEP folder")
    gpu = parser.add_argument_group("precision and speed (results keep the same math)")
    gpu.add_argument("--mixed_precision", choices=MIXED_PRECISION,
                     help="autocast precision (default: fp16 on CUDA, no on CPU)")
    gpu.add_argument("--allow_tf32", action=argparse.BooleanOptionalAction, default=True,
                     help="TF32 matmuls on Ampere+ GPUs (default: on)")
    gpu.add_argument("--channels_last", action="store_true", help="channels_last memory format for the UNet")
    gpu.add_argument("--compile", action="store_true",
                     help="torch.compile the UNet for training; the first steps pay for the compilation")
    gpu.add_argument("--data_on_device", choices=DATA_ON_DEVICE, default="auto",
                     help="keep the training images on the GPU: auto (when they take at most a quarter of "
                          "its free memory), yes or no (default: auto)")
    return parser


def add_eval_args(parser):
    """The evaluation-after-training arguments of the pixel-space scripts (main.py, main-ft.py)."""
    evaluation = parser.add_argument_group("evaluation after training (as evaluate.py)")
    evaluation.add_argument("--num_eval_samples", type=non_negative_int,
                            help="generated images for the non-sensitive rate and FID; 0 skips the "
                                 "evaluation (default: the config's num_eval_samples)")
    evaluation.add_argument("--eval_batch_size", type=batch_size_or_auto, default=AUTO,
                            help="images per sampling batch: a number, or auto (the largest that fits on "
                                 "CUDA, found by trial; a fixed size on CPU) (default: auto)")
    evaluation.add_argument("--classifier_weights",
                            help="local torchvision ResNet-18 ImageNet weights for the CIFAR10/STL10/CelebA classifier")
    evaluation.add_argument("--inception_weights", help="local torch-fidelity Inception-v3 weights for FID")
    return parser


def check_output_dir(root):
    """UsageError unless `root` is, or can be created as, a writable folder (nothing is created here)."""
    probe = Path(root)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{probe} is a file, not a folder; choose another --output_dir")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write to {probe}; choose a writable --output_dir")


def format_beta(beta):
    return repr(float(beta))


@dataclass
class Run:
    """One training run's resolved settings and output paths; creating it writes nothing."""

    key: str
    script: str
    config: object
    args: argparse.Namespace
    beta: float
    root: Path
    started: float = field(default_factory=time.time)
    checkpointing: Checkpointing = None

    @property
    def checkpoint_dir(self):
        return self.root / "checkpoints" / self.key

    @property
    def image_dir(self):
        return self.root / "outputs" / "images"

    @property
    def log_dir(self):
        return self.root / "outputs" / "logs" / self.key

    @classmethod
    def from_args(cls, args, prefix, config=None, key_parts=None):
        """Resolve the config with the command-line overrides and check the run can be written.

        `prefix` is main | main_ft | main_sd; `config` skips the registry lookup (Stable Diffusion).
        """
        config = config or get_config(args.config_name)
        config = with_overrides(config, num_epochs=args.num_epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, num_inference_steps=args.num_inference_steps,
                                **{k: getattr(args, k, None) for k in DATA_COUNT_ARGS})
        if args.algorithm == "PU":
            beta = DEFAULT_BETA if args.beta is None else args.beta
        else:
            beta = 0.0
            if args.beta is not None:
                print(f"note: --beta {args.beta} is used by PU only; {args.algorithm} records beta as 0.0")
        parts = key_parts if key_parts is not None else [args.config_name]
        key = "_".join([prefix, *parts, args.algorithm, format_beta(beta), str(args.seed)])
        run = cls(key=key, script=prefix, config=config, args=args, beta=beta, root=Path(args.output_dir))
        run.check_writable()
        run.checkpointing = Checkpointing.from_args(args, run.checkpoint_dir, key, config)
        return run

    def finished_outputs(self):
        """What a finished run of this key left: its pipeline folder and sample grids."""
        key = glob.escape(self.key)
        images = sorted(self.image_dir.glob(f"{key}.png")) + sorted(self.image_dir.glob(f"{key}_*.png"))
        return [p for p in (self.checkpoint_dir, *images) if p.exists()]

    def check_writable(self):
        finished = self.finished_outputs()
        if finished and not self.args.overwrite:
            raise UsageError(f"{finished[0]} holds a finished run; pass --overwrite to replace it "
                             f"or choose another --seed or --output_dir")
        check_output_dir(self.root)

    def record(self, **extra):
        """The resolved run configuration, saved as JSON beside the checkpoint."""
        import accelerate
        import diffusers
        return dict(key=self.key, script=self.script,
                    algorithm=self.args.algorithm, beta=self.beta, seed=self.args.seed,
                    pu_correction=self.args.pu_correction, config=self.config.to_dict(),
                    args={k: v for k, v in vars(self.args).items()},
                    versions=dict(python=platform.python_version(), torch=torch.__version__,
                                  diffusers=diffusers.__version__, accelerate=accelerate.__version__),
                    train_seconds=round(time.time() - self.started, 1), **extra)


def replace_dir(tmp, final):
    """Move the finished folder `tmp` to `final`, replacing an older one only after `tmp` is complete."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_pipeline(run, pipeline, record):
    """Save `pipeline` (save_pretrained) and the run record to checkpoints/{key}/, atomically."""
    final = run.checkpoint_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp)
    (tmp / RUN_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
    replace_dir(tmp, final)
    return final


def write_file_atomically(path, write):
    """Call write(tmp_path), then rename tmp_path to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return path
