"""A training run resolved once: its final config, algorithm, beta, seed, key, paths and accelerator.

Every entry script hands its command line and its base config (the registry entry, with what the
script itself decides, such as main-ft.py's sampler and the pretrained model's schedule) to
`Run.resolve`. That is the only place where overrides are applied, beta is settled, the key is
formed and everything is validated; it writes nothing. The rest of the code (the loop, saving,
evaluation) reads the `Run` and never changes it, except to fix its training time when the loop
ends. `Run.from_record` rebuilds the same object from a checkpoint's run_config.json for evaluation.
"""
import glob
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from configs import AUTO_BETA, DEFAULT_BETA, with_overrides
from configs.sd import SD_CONFIG_NAME
from losses import DEFAULT_CORRECTION, get_algorithm
from utils.checkpointing import FREE_FIELDS, LATEST, Checkpointing
from utils.cli import DATA_COUNT_ARGS, TRAINING_OVERRIDES, is_trainable_beta
from utils.errors import UsageError
from utils.files import RESULTS_DIR, RUN_CONFIG_FILE, save_folder_atomically
from utils.training import TrainingSpec, make_accelerator

# Scripts whose key names the config; main-sd.py has a single experiment (DESIGN section 3).
SCRIPTS_KEYED_BY_CONFIG = ("main", "main_ft")
# Settings a user may change that alter what is trained, sampled or measured, in key order, with
# their short key tags: `--n_s 30` makes main_Digits_even_PU_0.1_nS30_0. Settings left at the
# config's value add nothing, so default runs keep the keys DESIGN section 3 gives them.
# main-ft.py's --pretrained_model is recorded, not keyed: a local copy of the config's hub model
# must keep the key that the hub id gives.
KEY_TAGS = {"n_u_normal": "nUn", "n_u_sensitive": "nUs", "n_s": "nS", "n_test": "nT", "num_epochs": "ep",
            "batch_size": "bs", "learning_rate": "lr", "num_inference_steps": "steps", "resolution": "res"}
CORRECTION_TAG = "nn"                   # --pu_correction nn (abs is the default)


def format_beta(beta):
    return repr(float(beta))


