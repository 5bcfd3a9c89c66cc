"""main.py under torchrun, with what each process trains on recorded (for tests/test_multiprocess.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/multiprocess_probe.py RECORD_DIR ARGS...

Every process runs main.py's `main(parse_args(ARGS))` unchanged, after wrapping, in its own
interpreter only, the calls that the data, the noise and the gradients pass through:
- TensorPUDataset.__getitems__: the training-set indices of each batch this process loads;
- DDPMScheduler.add_noise: the noise and the timesteps drawn for each training batch;
- a hook on a few UNet parameters: this process's own gradient, before DDP averages it;
- Accelerator.clip_grad_norm_: the gradient the optimizer steps with, after DDP averaged it;
- utils.training.get_objective_with_terms: the beta this process trains with;
- utils.prior_data.estimate_prior_for_images (--beta auto): this process's estimate, moved by 0.01 x RANK,
  so that processes that kept their own estimates would train with different betas.
Each process saves them to RECORD_DIR/process_{RANK}.pt. Nothing in the library knows about this.
"""
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

import main  # noqa: E402
import utils.prior_data  # noqa: E402
import utils.training  # noqa: E402
from utils.data import TensorPUDataset  # noqa: E402

RANK_OFFSET = 0.01     # each process's estimate of beta is moved by RANK_OFFSET x its rank

# Parameters whose gradients are recorded: the first and last layers, small enough to store each step.
WATCHED = ("conv_in.weight", "conv_out.weight", "conv_out.bias")


def install(record):
    """Wrap the calls listed in the module docstring so that they append to `record`."""
    getitems, add_noise, clip = TensorPUDataset.__getitems__, DDPMScheduler.add_noise, Accelerator.clip_grad_norm_
    build_unet, get_objective, estimate_prior = main.build_unet, utils.training.get_objective_with_terms, \
        utils.prior_data.estimate_prior_for_images
    names = {}     # id(parameter) -> name, for the watched ones

    def recorded_getitems(self, indices):
        record["indices"].append(torch.as_tensor(indices, dtype=torch.int64).clone())
        return getitems(self, indices)

    def recorded_add_noise(self, original_samples, noise, timesteps):
        record["noise"].append(noise.detach().clone())
        record["timesteps"].append(timesteps.detach().clone())
        return add_noise(self, original_samples, noise, timesteps)

    def recorded_clip(self, parameters, max_norm, norm_type=2):
        parameters = list(parameters)
        record["synced_grads"].append({names[id(p)]: p.grad.detach().clone() for p in parameters if id(p) in names})
        return clip(self, parameters, max_norm, norm_type)

    def watched_unet(config):
        unet = build_unet(config)
        for name, p in unet.named_parameters():
            if name in WATCHED:
                names[id(p)] = name
                p.register_hook(lambda grad, name=name: record["local_grads"].append((name, grad.detach().clone())))
        return unet

    def recorded_get_objective(algorithm, beta, *settings):
        record["beta"] = beta
        return get_objective(algorithm, beta, *settings)

    def rank_moved_estimate(*args, **kwargs):
        estimate = estimate_prior(*args, **kwargs)
        return replace(estimate, beta=estimate.beta + RANK_OFFSET * int(os.environ["RANK"]))

    TensorPUDataset.__getitems__ = recorded_getitems
    utils.training.get_objective_with_terms = recorded_get_objective
    utils.prior_data.estimate_prior_for_images = rank_moved_estimate
    DDPMScheduler.add_noise = recorded_add_noise
    Accelerator.clip_grad_norm_ = recorded_clip
    main.build_unet = watched_unet


def local_grads_by_step(pairs):
    """[(name, grad), ...] in backward order -> one {name: grad} per step."""
    steps = [{} for _ in range(len(pairs) // len(WATCHED))]
    counts = dict.fromkeys(WATCHED, 0)
    for name, grad in pairs:
        steps[counts[name]][name] = grad
        counts[name] += 1
    return steps


if __name__ == "__main__":
    record_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    record = dict(indices=[], noise=[], timesteps=[], local_grads=[], synced_grads=[])
    install(record)
    main.main(main.parse_args(argv))
    record["local_grads"] = local_grads_by_step(record["local_grads"])
    record_dir.mkdir(parents=True, exist_ok=True)
    torch.save(record, record_dir / f"process_{os.environ['RANK']}.pt")
