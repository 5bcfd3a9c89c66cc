"""main.py end to end on the offline digits, and its refusals of bad input.

The full run and one refusal (a missing dataset, offline) go through `python main.py` in a
subprocess; the other refusals call `main.main(main.parse_args(argv))` in this process, the same
code path without the ~8 s of interpreter and library start-up each subprocess costs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import main
from fixtures import offline_env

REPO_ROOT = Path(__file__).resolve().parents[1]

KEY = "main_Digits_even_PU_0.1_ep1_steps2_42"     # QUICK's overrides tag the key
QUICK = ["--config_name", "Digits_even", "--num_epochs", "1", "--num_inference_steps", "2"]
DIGITS_SIZE = 16
GRID_SIDE = 8 * DIGITS_SIZE + 9 * 2     # torchvision's save_image: 8 images a row, 2 px padding around each
USAGE_EXIT = 2


def run_main(args, timeout=300):
    """`python main.py args` from the repository root, one thread, no network."""
    env = offline_env({**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
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


def load_diagnosis():
    """analysis/error_by_group.py as a module (analysis/ is a folder of scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("error_by_group", REPO_ROOT / "analysis" / "error_by_group.py")
    diagnosis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnosis)
    return diagnosis


def test_error_by_group_diagnoses_a_finished_run(finished_run):
    """analysis/error_by_group.py rebuilds the run's split and reports finite errors per group."""
    import math
    diagnosis = load_diagnosis()
    out, _ = finished_run
    result = diagnosis.errors_by_group(out / "checkpoints" / KEY)
    assert result["algorithm"] == "PU" and result["seed"] == 42
    assert list(result["by_timestep"]) == list(diagnosis.TIMESTEPS)
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
