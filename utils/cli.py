"""The command line the scripts share: argument types and groups, each option declared once, and
the plain values the library takes from a parsed command line.

Training scripts take `add_run_args` (+ `add_eval_args`); the evaluators and make-sd-data.py take
the single options they share with them (`add_pretrained_model`, `add_num_inference_steps`,
`add_output_dir`, `add_eval_args`), so an option has one name, one type and one help text
everywhere. Bad values fail in argparse (exit 2) before anything runs. `run_request` and
`eval_options` turn the parsed arguments into utils.run.RunRequest and
utils.evaluation.EvalOptions: argparse goes no further than this module and the entry scripts.
"""
import argparse

from configs import AUTO_BETA, DEFAULT_BETA, DEFAULT_SEED, is_trainable_beta
from losses import ALGORITHMS, DEFAULT_CORRECTION, DEFAULT_NEGGRAD_WEIGHT, PU_CORRECTIONS
from utils.checkpointing import LATEST
from utils.data import DATA_ON_DEVICE
from utils.evaluation import EvalOptions
from utils.run import DEFAULT_DATA_DIR, RunRequest
from utils.sampling import AUTO

MIXED_PRECISION = ("no", "fp16", "bf16")
SEED_LIMIT = 2 ** 32            # numpy and torch seeds must lie in [0, 2**32)
DATA_DIR_HELP = ("data root: torchvision datasets are read from here, and downloaded here on first use "
                 "(default: %(default)s)")


def beta_value(text):
    if text == AUTO_BETA:
        return AUTO_BETA
    beta = float(text)
    if not is_trainable_beta(beta):
        raise argparse.ArgumentTypeError(f"beta must be in [0, 1), got {text}; it is the share of "
                                         f"sensitive data in the unlabeled set, e.g. 0.1, or 'auto' to estimate it")
    return beta


def seed_value(text):
    seed = int(text)
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**32), got {text}; numpy and torch accept "
                                         f"no other, e.g. --seed 0")
    return seed


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
# Config fields every training script may override, and their types.
TRAINING_OVERRIDES = {"num_epochs": positive_int, "batch_size": positive_int, "learning_rate": positive_float}


CHANNEL_CHOICES = (1, 3)
FOLDER_HELP = ("image folder to train on instead of the config's dataset: DIR/unlabeled/ (U) and DIR/sensitive/ (S), "
               "optionally DIR/test/normal/ (the FID reference) and DIR/test/sensitive/ (with test/normal, the data "
               "of the sensitivity judge); any format Pillow reads, nested folders allowed. The config is then the "
               "recipe (UNet, optimisation, sampler, evaluation count, judge); the key names the folder")


def add_folder_args(parser, channels_help="image channels: 1 (grayscale) or 3 (RGB) (default: 3)"):
    """--train_data_dir, --resolution and --channels of the pixel-space training scripts."""
    folder = parser.add_argument_group("image folders (docs/own-data.md)")
    folder.add_argument("--train_data_dir", metavar="DIR", help=FOLDER_HELP)
    folder.add_argument("--resolution", type=positive_int,
                        help="with --train_data_dir: the training size; each image's short side is resized to it "
                             "(bilinear, antialiased) and the centre square cropped (default: the model's)")
    folder.add_argument("--channels", type=int, choices=CHANNEL_CHOICES, help=f"with --train_data_dir: {channels_help}")
    return parser


def settle_config_name(parser, args, default, folder_default):
    """args.config_name resolved in place (`folder_default` with --train_data_dir, else `default`), after
    refusing (parser.error, exit 2) what a folder run cannot take: count overrides (the counts are the
    folder's), and --resolution or --channels without a folder (a config's images have their own)."""
    folder = getattr(args, "train_data_dir", None)
    counts = [f"--{name}" for name in DATA_COUNT_ARGS if getattr(args, name, None) is not None]
    if folder and counts:
        parser.error(f"{', '.join(counts)}: with --train_data_dir the counts are the folder's; move images instead")
    shaped = [f"--{name}" for name in ("resolution", "channels") if getattr(args, name, None) is not None]
    if not folder and shaped:
        parser.error(f"{', '.join(shaped)}: only with --train_data_dir; a config's images have the config's size")
    if args.config_name is None:
        args.config_name = folder_default if folder else default
    return args


