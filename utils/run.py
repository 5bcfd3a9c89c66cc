"""A training run resolved once: its final config, algorithm, beta, seed, key, paths and accelerator.

Every entry script turns its command line into a `RunRequest` (utils.cli.run_request: plain values,
no argparse past that point) and hands it, with its base config (the registry entry, with what the
script itself decides, such as main-ft.py's sampler and the pretrained model's schedule), to
`Run.resolve`. That is the only place where overrides are applied, beta is settled, the key is
formed and everything is validated; it writes nothing. The rest of the code (the loop, saving,
evaluation) reads the `Run` and never changes it, except to fix its training time when the loop
ends. `Run.from_record` rebuilds the same object from a checkpoint's run_config.json for evaluation.
Keys, records and the settings check live in utils.records.
"""
import glob
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import broadcast_object_list

from configs import AUTO_BETA, DEFAULT_BETA, DEFAULT_SEED, is_trainable_beta, with_overrides
from configs.sd import SD_CONFIG_NAME
from losses import ALGORITHMS, DEFAULT_CORRECTION, DEFAULT_NEGGRAD_WEIGHT, get_algorithm
from utils.checkpointing import LATEST, Checkpointing
from utils.errors import UsageError
from utils.files import RESULTS_DIR, RUN_CONFIG_FILE
from utils.records import check_same_settings, key_tags, result_key, run_key, training_settings
from utils.selection import check_selection
from utils.training import TrainingSpec, make_accelerator

DEFAULT_DATA_DIR = "datasets"


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


