"""What the throughput benchmark reports besides time: FLOPs per image, the device's peak, memory.

Model FLOPs utilisation (MFU) = FLOPs per image (torch's FLOP counter: convolutions, matmuls and
attention, forward + backward for training, forward for one sampling step) x images/s / peak FLOP/s.
The peaks are the dense (no sparsity) data-sheet figures for the precision the UNet's convolutions
and matmuls run in; on CPU a nominal figure from the vector units, the clock and the threads used.
"""
import copy
import math
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from losses import denoising_error

# (name fragment of torch.cuda.get_device_name, peak FLOP/s by precision); the first match wins, so
# the PCIe and NVL cards come before the SXM ones. NVIDIA data sheets, dense tensor-core figures.
GPU_PEAK_FLOPS = (
    ("H100 PCIe", dict(fp16=756e12, bf16=756e12, tf32=378e12, fp32=51e12)),
    ("H100 NVL", dict(fp16=835e12, bf16=835e12, tf32=418e12, fp32=60e12)),
    ("H100", dict(fp16=989e12, bf16=989e12, tf32=494e12, fp32=67e12)),
    ("H200", dict(fp16=989e12, bf16=989e12, tf32=494e12, fp32=67e12)),
    ("A100", dict(fp16=312e12, bf16=312e12, tf32=156e12, fp32=19.5e12)),
)
# CPU FLOPs per cycle per core: 2 FMA units x 2 FLOPs x vector lanes (16 fp32 with AVX-512, 8 with
# AVX2), and Intel's AMX tiles for bf16 (1024: 512 multiply-adds a cycle). Server parts with a
# single AVX-512 FMA unit reach half the AVX-512 figure.
CPU_FLOPS_PER_CYCLE = (("bf16", "amx_bf16", 1024), (None, "avx512f", 64), (None, "avx2", 32))
CPU_SCALAR_FLOPS_PER_CYCLE = 2
KIB = 1024   # Linux reports ru_maxrss in KiB


def precision(accelerator, allow_tf32):
    """The precision the UNet's convolutions and matmuls run in: fp16 | bf16 | tf32 | fp32."""
    if accelerator.mixed_precision in ("fp16", "bf16"):
        return accelerator.mixed_precision
    return "tf32" if accelerator.device.type == "cuda" and allow_tf32 else "fp32"


def cpu_info():
    """(model name, clock in Hz, feature flags) from /proc/cpuinfo; the clock is the reported one."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:     # not Linux: no peak, so no MFU
        pass
    return fields.get("model name", "unknown CPU"), float(fields.get("cpu MHz", "nan")) * 1e6, \
        set(fields.get("flags", "").split())


def peak_flops(device, prec):
    """(peak FLOP/s or None, where the figure comes from) for `device` computing in `prec`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peaks in GPU_PEAK_FLOPS:
            if fragment in name:
                return peaks[prec], f"{fragment} data sheet, dense {prec}"
        return None, f"{name} is not in benchmarks/measure.py's GPU_PEAK_FLOPS; no MFU"
    name, hz, flags = cpu_info()
    if not math.isfinite(hz):
        return None, f"{name}: /proc/cpuinfo gives no clock; no MFU"
    per_cycle = next((n for p, flag, n in CPU_FLOPS_PER_CYCLE if flag in flags and p in (None, prec)),
                     CPU_SCALAR_FLOPS_PER_CYCLE)
    threads = torch.get_num_threads()
    return threads * hz * per_cycle, (f"nominal: threads {threads} x {hz / 1e9:.2f} GHz x {per_cycle} "
                                      f"{prec} FLOP/cycle ({name})")


def count_flops(model, noise_scheduler, image_shape, objective, batch=2):
    """FLOPs per image of a training step (forward + backward of the objective, a function (L, y,
    elements per input) as losses.get_objective returns) and of one sampling step (a forward), counted
    on a float32 copy of `model` so its gradients stay untouched."""
    model = copy.deepcopy(model).float().train()
    device = next(model.parameters()).device
    x = torch.randn(batch, *image_shape, device=device)
    y = torch.arange(batch, device=device) % 2      # both labeled (S) and unlabeled (U) samples
    with FlopCounterMode(display=False) as counter:
        objective(denoising_error(model, noise_scheduler, x), y.float(), x[0].numel()).backward()
    train_flops = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, 0)
    return train_flops, counter.get_total_flops() / batch


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    """(fn's result, its wall-clock seconds), with the device's queued work finished at both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    """(bytes, what they measure): CUDA's peak allocation since the last reset, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB, "process peak RSS so far (ru_maxrss)"


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_info()[0]
