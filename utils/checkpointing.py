"""Surviving long runs: training-state checkpoints, resume, and the non-finite-loss guard.

A training state is everything the loop needs to continue as if it had never stopped: model,
optimizer, LR schedule, grad scaler and RNG states (accelerate's `save_state`), plus a
`TrainingProgress` (step, epoch, batches done in the epoch, the loader's shuffle-generator state at
the start of the epoch, the epoch's running sums and the PU split). States live under
`checkpoints/{key}.state/checkpoint-{step}/`, beside (never inside) the finished pipeline
`checkpoints/{key}/`. Each is written to a hidden folder and renamed, so a folder named
checkpoint-{step} is always complete, and a `training_state.json` in it says which run and settings
made it. On CPU a resumed run ends with the same weights, bit for bit, as one never stopped.
"""
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from utils.errors import UsageError, first_line
from utils.files import replace_dir
from utils.records import check_same_settings

STATE_SUFFIX = ".state"                     # checkpoints/{key}.state holds the run's training states
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
TRAINING_STATE_FILE = "training_state.json"
LATEST = "latest"
# What accelerate's save_state writes for one model, optimizer, registered schedule and progress.
# Registered objects are saved in order as custom_checkpoint_{i}.pkl: the LR schedule, then the progress.
MODEL_FILE = "model.safetensors"
PROGRESS_FILE = "custom_checkpoint_1.pkl"
STATE_FILES = (MODEL_FILE, "optimizer.bin", "custom_checkpoint_0.pkl", PROGRESS_FILE, "random_states_0.pkl")
# On a GPU, reading the guard's flag every step would stall the launch queue once a step; it is
# read every this many steps (and before every save and at every epoch end) instead. The message
# still names the first bad step, recorded on the device.
DEVICE_CHECK_INTERVAL = 10


def state_dir_for(checkpoint_dir):
    """checkpoints/{key}.state: the training states of the run whose pipeline goes to checkpoint_dir."""
    checkpoint_dir = Path(checkpoint_dir)
    return checkpoint_dir.with_name(checkpoint_dir.name + STATE_SUFFIX)


def checkpoint_dir_for(state):
    """checkpoints/{key}: where the run whose training state is `state` (a checkpoint-STEP folder under
    checkpoints/{key}.state) saves its pipeline; None for a state that lies anywhere else."""
    state_dir = Path(state).parent
    if not state_dir.name.endswith(STATE_SUFFIX):
        return None
    return state_dir.with_name(state_dir.name.removesuffix(STATE_SUFFIX))


