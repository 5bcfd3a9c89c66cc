"""The one training loop that main.py, main-ft.py and main-sd.py share.

Scripts differ only in the model they pass and in `to_model_input`, which turns a loader batch
into (x0, cond, y): images and no conditioning for the pixel-space scripts; VAE latents and text
embeddings for Stable Diffusion.
"""
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from accelerate import Accelerator, skip_first_batches
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from configs import DEFAULT_SEED
from losses import DEFAULT_CORRECTION, denoising_error, get_objective_with_terms
from utils.checkpointing import LATEST, NonFiniteGuard, TrainingProgress, split_state
from utils.data import collate_batch, place_on_device
from utils.errors import TrainingDiverged, TrainingInterrupted, UsageError
from utils.records import training_settings
from utils.seeding import seed_everything

# The progress bar shows the loss every this many steps: reading it syncs a GPU with the host.
BAR_LOSS_INTERVAL = 10


def make_accelerator(mixed_precision=None, allow_tf32=True):
    """An Accelerator with fp16 autocast on CUDA and fp32 on CPU unless `mixed_precision` says otherwise."""
    cuda = torch.cuda.is_available()
    if mixed_precision is None:
        mixed_precision = "fp16" if cuda else "no"
    if mixed_precision == "fp16" and not cuda:
        raise UsageError("--mixed_precision fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
    if cuda and allow_tf32:
        # TF32 matmuls and convolutions on Ampere and newer; older GPUs ignore the flag.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # cpu=True where there is no GPU: it is what makes accelerate see a torchrun launch of several
    # CPU processes as MULTI_CPU (gloo) rather than as unrelated single-process runs.
    cpu_only = not cuda and not torch.backends.mps.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu_only)


@dataclass(frozen=True)
class TrainingSpec:
    """What one training run optimises and how: a Run's `training_spec`, or built by hand in tests."""

    config: object                       # configs.Config or configs.sd.SDConfig
    algorithm: str
    beta: float
    correction: str = DEFAULT_CORRECTION
    seed: int = DEFAULT_SEED
    channels_last: bool = False
    compile: bool = False
    data_on_device: str = "auto"
    beta_estimate: dict = None           # --beta auto: how beta was estimated (utils.prior.PriorEstimate.to_record)
    neggrad_weight: float = None         # NegGrad's ascent weight (None for the other algorithms)

    @property
    def auto_beta(self):
        """{beta, beta_estimate} for a training state where beta was estimated, else None."""
        return dict(beta=self.beta, beta_estimate=self.beta_estimate) if self.beta_estimate else None

    def settings(self, accelerator):
        """What a resume must match (utils.records.training_settings)."""
        return training_settings(self.config, self.correction, accelerator.num_processes,
                                 accelerator.mixed_precision, neggrad_weight=self.neggrad_weight)


def images_to_model_input(batch):
    """Pixel-space scripts: a batch is (images in [-1, 1], y) and needs no conditioning."""
    x0, y = batch
    return x0, None, y


@dataclass(frozen=True)
class TrainingData:
    """What the loop trains on: a dataset of (item, y) and how a batch becomes model input.

    `to_model_input` turns a loader batch into (x0, cond, y): the identity for pixel-space images, VAE
    latents and text embeddings for Stable Diffusion (utils.sd.make_sd_model_input). `split` (the PU
    split, utils.data.PUSplit) is saved with every training state, so a resume on other data fails
    loudly; `num_workers` loader processes decode items that are not held as one tensor.
    """

    dataset: object
    to_model_input: Callable = images_to_model_input
    split: object = None
    num_workers: int = 0