@dataclass(frozen=True)
class RunRequest:
    """What a user asks of a training run, as plain values (utils.cli.run_request reads them off a
    command line; a caller without one builds it directly)."""

    algorithm: str = "PU"
    beta: object = None                   # a number, AUTO_BETA, or None for the algorithm's default
    seed: int = DEFAULT_SEED
    pu_correction: str = DEFAULT_CORRECTION
    neggrad_weight: float = None          # NegGrad's ascent weight; None for its default
    overrides: dict = field(default_factory=dict)   # config fields to change (n_s, num_epochs, ...)
    data_dir: str = DEFAULT_DATA_DIR
    output_dir: str = "."
    overwrite: bool = False               # replace a finished run with the same key
    resume_from_checkpoint: str = None    # LATEST or a checkpoint-STEP folder
    checkpointing_steps: int = None
    checkpoints_total_limit: int = None
    mixed_precision: str = None           # None: fp16 on CUDA, no on CPU
    allow_tf32: bool = True
    channels_last: bool = False
    compile: bool = False
    data_on_device: str = "auto"
    command_line: dict = field(default_factory=dict)   # recorded as the run's "args"


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
    tags: tuple = ()                 # key tags of the settings that differ from the config's
    request: RunRequest = field(default_factory=RunRequest)   # what was asked (a record's, read back)
    accelerator: object = None
    checkpointing: Checkpointing = None
    started: float = field(default_factory=time.time)
    train_seconds: float = None      # a finished run's training time (its record's, or fixed by finish_training)
    beta_auto: bool = False          # --beta auto: beta was estimated from U and S (the key says auto)
    beta_estimate: dict = None       # the estimate, its interval and method (utils.prior.PriorEstimate)
    held_out_scores: object = None   # --beta auto: the cross-fitted S-vs-U scores behind the estimate
                                     # (utils.prior.HeldOutScores), which Filter's selection reuses; not recorded
    neggrad_weight: float = None     # NegGrad's ascent weight; None for the other algorithms
    selection: dict = None           # Filter and Clean: what the selection dropped (utils.selection), fixed
                                     # when the data is selected, before training
    done: bool = False               # finished earlier with these settings: nothing to train
    replaced: tuple = ()             # --overwrite: the old run's grids, results and logs, deleted once
                                     # the new pipeline is saved (save_pipeline)

    @property
    def key(self):
        return run_key(self.script, self.config_name, self.algorithm, AUTO_BETA if self.beta_auto else self.beta,
                       self.tags, self.seed)

    @property
    def root(self):
        """The output root: checkpoints/ and outputs/ lie below it."""
        return Path(self.request.output_dir)

    @property
    def data_dir(self):
        return self.request.data_dir

    @property
    def command_line(self):
        return self.request.command_line

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
        request = self.request
        return TrainingSpec(config=self.config, algorithm=self.algorithm, beta=self.beta,
                            correction=self.pu_correction, seed=self.seed, channels_last=request.channels_last,
                            compile=request.compile, data_on_device=request.data_on_device,
                            beta_estimate=self.beta_estimate, neggrad_weight=self.neggrad_weight)

    @classmethod
    def resolve(cls, request, script, config_name, base, estimate_beta=None):
        """The run that `request` (a RunRequest) asks for on the `base` config; validates everything,
        writes nothing.

        Applies the request's overrides to `base`, settles beta (the default for algorithms that use
        it, 0.0 for the others; with --beta auto, `estimate_beta(config, accelerator)` ->
        utils.prior.PriorEstimate) and NegGrad's weight, refuses a selection the data cannot back
        (Clean where U's labels are unknown), forms the key, makes the accelerator (it decides
        precision and process count) and resolves the training state to resume from against the
        final settings.
        """
        config = with_overrides(base, **request.overrides)
        algorithm = get_algorithm(request.algorithm)
        auto = request.beta == AUTO_BETA
        users = [name for name, a in ALGORITHMS.items() if a.uses_beta]   # PU and Filter
        if auto and not algorithm.uses_beta:
            raise UsageError(f"--beta auto estimates the class prior that {' and '.join(users)} use; "
                             f"{request.algorithm} does not use beta: drop --beta or use --algorithm "
                             f"{' or '.join(users)}")
        if not algorithm.uses_beta and request.beta is not None:
            print(f"note: --beta {request.beta} is used by PU only; {request.algorithm} records beta as 0.0 (the "
                  f"baseline Filter also takes it, as the share of U it drops)")
        weighted = "weight" in algorithm.takes
        if not weighted and request.neggrad_weight is not None:
            print(f"note: --neggrad_weight {request.neggrad_weight} is used by NegGrad only; {request.algorithm} "
                  f"ignores it")
        neggrad_weight = (request.neggrad_weight if request.neggrad_weight is not None else DEFAULT_NEGGRAD_WEIGHT) \
            if weighted else None
        check_selection(algorithm.selection, request.algorithm, config)
        # --beta auto leaves beta unset (None) until settle_beta: the finished run's, the resumed
        # state's or a new estimate.
        beta = (request.beta if request.beta is not None else DEFAULT_BETA) if algorithm.uses_beta else 0.0
        run = cls(script=script, config_name=config_name, config=config, algorithm=request.algorithm,
                  beta=None if auto else beta, seed=request.seed, pu_correction=request.pu_correction,
                  request=request, beta_auto=auto, neggrad_weight=neggrad_weight,
                  tags=tuple(key_tags(config, base, request.pu_correction, DEFAULT_CORRECTION, neggrad_weight,
                                      DEFAULT_NEGGRAD_WEIGHT)))
        finished = run.check_writable()
        if finished is not None:   # its results, if completed now, carry what its selection dropped
            run.selection = finished.get("selection")
        run.accelerator = make_accelerator(request.mixed_precision, request.allow_tf32)
        if finished is None:
            run.checkpointing = Checkpointing.resolve(
                run.checkpoint_dir, run.key, run.training_spec.settings(run.accelerator),
                resume=request.resume_from_checkpoint, every=request.checkpointing_steps,
                total_limit=request.checkpoints_total_limit, overwrite=request.overwrite)
        if auto:   # last: an estimate trains classifiers, so every cheap check comes first
            run.settle_beta(finished, estimate_beta)
        return run

    @classmethod
    def from_record(cls, record, config, root):
        """The run a checkpoint's run_config.json describes, with its `config` rebuilt by the caller."""
        args = record.get("args") or {}
        # Records written before config_name was recorded hold it in args (main.py, main-ft.py) or not at all (SD).
        config_name = record.get("config_name") or args.get("config_name", SD_CONFIG_NAME)
        request = RunRequest(data_dir=args.get("data_dir") or DEFAULT_DATA_DIR, output_dir=str(root),
                             command_line=args)
        return cls(script=record["script"], config_name=config_name, beta_auto=bool(record.get("beta_estimate")),
                   beta_estimate=record.get("beta_estimate"),
                   config=config, algorithm=record["algorithm"], beta=record["beta"], seed=record["seed"],
                   pu_correction=record.get("pu_correction") or DEFAULT_CORRECTION,
                   tags=tuple(record.get("key_tags", ())), request=request, train_seconds=record.get("train_seconds"),
                   neggrad_weight=record.get("neggrad_weight"), selection=record.get("selection"))

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
        latest finds it finished with the same settings: then it is `done` (nothing is trained or
        written) and its record is returned. None when there is something to train."""
        finished, request = self.finished_outputs(), self.request
        if finished and not request.overwrite:
            if request.resume_from_checkpoint == LATEST and (self.checkpoint_dir / RUN_CONFIG_FILE).is_file():
                record = json.loads((self.checkpoint_dir / RUN_CONFIG_FILE).read_text())
                check_same_settings(training_settings(record["config"], record.get("pu_correction"),
                                                      neggrad_weight=record.get("neggrad_weight")),
                                    training_settings(self.config, self.pu_correction,
                                                      neggrad_weight=self.neggrad_weight),
                                    f"{self.checkpoint_dir} holds a finished run",
                                    "pass --overwrite to replace it or choose another --output_dir")
                self.done = True
                print(f"{self.key} is finished ({self.checkpoint_dir}); nothing to train")
                return record
            raise UsageError(f"{finished[0]} holds a finished run; pass --resume_from_checkpoint latest to leave it "
                             f"as it is, --overwrite to replace it, or choose another --seed or --output_dir")
        check_output_dir(self.root)
        if request.overwrite:
            self.replaced = tuple(self.derived_outputs())
        return None

    def settle_beta(self, finished, estimate_beta):
        """--beta auto, the one place that sets beta: the beta a `finished` run (its record) or the
        training state to resume from was trained with, or else the class prior estimated from U and
        S by `estimate_beta(config, accelerator)` (a PriorEstimate).

        Every process estimates, and all take process 0's estimate: on a GPU the classifiers are not
        bit-exact, and one DDP model must train with one beta. The beta is saved with every training
        state (TrainingSpec.auto_beta), so a resume never trains on with a new estimate. A new
        estimate's held-out scores are kept (`held_out_scores`) for Filter's selection: one
        cross-fitting gives both.
        """
        if finished is not None:
            self.beta, self.beta_estimate = finished["beta"], finished.get("beta_estimate")
            return
        saved = self.checkpointing.resumed_beta()
        if saved is not None:
            self.beta, self.beta_estimate = saved["beta"], saved["beta_estimate"]
            message = f"beta auto: {self.beta:.4f}, estimated when the run began ({self.checkpointing.resume})"
        else:
            estimate = broadcast_object_list([estimate_beta(self.config, self.accelerator)])[0]
            self.beta, self.beta_estimate = trainable_beta(estimate), estimate.to_record()
            self.held_out_scores = estimate.scores
            note = f"; warning: {estimate.warning}" if estimate.warning else ""
            message = (f"beta auto: {estimate.beta:.4f}, {1 - estimate.delta:.0%} interval [{estimate.lower:.4f}, "
                       f"{estimate.upper:.4f}] ({estimate.method}, |U| = {estimate.n_u}, |S| = {estimate.n_s}){note}")
        if self.accelerator.is_main_process:
            print(message)

    def result_key(self, num_inference_steps, sampler=None):
        """The key of this run's results for a sampler and step count (utils.records.result_key)."""
        return result_key(self.key, self.config, num_inference_steps, sampler)

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
