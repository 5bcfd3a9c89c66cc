"""main.py end to end on the offline digits, and its refusals of bad input.

The full run and one refusal (a missing dataset, offline) go through `python main.py` in a
subprocess; the other refusals call `main.main(main.parse_args(argv))` in this process, the same
code path without the ~8 s of interpreter and library start-up each subprocess costs.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import losses.objectives
import main
import utils.training
from configs import get_config
from fixtures import cpu_env, offline_env
from losses import pu_risks
from utils.data import load_dataset, load_pu_data

REPO_ROOT = Path(__file__).resolve().parents[1]

KEY = "main_Digits_even_PU_0.1_ep1_steps2_42"     # QUICK's overrides tag the key
QUICK = ["--config_name", "Digits_even", "--num_epochs", "1", "--num_inference_steps", "2"]
DIGITS_SIZE = 16
GRID_SIDE = 8 * DIGITS_SIZE + 9 * 2     # torchvision's save_image: 8 images a row, 2 px padding around each
USAGE_EXIT = 2


def run_main(args, timeout=180):
    """`python main.py args` from the repository root, one thread, no network, no GPU."""
    env = cpu_env(offline_env({**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}))
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def nothing_written(out):
    return not (out / "checkpoints").exists() and not (out / "outputs").exists()


def error_lines(stderr):
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One quick PU run on the digits: (output dir, completed process)."""
    out = tmp_path_factory.mktemp("run")
    proc = run_main([*QUICK, "--num_eval_samples", "0", "--output_dir", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_run_saves_a_loadable_pipeline_and_its_config(finished_run):
    from diffusers import DDPMPipeline, DDPMScheduler
    out, _ = finished_run
    checkpoint = out / "checkpoints" / KEY
    pipeline = DDPMPipeline.from_pretrained(checkpoint)
    assert pipeline.unet.config.sample_size == DIGITS_SIZE
    assert isinstance(pipeline.scheduler, DDPMScheduler)
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, DIGITS_SIZE, DIGITS_SIZE, 3)

    record = json.loads((checkpoint / "run_config.json").read_text())
    assert record["key"] == KEY
    assert (record["algorithm"], record["beta"], record["seed"]) == ("PU", 0.1, 42)
    assert record["config"]["dataset"] == "Digits"
    assert record["config"]["num_epochs"] == 1 and record["config"]["num_inference_steps"] == 2
    assert record["config"]["batch_size"] == 32         # not overridden: the config's own
    assert record["split"] == dict(n_u_normal=700, n_u_sensitive=70, n_s=70, n_test=145)


def test_run_saves_an_8x8_grid(finished_run):
    out, _ = finished_run
    with Image.open(out / "outputs" / "images" / f"{KEY}.png") as grid:
        assert grid.size == (GRID_SIDE, GRID_SIDE)
        assert len(set(grid.convert("L").getdata())) > 10, "the grid holds samples, not a blank image"


def test_the_library_runs_an_experiment_without_a_command_line(finished_run, tmp_path):
    """RunRequest and EvalOptions are all a caller needs: no argparse, and main.py's weights bit for bit."""
    from diffusers import DDPMPipeline
    from safetensors.torch import load_file

    from models import build_noise_scheduler, build_unet
    from utils.evaluation import EvalOptions
    from utils.experiment import run_pixel_experiment
    from utils.run import Run, RunRequest
    from utils.seeding import seed_everything
    request = RunRequest(seed=42, overrides=dict(num_epochs=1, num_inference_steps=2), output_dir=str(tmp_path))
    run = Run.resolve(request, "main", "Digits_even", get_config("Digits_even"))
    assert run.key == KEY
    seed_everything(run.seed)
    run_pixel_experiment(run, build_unet(run.config), build_noise_scheduler(run.config), DDPMPipeline,
                         EvalOptions(num_samples=0))
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    ours = load_file(tmp_path / "checkpoints" / KEY / weights)
    theirs = load_file(finished_run[0] / "checkpoints" / KEY / weights)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert json.loads((tmp_path / "checkpoints" / KEY / "run_config.json").read_text())["args"] == {}


def test_run_logs_loss_and_pu_risks_to_tensorboard(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _ = finished_run
    events = list((out / "outputs" / "logs").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].parent.name == KEY
    logged = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"train/loss", "train/R_S", "train/R_N"} <= set(logged)


def run_in_process(argv, capsys):
    """main.py's main on `argv` in this process: (exit code, the stderr lines that say error)."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(main.parse_args([str(a) for a in argv]))
    return exit_info.value.code, error_lines(capsys.readouterr().err)


def test_finished_run_is_not_overwritten(finished_run, capsys):
    out, _ = finished_run
    record = out / "checkpoints" / KEY / "run_config.json"
    grid = out / "outputs" / "images" / f"{KEY}.png"
    before = (record.stat().st_mtime_ns, grid.stat().st_mtime_ns)
    code, lines = run_in_process([*QUICK, "--output_dir", out], capsys)
    assert code == USAGE_EXIT
    (line,) = lines
    assert line.startswith("error:") and "holds a finished run" in line and "--overwrite" in line
    assert (record.stat().st_mtime_ns, grid.stat().st_mtime_ns) == before


def test_missing_dataset_exits_2(tmp_path):
    out = tmp_path / "out"
    proc = run_main(["--config_name", "MNIST_even", "--data_dir", tmp_path / "empty", "--output_dir", out])
    assert proc.returncode == USAGE_EXIT, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: MNIST is not in") and "datasets/README.md" in line
    assert "Traceback" not in proc.stderr
    assert nothing_written(out)


BAD_ARGS = {
    "unknown config": (["--config_name", "MNIST_all"], "--config_name: invalid choice"),
    "unknown algorithm": (["--config_name", "Digits_even", "--algorithm", "nnPU"], "--algorithm: invalid choice"),
    "beta 1.0": (["--config_name", "Digits_even", "--beta", "1.0"], "beta must be in [0, 1)"),
    "beta -0.1": (["--config_name", "Digits_even", "--beta", "-0.1"], "beta must be in [0, 1)"),
    "zero epochs": (["--config_name", "Digits_even", "--num_epochs", "0"], "--num_epochs: must be a positive"),
    "negative batch": (["--config_name", "Digits_even", "--batch_size", "-1"], "--batch_size: must be a positive"),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_arguments_exit_2(case, tmp_path, capsys):
    argv, message = BAD_ARGS[case]
    out = tmp_path / "out"
    code, lines = run_in_process([*argv, "--output_dir", out], capsys)
    assert code == USAGE_EXIT
    (line,) = lines     # argparse's usage lines, then this one
    assert "error: argument" in line and message in line
    assert nothing_written(out)


def test_more_images_than_a_class_holds_exits_2(data_root, tmp_path, capsys):
    """MNIST_even asks for 25000 normal images; the tiny MNIST holds 60."""
    root, _ = data_root
    out = tmp_path / "out"
    code, lines = run_in_process(["--config_name", "MNIST_even", "--data_dir", root, "--output_dir", out], capsys)
    assert code == USAGE_EXIT
    (line,) = lines
    assert line.startswith("error: asked for 25000 normal images") and "holds only 60" in line
    assert nothing_written(out)


def load_diagnosis(name="error_by_group"):
    """analysis/{name}.py as a module (analysis/ is a folder of scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "analysis" / f"{name}.py")
    diagnosis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnosis)
    return diagnosis


