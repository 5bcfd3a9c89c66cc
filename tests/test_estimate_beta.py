"""The class prior from U and S on real images (utils/prior_data.py) and estimate-beta.py.

Everything runs offline on scikit-learn's bundled digits (the Digits_even config with small counts,
a few seconds per estimate on one core) or on a tiny random CLIP (tests/tiny_models.py) for the
Stable Diffusion folders. Scripts run in-process through their `main`, as `python <script>` would.
"""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from configs import get_config, with_overrides
from fixtures import write_coloured_sd_folder
from tiny_models import load_script, save_tiny_clip
from utils.data import TensorPUDataset, dataset_spec, load_pu_data
from utils.errors import UsageError
from utils.prior import DEFAULT_DELTA, DEFAULT_FOLDS, best_bin_estimate
from utils.prior_data import estimate_prior_for_images, estimate_prior_for_sd

CONFIG_NAME = "Digits_even"
# 300 normal + 60 sensitive in U (beta* = 1/6), 60 in S: about 3 s per estimate on one busy core.
COUNTS = dict(n_u_normal=300, n_u_sensitive=60, n_s=60)
FAST_EPOCHS = 5            # the digits recipe's 10 halved: 0.15-0.21 on seeds 0-3 against the truth 1/6
# A DKW-sized tolerance. With a pure top bin holding a share q_S of S, BBE's error is at most about
# (e_U + beta e_S) / q_S with e_G = sqrt(log(4 / delta) / (2 n_G)); at n_U = 360, n_S = 60, beta = 1/6
# and q_S ~ 0.8 that is (0.072 + 0.167 x 0.175) / 0.8 = 0.13 with probability 0.9.
TOLERANCE = 0.13
# The script's end-to-end runs check plumbing, not accuracy: the fewest images that 5 folds allow.
TINY_COUNTS = ["--n_u_normal", "100", "--n_u_sensitive", "10", "--n_s", "10"]
RECORD_KEYS = {"estimate", "interval", "method", "delta", "n_u", "n_s", "threshold", "q_u", "q_s", "warning", "folds"}


@pytest.fixture(scope="module")
def script():
    return load_script("estimate-beta.py")


def digits(seed=0, **counts):
    config = with_overrides(get_config(CONFIG_NAME), **{**COUNTS, **counts})
    return config, load_pu_data(config, "unused: the digits ship with scikit-learn", seed).train


def fast_recipe(epochs=FAST_EPOCHS):
    """The digits recipe with fewer epochs: a copy, the dataset table stays as it is."""
    return replace(dataset_spec("Digits").classifier, epochs=epochs)


def test_image_route_recovers_the_known_prior():
    config, train = digits(seed=0)
    estimate = estimate_prior_for_images(train, config, "cpu", seed=0, recipe=fast_recipe())
    truth = config.true_prior
    assert truth == pytest.approx(1 / 6)
    assert estimate.lower <= truth <= estimate.upper
    assert abs(estimate.beta - truth) <= TOLERANCE
    assert estimate.warning is None
    assert (estimate.n_u, estimate.n_s, estimate.folds, estimate.delta) == (360, 60, DEFAULT_FOLDS, DEFAULT_DELTA)
    assert "cnn" in estimate.method
    assert dataset_spec("Digits").classifier.epochs == 10     # the global recipe was not touched


def test_image_route_follows_the_seed():
    config, train = digits(seed=0, n_u_normal=100, n_u_sensitive=10, n_s=10)

    def estimate(seed):
        return estimate_prior_for_images(train, config, "cpu", seed=seed, recipe=fast_recipe(epochs=1))
    assert estimate(0) == estimate(0)
    assert estimate(0).threshold != estimate(1).threshold


def test_to_record_is_json_ready():
    estimate = best_bin_estimate(np.repeat([0.1, 0.2, 0.3, 0.4, 0.8, 0.96], 100), np.repeat([0.8, 0.85, 0.95], 100))
    record = json.loads(json.dumps(estimate.to_record()))
    assert set(record) == RECORD_KEYS
    assert record["estimate"] == pytest.approx(0.25)
    assert record["interval"] == [pytest.approx(estimate.lower), pytest.approx(estimate.upper)]
    assert (record["n_u"], record["n_s"], record["folds"], record["warning"]) == (600, 300, None, None)


