"""The one training loop that main.py, main-ft.py and main-sd.py share.

Scripts differ only in the model they pass and in `to_model_input`, which turns a loader batch
into (x0, cond, y): images and no conditioning for the pixel-space scripts; VAE latents and text
embeddings for Stable Diffusion.
"""
import math

import torch
from accelerate import Accelerator
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from losses import denoising_error, get_objective, pu_risks
from utils.data import collate_batch
from utils.errors import UsageError


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
    return Accelerator(mixed_precision=mixed_precision)


def images_to_model_input(batch):
    """Pixel-space scripts: a batch is (images in [-1, 1], y) and needs no conditioning."""
    x0, y = batch
    return x0, None, y


def make_loader(dataset, batch_size, seed, num_workers=0):
    """Shuffled batches from a seeded generator; TensorPUDataset batches come from one gather."""
    generator = torch.Generator().manual_seed(seed)
    batched = hasattr(dataset, "__getitems__")
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      collate_fn=collate_batch if batched else None, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available() and num_workers > 0)


class EpochStats:
    """Running means of the logged quantities over one epoch (summed on device, read once)."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, **values):
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def means(self):
        return {k: (v / max(self.count, 1)).item() for k, v in self.sums.items()}


def train(accelerator, model, noise_scheduler, dataset, *, algorithm, beta, correction, config, seed,
          to_model_input=images_to_model_input, writer=None, channels_last=False, num_workers=0,
          trainable_parameters=None):
    """Train `model` for config.num_epochs epochs on `dataset` with the `algorithm` objective.

    AdamW, a cosine schedule with config.lr_warmup_steps warmup steps over len(loader) * epochs
    steps, grad-norm clipping at config.max_grad_norm. Per epoch, `writer` (a TensorBoard
    SummaryWriter, main process only) receives the mean loss and, for PU, R_S and R_N.
    Returns the unwrapped model.
    """
    objective = get_objective(algorithm, beta, correction)
    params = list(trainable_parameters if trainable_parameters is not None else model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay,
                                  fused=accelerator.device.type == "cuda")
    loader = make_loader(dataset, config.batch_size, seed, num_workers)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # Built after prepare so the step count is this process's share of the batches.
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.lr_warmup_steps,
                                                   len(loader) * config.num_epochs)

    step = 0
    for epoch in range(config.num_epochs):
        model.train()
        stats = EpochStats()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            x0, cond, y = to_model_input(batch)
            if channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            y = y.to(x0.device, torch.float32)
            with accelerator.autocast():
                L = denoising_error(model, noise_scheduler, x0, cond=cond)
                loss = objective(L, y)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            r_s, r_n = pu_risks(L.detach(), y, beta)
            stats.add(loss=loss, R_S=r_s, R_N=r_n, n_sensitive=y.sum())
            if step % 10 == 0 or step == 1:
                bar.set_postfix(loss=f"{loss.item():.4g}")
        means = stats.means()
        if not all(math.isfinite(v) for v in means.values()):
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}: {means}")
        if accelerator.is_main_process:
            print(f"epoch {epoch + 1}/{config.num_epochs} " + " ".join(f"{k}={v:.4g}" for k, v in means.items()))
            if writer is not None:
                for k, v in means.items():
                    if algorithm == "PU" or k not in ("R_S", "R_N"):
                        writer.add_scalar(f"train/{k}", v, epoch + 1)
                writer.add_scalar("train/lr", lr_scheduler.get_last_lr()[0], epoch + 1)
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(model)