def test_training_mixture_gives_the_true_shares_of_U_and_the_class_classifiers(tmp_path):
    config = get_config("Digits_even")
    shares, n_u = load_diagnosis("training_mixture").mixture("Digits_even", 0, "datasets", tmp_path)
    assert n_u == config.n_u_normal + config.n_u_sensitive
    true = {c: t for c, (t, _) in shares.items()}
    assert sum(true.values()) == pytest.approx(1.0) and sum(s for _, s in shares.values()) == pytest.approx(1.0)
    assert sum(true[c] for c in (1, 3, 5, 7, 9)) * n_u == pytest.approx(config.n_u_sensitive)
    # The class classifier sees real train images about as they are.
    assert max(abs(t - s) for t, s in shares.values()) < 0.05


@pytest.mark.parametrize("pool, num_images, n_reference", [("train", 200, 145), ("test", 50, 72)])
def test_fd_by_sensitive_share_measures_real_mixtures_against_normal_test_images(pool, num_images, n_reference,
                                                                                tmp_path, capsys):
    script = load_diagnosis("fd_by_sensitive_share")
    measures, reference = script.measures_at_shares("Digits_even", [0.0, 0.5], num_images=num_images, draws=2,
                                                    seed=0, data_dir="datasets", output_dir=tmp_path, pool=pool)
    # train: every normal test image (Digits_even's n_test); test: half of them, the other half drawn from.
    assert reference == n_reference
    assert list(measures) == [0.0, 0.5] and all(len(draws) == 2 for draws in measures.values())
    (fd_0, precision_0, _), (fd_half, precision_half, _) = (np.mean(measures[s], axis=0) for s in (0.0, 0.5))
    # Real normal images sit near the normal-only reference; half of them sensitive, far from it.
    assert fd_0 < fd_half / 3 and precision_half < precision_0
    argv = ["Digits_even", "--shares", "0", "0.5", "--num_images", str(num_images), "--draws", "2", "--pool", pool,
            "--output_dir", str(tmp_path)]
    script.main(script.parse_args(argv))
    assert f"against {n_reference} normal test images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:      # more images than the pool holds
        script.main(script.parse_args([*argv, "--num_images", "5000"]))
    assert refused.value.code == 2 and f"the {pool} pool's" in capsys.readouterr().err