def test_library_rejects_empty_s_and_u_smaller_than_s():
    images = torch.zeros(20, 3, 16, 16)
    config = get_config(CONFIG_NAME)
    with pytest.raises(UsageError, match="S is empty"):
        estimate_prior_for_images(TensorPUDataset(images, torch.zeros(20, dtype=torch.int64)), config, "cpu")
    more_s = torch.tensor([0] * 5 + [1] * 15)
    with pytest.raises(UsageError, match="U holds 5 images and S 15.*swapped"):
        estimate_prior_for_images(TensorPUDataset(images, more_s), config, "cpu")
    with pytest.raises(UsageError, match="U holds 2 images and S 6"):
        estimate_prior_for_sd({0: ["u"] * 2, 1: ["s"] * 6}, clip=None, device="cpu")


def test_script_prints_one_json_object(script, capsys, tmp_path):
    script.main(script.parse_args(["--config_name", CONFIG_NAME, *TINY_COUNTS, "--seed", "3",
                                   "--data_dir", str(tmp_path), "--json"]))
    out = capsys.readouterr().out.strip()
    record = json.loads(out)                  # the whole of stdout is one JSON object
    assert set(record) == RECORD_KEYS | {"config_name", "seed", "true_prior"}
    assert (record["config_name"], record["seed"], record["n_u"], record["n_s"]) == (CONFIG_NAME, 3, 110, 10)
    lower, upper = record["interval"]
    assert 0.0 <= lower <= record["estimate"] <= upper <= 1.0
    assert record["true_prior"] == pytest.approx(1 / 11)
    assert (record["folds"], record["delta"]) == (DEFAULT_FOLDS, DEFAULT_DELTA)
    assert "cnn" in record["method"]


@pytest.mark.usefixtures("offline")
def test_script_on_sd_folders(script, capsys, tmp_path):
    """SD's layout (64 + 16 in U, 20 in S: beta* = 0.2) through a tiny random CLIP's image features."""
    data = write_coloured_sd_folder(tmp_path / "data", 64, 16, 20)
    clip = save_tiny_clip(tmp_path / "clip")
    args = ["--config_name", "SD", "--data_dir", str(data), "--clip_model", str(clip), "--seed", "0"]
    script.main(script.parse_args(args + ["--json"]))
    record = json.loads(capsys.readouterr().out)     # the folder check's note went to stderr
    assert (record["n_u"], record["n_s"], record["true_prior"]) == (80, 20, None)
    assert "CLIP" in record["method"] and "logistic" in record["method"]
    assert record["interval"][0] <= 0.2 <= record["interval"][1]   # colours this far apart separate

    script.main(script.parse_args(args))
    out = capsys.readouterr().out
    assert "SD (seed 0): beta = " in out and "90% interval [" in out


def exit_code_and_error(script, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        script.main(script.parse_args(argv))
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, messages", [
    # U (10 images) smaller than S (60): read off U, beta needs U at least as large.
    (["--config_name", CONFIG_NAME, "--n_u_normal", "10", "--n_u_sensitive", "0", "--n_s", "60"],
     ["U holds 10 images and S 60", "not swapped"]),
    (["--config_name", CONFIG_NAME, "--n_s", "3"], ["fewer than the 5 cross-fitting folds"]),
    # An empty S never reaches the estimator: argparse's positive_int rejects it.
    (["--config_name", CONFIG_NAME, "--n_s", "0"], ["--n_s: must be a positive integer, got 0"]),
    (["--config_name", "MNIST_evens"], ["invalid choice: 'MNIST_evens' (choose from 'MNIST_even'", "'SD')"]),
    (["--config_name", "SD", "--n_s", "5"], ["--n_s: only image configs take data counts"]),
])
def test_bad_input_exits_2(script, capsys, tmp_path, argv, messages):
    code, err = exit_code_and_error(script, capsys, argv + ["--data_dir", str(tmp_path)])
    assert code == 2
    for message in messages:
        assert message in err


def test_missing_sd_folder_exits_2(script, capsys, tmp_path):
    code, err = exit_code_and_error(script, capsys, ["--config_name", "SD", "--data_dir", str(tmp_path / "none")])
    assert code == 2 and "0_unlabeled is missing" in err