def add_prompt_args(parser, sensitive, normal, what):
    """--sensitive_prompt and --normal_prompt of the Stable Diffusion scripts; `what` says their role."""
    parser.add_argument("--sensitive_prompt", default=sensitive,
                        help=f"the sensitive concept's prompt: {what['sensitive']} (default: %(default)s)")
    parser.add_argument("--normal_prompt", default=normal,
                        help=f"the normal concept's prompt: {what['normal']} (default: %(default)s)")
    return parser


def add_num_inference_steps(parser, help="sampling steps (default: the config's)", **kwargs):
    parser.add_argument("--num_inference_steps", type=positive_int, help=help, **kwargs)


def add_output_dir(parser, default=".", help="root that receives checkpoints/ and outputs/ (default: the current folder)"):
    parser.add_argument("--output_dir", default=default, help=help)


def add_pretrained_model(parser, default=None, help="hub id or saved pipeline folder (default: %(default)s)"):
    parser.add_argument("--pretrained_model", default=default, help=help)


def add_run_args(parser, configs=None, default_config=None, data_dir=DEFAULT_DATA_DIR, data_dir_help=DATA_DIR_HELP,
                 data_on_device=True, config_help="experiment from the config registry (default: %(default)s)",
                 data_dir_aliases=()):
    """The arguments every training script takes; `configs` are the config names it supports.
    `data_on_device` offers --data_on_device (only scripts that hold their images as one tensor);
    `data_dir_aliases` are further names of --data_dir."""
    if configs is not None:
        parser.add_argument("--config_name", default=default_config, choices=configs, help=config_help)
        counts = parser.add_argument_group("PU data counts (ablations and small trial runs)")
        for name, (kind, what) in DATA_COUNT_ARGS.items():
            counts.add_argument(f"--{name}", type=kind, help=f"{what} (default: the config's)")
    parser.add_argument("--algorithm", default="PU", choices=tuple(ALGORITHMS),
                        help="training algorithm: the paper's Unsupervised, Supervised and PU, or the baselines "
                             "Filter, Clean and NegGrad (docs/baselines.md) (default: PU)")
    users = " and ".join(name for name, algorithm in ALGORITHMS.items() if algorithm.uses_beta)
    parser.add_argument("--beta", type=beta_value, default=None,
                        help=f"class prior: share of sensitive data in U, used by {users} only; 'auto' estimates it "
                             f"from U and S before training (best-bin estimator, utils/prior.py) "
                             f"(default: {DEFAULT_BETA})")
    parser.add_argument("--neggrad_weight", type=positive_float, default=None,
                        help=f"NegGrad only: the weight of the ascent on S's capped error (default: "
                             f"{DEFAULT_NEGGRAD_WEIGHT}, provisional: docs/baselines.md)")
    parser.add_argument("--seed", type=seed_value, default=DEFAULT_SEED,
                        help="seeds training, the PU split and sampling, in [0, 2**32) (default: %(default)s)")
    parser.add_argument("--pu_correction", default=DEFAULT_CORRECTION, choices=PU_CORRECTIONS,
                        help="non-negativity correction of R_N: abs (R_S + |R_N|) or nn (default: %(default)s)")
    for name, kind in TRAINING_OVERRIDES.items():
        parser.add_argument(f"--{name}", type=kind, help="default: the config's")
    add_num_inference_steps(parser)
    parser.add_argument("--data_dir", *data_dir_aliases, default=data_dir, help=data_dir_help)
    add_output_dir(parser)
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
    if data_on_device:
        gpu.add_argument("--data_on_device", choices=DATA_ON_DEVICE, default="auto",
                         help="keep the training images on the GPU: auto (when they take at most a quarter of "
                              "its free memory), yes or no (default: auto)")
    return parser