def test_error_by_group_diagnoses_a_finished_run(finished_run, tmp_path, capsys):
    """analysis/error_by_group.py rebuilds the run's split and reports finite errors per group."""
    diagnosis = load_diagnosis()
    out, _ = finished_run
    diagnosis.main(diagnosis.parse_args([str(out / "checkpoints" / KEY), "--json", str(tmp_path / "errors.json")]))
    printed = capsys.readouterr().out
    (result,) = json.loads((tmp_path / "errors.json").read_text())
    assert f"{KEY} (PU, beta 0.1, seed 42)" in printed
    assert f"| {diagnosis.TIMESTEPS[0]} | " in printed and math.isfinite(result["R_N_at_true_prior"])
    assert result["algorithm"] == "PU" and result["seed"] == 42
    assert list(result["by_timestep"]) == [str(t) for t in diagnosis.TIMESTEPS]      # JSON keys are text
    for groups in result["by_timestep"].values():
        assert set(groups) == {"S", "U_sensitive", "U_normal"}
        for g in groups.values():
            assert math.isfinite(g["mean_L"]) and g["mean_L"] > 0
            assert 0.0 <= g["share_bounded"] <= 1.0
            assert math.isfinite(g["mean_slope_lS"]) and g["mean_slope_lS"] >= 0.0


def test_bounded_term_slope_is_the_derivative_of_l_S():
    """The slope the diagnosis reports is |dl_S/dL| = exp(-L) / (1 - exp(-L) + 1e-6): near 1 at
    L = 0.7, near exp(-L) for large L."""
    diagnosis = load_diagnosis()
    L = torch.tensor([0.7, 5.0, 20.0], dtype=torch.float64)
    expected = torch.exp(-L) / (1 - torch.exp(-L) + 1e-6)
    assert torch.allclose(diagnosis.bounded_term_slope(L), expected, rtol=1e-9)


class NoiseOracle(torch.nn.Module):
    """A stand-in UNet that knows the clean images: it predicts the true noise exactly, plus a constant
    `offsets[i]` on every element of image i, so image i's error L is offsets[i]**2 * (its elements)
    at every timestep. It takes the training set in the split's order, in consecutive batches of any
    size: a cursor tracks where the next batch starts and wraps at the end of the set."""

    def __init__(self, scheduler, images, offsets):
        super().__init__()
        self.alphas_cumprod, self.images, self.offsets = scheduler.alphas_cumprod, images, offsets
        self.cursor = 0

    def forward(self, noisy, t):
        rows = slice(self.cursor, self.cursor + len(noisy))
        assert noisy.shape[1:] == self.images.shape[1:] and rows.stop <= len(self.images)
        self.cursor = rows.stop % len(self.images)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = (noisy - abar.sqrt() * self.images[rows]) / (1 - abar).sqrt()
        return SimpleNamespace(sample=noise + self.offsets[rows].view(-1, 1, 1, 1))


