"""Diagnose what a trained model learned on each part of its PU data: the denoising error L by group.

    python analysis/error_by_group.py runs/sweep/checkpoints/main_Digits_even_PU_0.1_0 [...more] [--json FILE]

For each checkpoint, rebuilds the run's PU split (same seed and counts), and computes the
per-sample error L (DESIGN section 2, summed over elements) at fixed timesteps with fixed noise for
U-normal, U-sensitive and S images. Prints, per group and timestep, the mean L, the share of
samples with L < L_BOUNDED, and the mean slope |dl_S/dL| of the bounded term: how hard l_S pushes a
sample's error up, against a slope of 1 for the L term of a U sample (l_S is flat, its slope near
exp(-L), once L is large). With --json, also the PU risks R_S, R_N over the whole training set at the
config's true prior. A
model that learned to avoid sensitive images shows a higher L on S and U-sensitive than on U-normal.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from losses import bounded_sensitive_loss, denoising_error, pu_risks
from utils.data import load_pu_data
from utils.evaluation import load_checkpoint_model, read_checkpoint_run
from utils.errors import exits_on_usage_error
from utils.files import write_json_atomically

TIMESTEPS = (10, 200, 500, 800)
L_BOUNDED = 10.0        # exp(-10) = 4.5e-5: below this error l_S still pushes noticeably
NOISE_SEED = 1234
CHUNK = 256             # images per forward pass


def bounded_term_slope(L):
    """|dl_S/dL| per sample, from autograd through the objective's own l_S."""
    with torch.enable_grad():
        L = L.detach().requires_grad_()
        bounded_sensitive_loss(L).sum().backward()
    return L.grad.abs()


@torch.no_grad()
def errors_by_group(checkpoint):
    run, record = read_checkpoint_run(checkpoint, root=".")
    config = run.config
    unet, scheduler = load_checkpoint_model(checkpoint, "cpu")
    data = load_pu_data(config, record["args"].get("data_dir", "datasets"), record["seed"])
    x, y = data.train.images, data.train.labels
    groups = {"S": torch.arange(len(y)) < config.n_s,
              "U_sensitive": (torch.arange(len(y)) >= config.n_s) & (torch.arange(len(y)) < config.n_sensitive_drawn),
              "U_normal": torch.arange(len(y)) >= config.n_sensitive_drawn}
    generator = torch.Generator().manual_seed(NOISE_SEED)
    rows = {}
    all_L = []
    for t in TIMESTEPS:
        noise = torch.randn(x.shape, generator=generator)
        # In chunks: one forward pass over a 6,000-image Fashion-MNIST split would hold gigabytes of activations.
        L = torch.cat([denoising_error(unet, scheduler, x[i:i + CHUNK], t=torch.full((len(x[i:i + CHUNK]),), t),
                                       noise=noise[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])
        all_L.append(L)
        slope = bounded_term_slope(L)
        rows[t] = {g: dict(mean_L=L[m].mean().item(), share_bounded=(L[m] < L_BOUNDED).float().mean().item(),
                           mean_slope_lS=slope[m].mean().item())
                   for g, m in groups.items()}
    r_s, r_n = pu_risks(torch.stack(all_L).mean(0), y.float(), config.true_prior)
    return dict(checkpoint=str(checkpoint), algorithm=record["algorithm"], beta=record["beta"], seed=record["seed"],
                by_timestep=rows, R_S_at_true_prior=r_s.item(), R_N_at_true_prior=r_n.item())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="run folders (checkpoints/{key}) of finished runs")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    results = [errors_by_group(c) for c in args.checkpoints]
    for r in results:
        print(f"\n{r['checkpoint']} ({r['algorithm']}, beta {r['beta']}, seed {r['seed']})")
        print("| t | " + " | ".join(f"{g} mean L (share L<{L_BOUNDED:g}; mean |dl_S/dL|)"
                                    for g in r["by_timestep"][TIMESTEPS[0]]) + " |")
        print("|---" * 4 + "|")
        for t, groups in r["by_timestep"].items():
            print(f"| {t} | " + " | ".join(f"{v['mean_L']:.1f} ({v['share_bounded']:.2f}; {v['mean_slope_lS']:.2g})"
                                           for v in groups.values()) + " |")
    if args.json:
        write_json_atomically(args.json, results)


if __name__ == "__main__":
    main(parse_args())