def list_checkpoints(state_dir):
    """The complete training states under `state_dir`, oldest (lowest step) first."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in state_dir.iterdir()
             if (m := CHECKPOINT_NAME.match(p.name)) and (p / TRAINING_STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def read_training_state(path):
    return json.loads((Path(path) / TRAINING_STATE_FILE).read_text())


def state_training_seconds(path):
    """The training loop's time, in seconds, up to the training state at `path` (its TrainingProgress's;
    None for a state saved before the progress recorded it)."""
    return torch.load(Path(path) / PROGRESS_FILE, map_location="cpu", weights_only=True).get("seconds")


def resolve_resume(value, state_dir, key):
    """The checkpoint folder that --resume_from_checkpoint `value` names, or None to start afresh.

    `latest` is the newest state of this run (None, with a note, when there is none yet, so a job
    script can always pass it); a path must be a training state that this run's key made.
    """
    if value is None:
        return None
    if value == LATEST:
        states = list_checkpoints(state_dir)
        if not states:
            print(f"note: no training state under {state_dir} yet; starting from scratch")
            return None
        return check_complete(states[-1], state_dir)
    path = Path(value)
    if not path.is_dir():
        raise UsageError(f"--resume_from_checkpoint {value} does not exist; give a checkpoint-STEP folder "
                         f"under {state_dir} or 'latest'")
    if not (path / TRAINING_STATE_FILE).is_file():
        raise UsageError(f"{value} is not a training state (no {TRAINING_STATE_FILE}); give a checkpoint-STEP "
                         f"folder under {state_dir}, not a finished pipeline")
    saved = read_training_state(path).get("key")
    if saved != key:
        raise UsageError(f"{value} is a training state of run {saved}, not of {key}; resume with the "
                         f"arguments that made it")
    return check_complete(path, state_dir)


def check_complete(path, state_dir):
    """`path` if it holds every file of a training state; a UsageError naming the missing ones otherwise."""
    missing = [name for name in STATE_FILES if not (path / name).is_file()]
    if missing:
        raise UsageError(f"{path} is incomplete (no {', '.join(missing)}); resume from another state under "
                         f"{state_dir} or start over with --overwrite")
    try:   # the weights' header names every tensor's extent: a cut-short file fails here, cheaply
        with safe_open(path / MODEL_FILE, framework="pt"):
            pass
    except SafetensorError as e:
        raise UsageError(f"{path / MODEL_FILE} is damaged ({e}); resume from another state under "
                         f"{state_dir} or start over with --overwrite")
    return path


@dataclass
class Checkpointing:
    """Where and how often one run saves training states, and which one (if any) it resumes from."""

    state_dir: Path
    key: str
    every: int = None            # --checkpointing_steps; None saves nothing
    total_limit: int = None      # --checkpoints_total_limit; None keeps every state
    resume: Path = None          # the state to load before training, None for a fresh start
    fresh: bool = False          # --overwrite without a resume: the old run's states go first
    resumed_seconds: float = 0.0  # the training time the resumed state carried (0 for a fresh start)

    @classmethod
    def resolve(cls, checkpoint_dir, key, settings, *, resume=None, every=None, total_limit=None, overwrite=False):
        """The checkpointing of the run `key` whose pipeline goes to `checkpoint_dir`: save every `every`
        steps, keep `total_limit` states, resume from `resume` (LATEST or a checkpoint-STEP folder).
        UsageError (before anything is written) when these conflict or the state to resume was made
        with other `settings` (utils.records.training_settings)."""
        state_dir = state_dir_for(checkpoint_dir)
        resume = resolve_resume(resume, state_dir, key)
        if resume is not None:
            check_same_settings(read_training_state(resume)["settings"], settings, f"{resume} was",
                                "resume with the same settings")
        if resume is None and list_checkpoints(state_dir) and not overwrite:
            raise UsageError(f"{state_dir} holds training states of an unfinished run; pass "
                             f"--resume_from_checkpoint latest to continue it or --overwrite to start over")
        return cls(state_dir=state_dir, key=key, every=every, total_limit=total_limit, resume=resume,
                   fresh=overwrite and resume is None)

    def due(self, step):
        return self.every is not None and step % self.every == 0

    def start(self, accelerator, progress):
        """Clear what --overwrite replaces and half-written saves, then load the state to resume from
        (its settings were checked when the run was resolved)."""
        if accelerator.is_main_process:
            if self.fresh:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            for tmp in self.state_dir.glob(".*.tmp") if self.state_dir.is_dir() else ():
                shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        if self.resume is None:
            return
        split = progress.split
        try:
            accelerator.load_state(str(self.resume))
        except Exception as e:   # a damaged file: safetensors, pickle and torch.load raise their own kinds
            raise UsageError(f"cannot load the training state {self.resume} ({type(e).__name__}: {first_line(e, '')}); resume "
                             f"from another state under {self.state_dir} or start over with --overwrite") from e
        saved = progress.split
        if split is not None and (saved is None or not all(torch.equal(split[k], saved[k]) for k in split)):
            raise UsageError(f"the PU split differs from the one saved in {self.resume} (did the data on disk "
                             f"change?); resume on the same data or start over with --overwrite")
        self.resumed_seconds = progress.seconds
        if accelerator.is_main_process:
            print(f"resumed from {self.resume}: step {progress.step}, epoch {progress.epoch + 1}, "
                  f"{progress.batch} batches into it, {progress.seconds / 60:.1f} minutes of training before")

    def save(self, accelerator, progress, settings, auto_beta=None):
        """Write the training state at progress.step aside, then rename it; keep the newest total_limit.
        `auto_beta` ({beta, beta_estimate} of --beta auto) is saved with it: a resume trains on with it."""
        final = self.state_dir / f"{CHECKPOINT_PREFIX}{progress.step}"
        tmp = self.state_dir / f".{final.name}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        # Every process writes its own RNG state into tmp; the main one writes the rest.
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            record = dict(key=self.key, step=progress.step, epoch=progress.epoch + 1, batch=progress.batch,
                          settings=settings, auto_beta=auto_beta)
            (tmp / TRAINING_STATE_FILE).write_text(json.dumps(record, indent=2))
            replace_dir(tmp, final)
            states = list_checkpoints(self.state_dir)
            for old in states[:-self.total_limit] if self.total_limit else ():
                # Hidden first, so a kill halfway through the delete leaves no broken checkpoint-STEP.
                doomed = old.with_name(f".{old.name}.tmp")
                os.replace(old, doomed)
                shutil.rmtree(doomed)
        accelerator.wait_for_everyone()
        return final

    def resumed_beta(self):
        """The {beta, beta_estimate} that a --beta auto run saved with the state to resume from, else None."""
        return read_training_state(self.resume).get("auto_beta") if self.resume is not None else None

    def last_saved(self):
        states = list_checkpoints(self.state_dir)
        return states[-1] if states else None


class TrainingProgress:
    """Where the loop stands; registered with accelerate so that save_state / load_state carry it."""

    def __init__(self, split=None):
        self.step = 0                 # optimizer steps done
        self.epoch = 0                # the epoch in progress, counted from 0
        self.batch = 0                # batches of that epoch done (this process's share)
        self.shuffle_state = None     # the loader generator's state when the epoch began
        self.stats = None             # the epoch's running sums, so its logged means survive a resume
        self.split = split            # {"indices", "labels"} int64 tensors, or None
        self.seconds = 0.0            # training seconds of the processes this one resumed from
        self.clock = time.time()      # when this process began (or resumed) training

    def state_dict(self):
        # A saved state carries the training time up to it, so a run resumed by a later process reports
        # its whole training time; the steps lost after the last save are trained again and count once.
        return dict(step=self.step, epoch=self.epoch, batch=self.batch, shuffle_state=self.shuffle_state,
                    stats=self.stats, split=self.split, seconds=self.seconds + time.time() - self.clock)

    def load_state_dict(self, state):
        for name, value in state.items():
            setattr(self, name, value)
        self.clock = time.time()


def split_state(split):
    """The PU split as tensors for TrainingProgress (None for data without one)."""
    if split is None:
        return None
    return dict(indices=torch.as_tensor(split.indices, dtype=torch.int64),
                labels=torch.as_tensor(split.labels, dtype=torch.int64))


class NonFiniteGuard:
    """Stops training at the first step whose loss or gradient norm is inf or NaN.

    Each step records, on the device and without a host sync, the first bad step and its loss,
    gradient norm and the objective's logged parts (R_S and R_N for PU); `check` reads that record
    (every step on CPU, every DEVICE_CHECK_INTERVAL steps on a GPU, and always before a save) and
    returns the message to stop with, or None. Under fp16 the grad scaler expects overflowing
    gradients now and then (it skips those steps and lowers its scale), so only the loss is watched
    there. With several processes the records are gathered, so every process stops at the same step.
    """

    def __init__(self, accelerator, algorithm, steps_per_epoch):
        self.accelerator, self.algorithm, self.steps_per_epoch = accelerator, algorithm, steps_per_epoch
        self.watch_grad = accelerator.scaler is None
        self.every = 1 if accelerator.device.type == "cpu" else DEVICE_CHECK_INTERVAL
        self.first_step = torch.zeros(1, dtype=torch.int64, device=accelerator.device)   # 0: none yet
        self.first = None            # loss, grad norm, then the terms, at first_step (made at the first step)
        self.term_names = ()

    def observe(self, step, loss, grad_norm, terms):
        """Record step `step` if it is the first bad one; `terms` ({name: scalar}) are only reported."""
        watch_grad = self.watch_grad and grad_norm is not None
        grad_norm = torch.full_like(loss, float("nan")) if grad_norm is None else grad_norm
        values = torch.stack([loss.detach(), grad_norm.detach(), *(v.detach() for v in terms.values())]).float()
        if self.first is None:
            self.first, self.term_names = torch.zeros_like(values), tuple(terms)
        watched = values[:2] if watch_grad else values[:1]     # loss and grad norm, or the loss
        new = (~torch.isfinite(watched).all()) & (self.first_step == 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.first = torch.where(new, values, self.first)

    def due(self, step):
        return step % self.every == 0

    def check(self):
        if self.first is None:
            return None
        first_step, first = self.first_step, self.first[None]
        if self.accelerator.num_processes > 1:
            first_step, first = self.accelerator.gather(first_step), self.accelerator.gather(first)
        first_step, first = first_step.cpu(), first.cpu()
        bad = (first_step > 0).nonzero().flatten()
        if len(bad) == 0:
            return None
        process = int(bad[first_step[bad].argmin()])
        step = int(first_step[process])
        loss, grad_norm, *terms = first[process].tolist()
        where = f" on process {process}" if self.accelerator.num_processes > 1 else ""
        parts = "".join(f"{name}={value:.4g}, " for name, value in zip(self.term_names, terms))
        return (f"non-finite loss or gradient at step {step} (epoch {(step - 1) // self.steps_per_epoch + 1}) "
                f"of {self.algorithm} training{where}: loss={loss:.4g}, {parts}grad norm={grad_norm:.4g}")