def test_error_by_group_reports_known_errors_per_group(finished_run, monkeypatch):
    """A model whose error is 768 on S, 48 on the sensitive images in U and 1.92 on the normal ones must
    be reported so. The truth here comes from the labels and the images' classes in the dataset, not
    from the order of the split that errors_by_group relies on, so two groups swapped fail."""
    diagnosis = load_diagnosis()
    out, _ = finished_run
    checkpoint = out / "checkpoints" / KEY
    record = json.loads((checkpoint / "run_config.json").read_text())
    config = get_config(record["config_name"])
    data = load_pu_data(config, None, record["seed"])
    _, classes = load_dataset(config, None, train=True)
    normal = torch.as_tensor(np.isin(classes[data.split.indices], config.normal_classes))
    labeled = data.train.labels == 1
    groups = {"S": labeled, "U_sensitive": ~labeled & ~normal, "U_normal": ~labeled & normal}
    offset = {"S": 1.0, "U_sensitive": 0.25, "U_normal": 0.05}
    elements = data.train.images[0].numel()                           # 3 x 16 x 16
    expected_L = {g: offset[g] ** 2 * elements for g in groups}       # 768, 48, 1.92
    offsets = sum(offset[g] * m.float() for g, m in groups.items())
    assert all(m.sum() > 0 for m in groups.values()) and (offsets > 0).all()

    load_checkpoint_model = diagnosis.load_checkpoint_model

    def oracle(path, device):
        _, scheduler = load_checkpoint_model(path, device)
        return NoiseOracle(scheduler, data.train.images, offsets), scheduler
    monkeypatch.setattr(diagnosis, "load_checkpoint_model", oracle)
    result = diagnosis.errors_by_group(checkpoint)

    for t, reported in result["by_timestep"].items():
        for g, L in expected_L.items():
            assert reported[g]["mean_L"] == pytest.approx(L, rel=1e-3), (t, g)
            assert reported[g]["share_bounded"] == float(L < diagnosis.L_BOUNDED), (t, g)
            slope = math.exp(-L) / (1 - math.exp(-L) + 1e-6)      # |dl_S/dL|
            assert reported[g]["mean_slope_lS"] == pytest.approx(slope, rel=1e-3, abs=1e-12), (t, g)
    L = sum(expected_L[g] * m.float() for g, m in groups.items()).double()
    _, r_n = pu_risks(L, data.train.labels.double(), config.true_prior)
    assert result["R_N_at_true_prior"] == pytest.approx(r_n.item(), rel=1e-3)


# abs (R_S + |R_N|) and nn (-R_N where R_N < 0) differ only by R_S, and only in batches where R_N < 0.
# At the digits' scale (L summed over 768 elements, about 10^3 untrained) exp(-L) underflows, so R_S
# has no gradient and the two take bit-identical steps. The test scales L by 1e-3 (l_S's slope is then
# near 1) and sets beta to 0.99 with a large S, which makes R_N negative in some batches.
NN_ARGS = ["--config_name", "Digits_even", "--n_u_normal", "40", "--n_u_sensitive", "4", "--n_s", "20",
           "--num_epochs", "1", "--batch_size", "16", "--num_inference_steps", "1", "--num_eval_samples", "0",
           "--seed", "0", "--beta", "0.99"]
NN_KEY = "main_Digits_even_PU_0.99_nUn40_nUs4_nS20_ep1_bs16_steps1{}_0"
L_SCALE = 1e-3


def test_pu_correction_nn_changes_what_main_trains(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    error, risks = utils.training.denoising_error, losses.objectives.pu_risks
    negative = []

    def recorded_risks(L, y, beta):
        r_s, r_n = risks(L, y, beta)
        negative.append(bool(r_n < 0))
        return r_s, r_n
    monkeypatch.setattr(utils.training, "denoising_error", lambda *a, **k: error(*a, **k) * L_SCALE)
    monkeypatch.setattr(losses.objectives, "pu_risks", recorded_risks)

    weights = {}
    for correction, tag in (("abs", ""), ("nn", "_nn")):
        out = tmp_path / correction
        main.main(main.parse_args([*NN_ARGS, "--pu_correction", correction, "--output_dir", str(out)]))
        checkpoint = out / "checkpoints" / NN_KEY.format(tag)
        record = json.loads((checkpoint / "run_config.json").read_text())
        assert record["pu_correction"] == correction and record["key"] == checkpoint.name
        assert ("nn" in record["key_tags"]) == (correction == "nn")
        weights[correction] = load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(negative), "R_N never went negative: the corrections had nothing to correct"
    assert not all(torch.equal(weights["abs"][k], weights["nn"][k]) for k in weights["abs"])