def add_eval_args(parser, default_samples=None, allow_zero=True, pixel=True):
    """How many images an evaluation draws; `--num_samples` is an alias of `--num_eval_samples`.

    `pixel` adds the sampling batch and the local-weights options of the pixel-space evaluation;
    without it the group is Stable Diffusion's CLIP evaluation.
    """
    title = "evaluation (non-sensitive rate, FID and the class classifier's measures)" if pixel else \
        "evaluation (the share of each prompt's samples that CLIP judges sensitive)"
    evaluation = parser.add_argument_group(title)
    default = "the config's num_eval_samples" if default_samples is None else "%(default)s"
    what = "generated images to evaluate" if pixel else "images per prompt judged by CLIP"
    evaluation.add_argument("--num_eval_samples", "--num_samples", dest="num_eval_samples",
                            type=non_negative_int if allow_zero else positive_int, default=default_samples,
                            help=f"{what}{'; 0 skips the evaluation' if allow_zero else ''} (default: {default})")
    if pixel:
        evaluation.add_argument("--eval_batch_size", type=batch_size_or_auto, default=AUTO,
                                help="images per sampling batch: a number, or auto (the largest that fits on "
                                     "CUDA, found by trial; a fixed size on CPU) (default: auto)")
        evaluation.add_argument("--classifier_weights",
                                help="local torchvision ResNet-18 ImageNet weights for the CIFAR10/STL10/CelebA classifier")
        evaluation.add_argument("--inception_weights", help="local torch-fidelity Inception-v3 weights for FID")
        evaluation.add_argument("--save_samples", metavar="DIR",
                                help="write every evaluated sample to DIR as 000000.png, 000001.png, ... (DIR must "
                                     "be new, empty, or an earlier --save_samples folder, which is replaced)")
    return parser


def run_request(args, **script_overrides):
    """The RunRequest of a training script's parsed arguments; `script_overrides` are config fields
    that only this script's options set (main-sd.py's --resolution, say). None leaves a field as is."""
    named = {k: getattr(args, k, None) for k in (*DATA_COUNT_ARGS, *TRAINING_OVERRIDES, "num_inference_steps")}
    overrides = {k: v for k, v in {**named, **script_overrides}.items() if v is not None}
    return RunRequest(algorithm=args.algorithm, beta=args.beta, seed=args.seed, pu_correction=args.pu_correction,
                      neggrad_weight=args.neggrad_weight, overrides=overrides, data_dir=args.data_dir,
                      output_dir=args.output_dir, overwrite=args.overwrite,
                      resume_from_checkpoint=args.resume_from_checkpoint, checkpointing_steps=args.checkpointing_steps,
                      checkpoints_total_limit=args.checkpoints_total_limit, mixed_precision=args.mixed_precision,
                      allow_tf32=args.allow_tf32, channels_last=args.channels_last, compile=args.compile,
                      data_on_device=getattr(args, "data_on_device", "auto"), command_line=dict(vars(args)))


def eval_options(args, data_dir=None):
    """The EvalOptions of a script's parsed evaluation arguments (add_eval_args, and evaluate.py's
    --sampler and --num_inference_steps)."""
    return EvalOptions(num_samples=args.num_eval_samples, batch_size=getattr(args, "eval_batch_size", AUTO),
                       sampler=getattr(args, "sampler", None), num_inference_steps=getattr(args, "num_inference_steps", None),
                       data_dir=data_dir, classifier_weights=getattr(args, "classifier_weights", None),
                       inception_weights=getattr(args, "inception_weights", None),
                       save_samples=getattr(args, "save_samples", None))
