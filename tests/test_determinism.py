"""Same seed, same machine (CPU): the same PU split, the same losses, the same weights and sample grid.

And a different seed changes each of them, so the equalities below are not vacuous.
"""
import numpy as np
import torch
from safetensors.torch import load_file

import main
from configs import get_config
from utils.data import load_dataset, pu_split

ARGS = ["--config_name", "Digits_even", "--n_u_normal", "200", "--n_u_sensitive", "20", "--n_s", "20",
        "--num_epochs", "1", "--batch_size", "32", "--num_inference_steps", "2", "--num_eval_samples", "0"]


def test_pu_split_depends_only_on_the_seed():
    config = get_config("Digits_even")
    _, targets = load_dataset(config, None, train=True)
    torch.manual_seed(1)
    np.random.seed(1)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1]
    first = pu_split(targets, config, 0)
    # The split leaves the global generators as they were: seeding stays seed_everything's job.
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(numpy_state, np.random.get_state()[1])
    torch.manual_seed(2)                   # the global generators differ, the split does not: it has its own
    np.random.seed(2)
    again, other = pu_split(targets, config, 0), pu_split(targets, config, 1)
    assert np.array_equal(first.indices, again.indices) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.indices, other.indices)


def run(out, seed, capsys):
    """main.py in this process: (epoch lines, UNet weights, grid PNG bytes)."""
    main.main(main.parse_args([*ARGS, "--seed", str(seed), "--output_dir", str(out)]))
    key = f"main_Digits_even_PU_0.1_nUn200_nUs20_nS20_ep1_steps2_{seed}"
    epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    weights = load_file(out / "checkpoints" / key / "unet" / "diffusion_pytorch_model.safetensors")
    return epochs, weights, (out / "outputs" / "images" / f"{key}.png").read_bytes()


def test_same_seed_same_losses_weights_and_grid(tmp_path, capsys):
    # Runs in one process: the second starts from whatever RNG state the first left, so only
    # seeding (of the initial weights too) makes them equal.
    epochs, weights, grid = run(tmp_path / "a", 0, capsys)
    epochs_again, weights_again, grid_again = run(tmp_path / "b", 0, capsys)
    assert epochs and epochs == epochs_again                  # loss, R_S, R_N, n_sensitive of the epoch
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert grid == grid_again

    epochs_other, weights_other, grid_other = run(tmp_path / "c", 1, capsys)
    assert epochs_other != epochs
    assert not all(torch.equal(weights[k], weights_other[k]) for k in weights)
    assert grid_other != grid