def make_train_loader(dataset, batch_size, seed, num_workers=0):
    """Shuffled batches from a seeded generator; TensorPUDataset batches come from one gather.

    The order comes from `loader.sampler.generator` alone. Without workers the loader also draws
    its per-epoch base seed from it (exactly DataLoader(shuffle=True, generator=...)); with workers,
    which persist across epochs and so draw that seed once rather than each epoch, from a generator
    of their own, so that a resumed run replays the same order.
    """
    order = torch.Generator().manual_seed(seed)
    batched = hasattr(dataset, "__getitems__")
    if batched and dataset.images.is_cuda:
        num_workers = 0   # CUDA tensors cannot be shared with worker processes, nor pinned
    workers = torch.Generator().manual_seed(seed) if num_workers > 0 else order
    return DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, generator=order),
                      generator=workers, collate_fn=collate_batch if batched else None, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available() and num_workers > 0,
                      # Workers outlive the epoch: restarting them each epoch costs seconds per epoch.
                      persistent_workers=num_workers > 0)


class EpochStats:
    """Running means of the logged quantities over one epoch (summed on device, read once)."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, **values):
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def totals(self, accelerator):
        """This epoch's sums, averaged over processes (each adds up the batches of its own shard)."""
        if accelerator.num_processes == 1:
            return self.sums
        return {k: accelerator.reduce(v, "mean") for k, v in self.sums.items()}

    def means(self, accelerator):
        return {k: (v / max(self.count, 1)).item() for k, v in self.totals(accelerator).items()}

    def state(self, accelerator):
        """The sums as Python floats (exact for float32) for a training state."""
        return dict(sums={k: v.item() for k, v in self.totals(accelerator).items()}, count=self.count)

    @classmethod
    def from_state(cls, state, device):
        stats = cls()
        if state:
            stats.sums = {k: torch.tensor(v, device=device) for k, v in state["sums"].items()}
            stats.count = state["count"]
        return stats


def stop_if_diverged(guard, checkpointing):
    """Raise TrainingDiverged if the guard saw a non-finite step, naming the last good training state."""
    message = guard.check()
    if message is None:
        return
    saved = checkpointing.last_saved() if checkpointing is not None else None
    kept = f"the last good training state is {saved}" if saved else "no training state was saved"
    raise TrainingDiverged(f"{message}; {kept}; lower --learning_rate or check the data")


class StopSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step instead of killing
    it mid-step; a second signal of the same kind stops at once (KeyboardInterrupt).

    Cluster schedulers send SIGTERM some time before they kill a job, which leaves time to save a
    training state. Handlers can be installed from the main thread only; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step", file=sys.stderr)

    def requested(self, accelerator, step, every):
        """Whether to stop now; with several processes agreed every `every` steps, so all stop alike."""
        if accelerator.num_processes == 1:
            return self.received is not None
        if step % every:
            return False
        flag = torch.tensor([self.received or 0], device=accelerator.device)
        signum = int(accelerator.reduce(flag, "max").item())
        self.received = self.received or signum or None
        return signum > 0


def resume_command():
    """The command that started this process, with --resume_from_checkpoint latest."""
    argv = list(sys.argv)
    if "--resume_from_checkpoint" in argv:
        argv[argv.index("--resume_from_checkpoint") + 1] = LATEST
    else:
        argv += ["--resume_from_checkpoint", LATEST]
    return shlex.join(["python", *argv])


def interrupted(signum, step, saved):
    """The TrainingInterrupted to stop with, saying what was saved and how to go on."""
    name = signal.Signals(signum).name
    if saved is None:
        return TrainingInterrupted(f"{name} at step {step}; no training state was saved (pass --checkpointing_steps N "
                                   f"to make runs resumable); re-running the command starts over", signum)
    return TrainingInterrupted(f"{name} at step {step}; training state saved to {saved}; resume with: "
                               f"{resume_command()}", signum)


@dataclass
class Session:
    """A prepared training run: what `prepare` built and the loop reads."""

    spec: TrainingSpec
    model: torch.nn.Module                  # prepared (and maybe compiled)
    params: list                            # the parameters the optimizer updates and clips
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    loader: DataLoader
    shuffle: torch.Generator                # its state at each epoch start is saved: a resume replays the order
    progress: TrainingProgress
    guard: NonFiniteGuard
    settings: dict
    objective: Callable                     # (L, y, elements per input) -> (loss, {name: part to log})
    noise_scheduler: object
    to_model_input: Callable
    checkpointing: object = None            # utils.checkpointing.Checkpointing, or None to save nothing