def tag_value(value):
    """A setting's value as it appears in a key: floats in their shortest form (1e-05, 0.001)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def key_tags(config, base, correction):
    """The key tags of the settings in which `config` differs from `base`, in KEY_TAGS order."""
    tags = [f"{tag}{tag_value(getattr(config, name))}" for name, tag in KEY_TAGS.items()
            if hasattr(base, name) and getattr(config, name) != getattr(base, name)]
    return tags + ([CORRECTION_TAG] if correction != DEFAULT_CORRECTION else [])


def check_output_dir(root):
    """UsageError unless `root` is, or can be created as, a writable folder (nothing is created here)."""
    probe = Path(root)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{probe} is a file, not a folder; choose another --output_dir")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write to {probe}; choose a writable --output_dir")


def trainable_beta(estimate):
    """The estimated prior of --beta auto, refused (UsageError) where a typed --beta would be."""
    if not is_trainable_beta(estimate.beta):
        note = f" ({estimate.warning})" if estimate.warning else ""
        raise UsageError(f"--beta auto estimated beta = {estimate.beta:.4f}: U looks entirely sensitive to the "
                         f"classifier{note}; check S and U, or pass --beta with a value in [0, 1), e.g. 0.1")
    return estimate.beta


@dataclass
class Run:
    """One training run's resolved settings and output paths; creating it writes nothing."""

    script: str                      # main | main_ft | main_sd
    config_name: str
    config: object                   # the final configs.Config (configs.sd.SDConfig for main_sd)
    algorithm: str
    beta: float                      # 0.0 for algorithms that do not use it
    seed: int
    pu_correction: str
    root: Path
    tags: tuple = ()                 # key tags of the settings that differ from the config's
    args: object = None              # the command line (None for a run read back from its record)
    accelerator: object = None
    checkpointing: Checkpointing = None
    started: float = field(default_factory=time.time)
    train_seconds: float = None      # a finished run's training time (its record's, or fixed by finish_training)
    beta_auto: bool = False          # --beta auto: beta was estimated from U and S (the key says auto)
    beta_estimate: dict = None       # the estimate, its interval and method (utils.prior.PriorEstimate)
    done: bool = False               # finished earlier with these settings: nothing to train
    replaced: tuple = ()             # --overwrite: the old run's grids, results and logs, deleted once
                                     # the new pipeline is saved (save_pipeline)

    @property
    def key(self):
        name = [self.config_name] if self.script in SCRIPTS_KEYED_BY_CONFIG else []
        beta = AUTO_BETA if self.beta_auto else format_beta(self.beta)
        return "_".join([self.script, *name, self.algorithm, beta, *self.tags, str(self.seed)])

    @property
    def checkpoint_dir(self):
        return self.root / "checkpoints" / self.key

    @property
    def image_dir(self):
        return self.root / "outputs" / "images"

    @property
    def log_dir(self):
        return self.root / "outputs" / "logs" / self.key

    @property
    def training_spec(self):
        args = self.args
        return TrainingSpec(config=self.config, algorithm=self.algorithm, beta=self.beta,
                            correction=self.pu_correction, seed=self.seed, channels_last=args.channels_last,
                            compile=args.compile, data_on_device=args.data_on_device)

    @classmethod
    def resolve(cls, args, script, config_name, base, estimate_beta=None, **script_overrides):
        """The run that `args` asks for on the `base` config; validates everything, writes nothing.

        Applies the command line's overrides (and `script_overrides`, options only one script has)
        to `base`, settles beta (the default for algorithms that use it, 0.0 for the others; with
        --beta auto, `estimate_beta(config, accelerator)` -> utils.prior.PriorEstimate), forms the key,
        makes the accelerator (it decides precision and process count) and resolves the training
        state to resume from against the final settings.
        """
        overrides = {k: getattr(args, k, None) for k in (*DATA_COUNT_ARGS, *TRAINING_OVERRIDES, "num_inference_steps")}
        config = with_overrides(base, **overrides, **script_overrides)
        auto = args.beta == AUTO_BETA
        if auto and not get_algorithm(args.algorithm).uses_beta:
            raise UsageError(f"--beta auto estimates the class prior that PU uses; {args.algorithm} does not use "
                             f"beta: drop --beta or use --algorithm PU")
        if get_algorithm(args.algorithm).uses_beta:
            beta = DEFAULT_BETA if args.beta is None or auto else args.beta
        else:
            beta = 0.0
            if args.beta is not None:
                print(f"note: --beta {args.beta} is used by PU only; {args.algorithm} records beta as 0.0")
        run = cls(script=script, config_name=config_name, config=config, algorithm=args.algorithm, beta=beta,
                  seed=args.seed, pu_correction=args.pu_correction, root=Path(args.output_dir),
                  tags=tuple(key_tags(config, base, args.pu_correction)), args=args, beta_auto=auto)
        run.check_writable()
        run.accelerator = make_accelerator(args.mixed_precision, args.allow_tf32)
        if not run.done:
            run.checkpointing = Checkpointing.from_args(args, run.checkpoint_dir, run.key,
                                                        run.training_spec.settings(run.accelerator))
        if auto and not run.done:   # last: the estimate trains classifiers, so every cheap check comes first
            run.settle_beta(estimate_beta)
        return run

    @classmethod
    def from_record(cls, record, config, root):
        """The run a checkpoint's run_config.json describes, with its `config` rebuilt by the caller."""
        # Records written before config_name was recorded hold it in args (main.py, main-ft.py) or not at all (SD).
        config_name = record.get("config_name") or record["args"].get("config_name", SD_CONFIG_NAME)
        return cls(script=record["script"], config_name=config_name, beta_auto=bool(record.get("beta_estimate")),
                   beta_estimate=record.get("beta_estimate"),
                   config=config, algorithm=record["algorithm"], beta=record["beta"], seed=record["seed"],
                   pu_correction=record.get("pu_correction") or DEFAULT_CORRECTION, root=Path(root),
                   tags=tuple(record.get("key_tags", ())), train_seconds=record.get("train_seconds"))

    def outputs_named_by_key(self, folder, suffix):
        """`folder`'s files of this key: {key}{suffix} and the re-evaluations' {key}_*{suffix}."""
        key = glob.escape(self.key)
        return sorted(folder.glob(f"{key}{suffix}")) + sorted(folder.glob(f"{key}_*{suffix}"))

    def finished_outputs(self):
        """What a finished run of this key left: its pipeline folder and sample grids."""
        images = self.outputs_named_by_key(self.image_dir, ".png")
        return [p for p in (self.checkpoint_dir, *images) if p.exists()]

    def derived_outputs(self):
        """What a run of this key left beside its pipeline folder: grids, results and TensorBoard logs."""
        logs = sorted(p for p in self.log_dir.rglob("*") if p.is_file())
        return [*self.outputs_named_by_key(self.image_dir, ".png"),
                *self.outputs_named_by_key(self.root / RESULTS_DIR, ".json"), *logs]

    def check_writable(self):
        """Refuse to touch a finished run, unless --overwrite replaces it or --resume_from_checkpoint
        latest finds it finished with the same settings (`done`: nothing is trained or written)."""
        finished = self.finished_outputs()
        if finished and not self.args.overwrite:
            if self.args.resume_from_checkpoint == LATEST and (self.checkpoint_dir / RUN_CONFIG_FILE).is_file():
                record = json.loads((self.checkpoint_dir / RUN_CONFIG_FILE).read_text())
                self.check_same_settings(record)
                self.done = True
                if self.beta_auto:    # the beta it was trained with
                    self.beta, self.beta_estimate = record["beta"], record.get("beta_estimate")
                print(f"{self.key} is finished ({self.checkpoint_dir}); nothing to train")
                return
            raise UsageError(f"{finished[0]} holds a finished run; pass --resume_from_checkpoint latest to leave it "
                             f"as it is, --overwrite to replace it, or choose another --seed or --output_dir")
        check_output_dir(self.root)
        if self.args.overwrite:
            self.replaced = tuple(self.derived_outputs())

    def settle_beta(self, estimate_beta):
        """--beta auto: the beta that the training state to resume from was trained with, or else the
        class prior estimated from U and S by `estimate_beta(config, accelerator)` (a PriorEstimate).

        Every process estimates, and all take process 0's estimate: on a GPU the classifiers are not
        bit-exact, and one DDP model must train with one beta. The beta is saved with every training
        state, so a resume never trains on with a new estimate.
        """
        saved = self.checkpointing.resumed_beta()
        if saved is not None:
            self.beta, self.beta_estimate = saved["beta"], saved["beta_estimate"]
            message = f"beta auto: {self.beta:.4f}, estimated when the run began ({self.checkpointing.resume})"
        else:
            estimate = broadcast_object_list([estimate_beta(self.config, self.accelerator)])[0]
            self.beta, self.beta_estimate = trainable_beta(estimate), estimate.to_record()
            note = f"; warning: {estimate.warning}" if estimate.warning else ""
            message = (f"beta auto: {estimate.beta:.4f}, {1 - estimate.delta:.0%} interval [{estimate.lower:.4f}, "
                       f"{estimate.upper:.4f}] ({estimate.method}, |U| = {estimate.n_u}, |S| = {estimate.n_s}){note}")
        self.checkpointing.auto_beta = dict(beta=self.beta, beta_estimate=self.beta_estimate)
        if self.accelerator.is_main_process:
            print(message)

    def check_same_settings(self, record):
        """UsageError unless the finished run `record` (its run_config.json) trained what this run would."""
        now = dict(self.to_settings(), pu_correction=self.pu_correction)
        saved = dict({k: v for k, v in record["config"].items() if k in now}, pu_correction=record.get("pu_correction"))
        changed = [k for k in now if saved.get(k) != now[k]]
        if changed:
            k = changed[0]
            raise UsageError(f"{self.checkpoint_dir} holds a finished run made with {k} = {saved.get(k)!r}, this run "
                             f"has {now[k]!r}; pass --overwrite to replace it or choose another --output_dir")

    def to_settings(self):
        """The config's training fields as JSON would hold them (what a finished run must match)."""
        return {k: v for k, v in json.loads(json.dumps(self.config.to_dict())).items() if k not in FREE_FIELDS}

    def result_key(self, num_inference_steps, sampler=None):
        """The key of this run's results: its own, tagged _{sampler} and _steps{N} when sampled with
        another sampler or step count than its config's, so such an evaluation never replaces the run's own."""
        key = self.key
        if sampler is not None and sampler != self.config.sampler:     # SD configs have no sampler field
            key += f"_{sampler}"
        if num_inference_steps != self.config.num_inference_steps:
            key += f"_steps{num_inference_steps}"
        return key

    def elapsed(self):
        """Seconds of training: a finished run's recorded time, or the time since this one started plus,
        for a resumed run, the training time its state carried."""
        if self.train_seconds is not None:
            return self.train_seconds
        earlier = self.checkpointing.resumed_seconds if self.checkpointing else 0.0
        return round(earlier + time.time() - self.started, 1)

    def finish_training(self):
        """Fix the training time where the loop ended: results written after it (grid, evaluation) report it."""
        self.train_seconds = self.elapsed()

    def to_record(self, **extra):
        """The resolved run as the JSON-ready dict saved as run_config.json beside the checkpoint."""
        import accelerate
        import diffusers
        return dict(key=self.key, script=self.script, config_name=self.config_name,
                    algorithm=self.algorithm, beta=self.beta, seed=self.seed, pu_correction=self.pu_correction,
                    key_tags=list(self.tags), beta_estimate=self.beta_estimate,
                    config=self.config.to_dict(), args=dict(vars(self.args)),
                    versions=dict(python=platform.python_version(), torch=torch.__version__,
                                  diffusers=diffusers.__version__, accelerate=accelerate.__version__),
                    train_seconds=self.elapsed(), **extra)


def save_pipeline(run, pipeline, record):
    """Save `pipeline` (save_pretrained) and the run record to checkpoints/{key}/, atomically."""

    def write(tmp):
        pipeline.save_pretrained(tmp)
        (tmp / RUN_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
    path = save_folder_atomically(run.checkpoint_dir, write)
    for old in run.replaced:   # they described the model just replaced; report.py would average them in
        old.unlink(missing_ok=True)
    return path