def prepare(accelerator, model, noise_scheduler, data, spec, *, trainable_parameters=None, checkpointing=None):
    """Optimizer, schedule, loader, progress and guard for `spec` on `data` (a TrainingData); loads the
    state to resume from."""
    config = spec.config
    params = list(trainable_parameters if trainable_parameters is not None else model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay,
                                  fused=accelerator.device.type == "cuda")
    dataset = place_on_device(data.dataset, accelerator.device, spec.data_on_device)
    loader = make_train_loader(dataset, config.batch_size, spec.seed, data.num_workers)
    shuffle = loader.sampler.generator
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if spec.compile:
        # Compiled last, as accelerate's own dynamo option does: training states keep saving the
        # prepared module, and unwrap_model returns the original, uncompiled one.
        model = torch.compile(model)
    # Built after prepare so the step count is this process's share of the batches.
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.lr_warmup_steps,
                                                   len(loader) * config.num_epochs)
    if accelerator.num_processes > 1:
        # Every process was seeded alike; offsetting the seed gives each its own noise draws (t, eps),
        # as one large batch would have. The weights stay in step: DDP broadcast process 0's at prepare.
        seed_everything(spec.seed + accelerator.process_index)
    # The schedule is not prepared (accelerate would step it once per process per step), so it is
    # registered for save_state / load_state by hand, beside the loop's own progress.
    progress = TrainingProgress(split_state(data.split))
    accelerator.register_for_checkpointing(lr_scheduler, progress)
    if checkpointing is not None:
        checkpointing.start(accelerator, progress)
    guard = NonFiniteGuard(accelerator, spec.algorithm, len(loader))
    objective = get_objective_with_terms(spec.algorithm, spec.beta, spec.correction, spec.neggrad_weight)
    return Session(spec, model, params, optimizer, lr_scheduler, loader, shuffle, progress, guard,
                   spec.settings(accelerator), objective, noise_scheduler, data.to_model_input, checkpointing)


def epoch_batches(session, epoch, device):
    """The batches of `epoch` still to train on and the epoch's running stats; a resumed epoch
    replays its shuffle and skips the batches already done."""
    progress = session.progress
    if progress.batch > 0:
        session.shuffle.set_state(progress.shuffle_state)
        return skip_first_batches(session.loader, progress.batch), EpochStats.from_state(progress.stats, device)
    progress.epoch, progress.shuffle_state = epoch, session.shuffle.get_state()
    return session.loader, EpochStats()


def log_epoch(accelerator, session, stats, epoch, writer):
    """Print the epoch's means and send them to TensorBoard: the loss, the objective's parts (R_S and
    R_N for PU), the sensitive count per batch and the learning rate."""
    means = stats.means(accelerator)
    if not accelerator.is_main_process:
        return
    print(f"epoch {epoch + 1}/{session.spec.config.num_epochs} " + " ".join(f"{k}={v:.4g}" for k, v in means.items()))
    if writer is None:
        return
    for k, v in means.items():
        writer.add_scalar(f"train/{k}", v, epoch + 1)
    writer.add_scalar("train/lr", session.lr_scheduler.get_last_lr()[0], epoch + 1)


def train(accelerator, model, noise_scheduler, data, spec, *, log_dir=None, trainable_parameters=None,
          checkpointing=None):
    """Train `model` for spec.config.num_epochs epochs on `data` (a TrainingData) with the spec's objective.

    AdamW, a cosine schedule with config.lr_warmup_steps warmup steps over len(loader) * epochs
    steps, grad-norm clipping at config.max_grad_norm. Per epoch, TensorBoard logs in `log_dir` (main
    process only; opened once the state to resume from has loaded, so a refused resume writes
    nothing) receive the mean loss and the objective's parts (R_S and R_N for PU).
    `checkpointing` (utils.checkpointing.Checkpointing) saves training states and resumes from one.
    A non-finite loss or gradient norm raises TrainingDiverged. With several processes each trains
    on its own shard of every epoch and computes the objective on its own batch; gradients are
    averaged. Returns the unwrapped model.
    """
    config = spec.config
    s = prepare(accelerator, model, noise_scheduler, data, spec, trainable_parameters=trainable_parameters,
                checkpointing=checkpointing)
    if accelerator.is_main_process:
        share = f" on each of {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
        print(f"training: {len(s.loader)} steps of {config.batch_size} images per epoch{share}")

    progress, step = s.progress, s.progress.step
    writer = SummaryWriter(log_dir) if log_dir is not None and accelerator.is_main_process else None
    try:
        with StopSignals() as stop:
            for epoch in range(progress.epoch, config.num_epochs):
                step, stats = train_epoch(accelerator, s, stop, epoch, step)
                log_epoch(accelerator, s, stats, epoch, writer)
    finally:
        if writer is not None:
            writer.close()
        # What prepare registered for checkpointing (the schedule holds the optimizer) is unregistered,
        # so a later training in this process saves and loads only its own objects. accelerate has no
        # public call that unregisters, hence the private list.
        accelerator._custom_objects = [o for o in accelerator._custom_objects
                                       if o is not s.lr_scheduler and o is not s.progress]
    accelerator.wait_for_everyone()
    # The module as it was passed in: no compiled wrapper (save_pretrained needs the original) and
    # no autocast patch on forward (a later prepare would stack a second one).
    model = accelerator.unwrap_model(s.model, keep_fp32_wrapper=False, keep_torch_compile=False)
    # The accelerator keeps what it prepared (the DDP wrapper, the optimizer and its AdamW moments,
    # twice the weights' size): with the session gone, free_memory drops those references, collects
    # and empties CUDA's cache, so the grid, the evaluation's batch search and any later training get
    # that memory.
    del s
    accelerator.free_memory()
    return model


def train_epoch(accelerator, s, stop, epoch, step):
    """One epoch (or what is left of it) of the loop on session `s`; returns the step count and the
    epoch's stats."""
    config, progress, checkpointing = s.spec.config, s.progress, s.checkpointing
    s.model.train()
    batches, stats = epoch_batches(s, epoch, accelerator.device)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.num_epochs}", initial=progress.batch,
               total=len(s.loader), disable=not accelerator.is_local_main_process, leave=False)
    for batch in bar:
        # 1. The batch as model input; the per-sample error L and the objective under autocast (NegGrad
        #    caps S's error at the size of one input, the error of predicting no noise).
        x0, cond, y = s.to_model_input(batch)
        if s.spec.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y = y.to(x0.device, torch.float32)
        with accelerator.autocast():
            L = denoising_error(s.model, s.noise_scheduler, x0, cond=cond)
            loss, terms = s.objective(L, y, x0[0].numel())
        # 2. Backward and the optimizer step, outside autocast.
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(s.params, config.max_grad_norm)
        s.optimizer.step()
        # Stepped every step, also when the fp16 grad scaler skips one (a handful of early steps):
        # fused AdamW hides skipped steps from accelerate, and the schedule barely moves meanwhile.
        s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        step += 1
        # 3. Bookkeeping: the logged parts of the objective, the non-finite guard, where the loop stands.
        stats.add(loss=loss, **terms, n_sensitive=y.sum())
        s.guard.observe(step, loss, grad_norm, terms)
        progress.step, progress.batch = step, progress.batch + 1
        # 4. A training state when due or when a signal asks to stop, never of a diverged model.
        stopping = stop.requested(accelerator, step, s.guard.every)
        save = checkpointing is not None and (checkpointing.due(step) or stopping)
        if save or s.guard.due(step):
            stop_if_diverged(s.guard, checkpointing)
        if save:
            progress.stats = stats.state(accelerator)
            checkpointing.save(accelerator, progress, s.settings, s.spec.auto_beta)
        if stopping:
            raise interrupted(stop.received, step, checkpointing.last_saved() if save else None)
        if step % BAR_LOSS_INTERVAL == 0 or step == 1:
            bar.set_postfix(loss=f"{loss.item():.4g}")
    stop_if_diverged(s.guard, checkpointing)
    progress.batch = 0
    return step, stats
