"""A catalogue of bad inputs to main.py, main-ft.py, main-sd.py and evaluate.py.

Each must end the script with one line `error: ...` naming the problem and the fix, exit code 2,
and no file written or changed. The one accepted case, --beta with a non-PU algorithm, must say
that beta is recorded as 0.0 and record it so. (The refusals of unknown configs and algorithms,
beta out of range, missing datasets, too many images and bad counts are in test_main.py; missing
or empty SD folders, non-image files and broken pretrained models in test_sd.py and
test_finetune.py; a fresh start over an unfinished run's training states in test_resume.py.)
All scripts run in this process, through `main(parse_args(argv))`.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import refused, write_cifar10
from tiny_models import load_script, save_tiny_ddpm, save_tiny_stable_diffusion
from utils.checkpointing import TRAINING_STATE_FILE, list_checkpoints

DIGITS = ["--config_name", "Digits_even", "--n_u_normal", "200", "--n_u_sensitive", "20", "--n_s", "20",
          "--num_epochs", "1", "--batch_size", "32", "--num_inference_steps", "2", "--num_eval_samples", "0"]
DIGITS_TAGS = "nUn200_nUs20_nS20_ep1_steps2"     # the key tags of the overrides in DIGITS
KEY = f"main_Digits_even_Unsupervised_0.0_{DIGITS_TAGS}_42"
CIFAR_TAGS = "nUn8_nUs1_nS2_nT4"
CIFAR_SIZE = 32
CIFAR = ["--config_name", "CIFAR10_vehicles", "--n_u_normal", "8", "--n_u_sensitive", "1", "--n_s", "2",
         "--n_test", "4", "--num_eval_samples", "0"]
SD = ["--num_eval_samples", "0", "--resolution", "16", "--num_epochs", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished digits run (Unsupervised) with training states every 4 steps."""
    root = tmp_path_factory.mktemp("finished")
    main = load_script("main.py")
    main.main(main.parse_args([*DIGITS, "--algorithm", "Unsupervised", "--output_dir", str(root),
                               "--checkpointing_steps", "4"]))
    return root


@pytest.fixture
def states(finished, tmp_path):
    """A copy of the finished run's training states (not its pipeline) under tmp_path/out."""
    out = tmp_path / "out"
    shutil.copytree(finished / "checkpoints" / f"{KEY}.state", out / "checkpoints" / f"{KEY}.state")
    return out, out / "checkpoints" / f"{KEY}.state"


@pytest.fixture(scope="module")
def sd_pipeline(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


def sd_folder(root):
    """A valid main-sd.py data folder: 4 unlabeled and 2 positive PNGs."""
    rng = np.random.default_rng(0)
    for folder, n in (("0_unlabeled", 4), ("1_positive", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(root / folder / f"{i:03d}.png")
    return root


def unwritable_folder(tmp_path):
    """A folder this process cannot write to: a 0o555 one, or (root ignores modes) a read-only mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    if Path("/proc/sys").is_dir() and not os.access("/proc/sys", os.W_OK):
        return Path("/proc/sys")
    pytest.skip("running as root with no read-only folder at hand")


# --- beta with a non-PU algorithm: accepted, said, recorded as 0.0 -------------------------------

def test_beta_with_a_non_pu_algorithm_is_recorded_as_zero_and_said(tmp_path, capsys):
    main = load_script("main.py")
    main.main(main.parse_args([*DIGITS, "--algorithm", "Supervised", "--beta", "0.3", "--output_dir",
                               str(tmp_path)]))
    assert "note: --beta 0.3 is used by PU only; Supervised records beta as 0.0" in capsys.readouterr().out
    checkpoint = tmp_path / "checkpoints" / f"main_Digits_even_Supervised_0.0_{DIGITS_TAGS}_42"
    record = json.loads((checkpoint / "run_config.json").read_text())
    assert record["beta"] == 0.0


# --- main.py: resuming ----------------------------------------------------------------------------

def test_resume_path_that_does_not_exist(tmp_path, capsys):
    line = refused("main.py", [*DIGITS, "--output_dir", tmp_path / "out", "--resume_from_checkpoint",
                               tmp_path / "nowhere"], capsys, tmp_path)
    assert "nowhere does not exist" in line and "'latest'" in line


def test_resume_from_a_finished_pipeline_rather_than_a_training_state(finished, tmp_path, capsys):
    line = refused("main.py", [*DIGITS, "--output_dir", tmp_path / "out", "--resume_from_checkpoint",
                               finished / "checkpoints" / KEY], capsys, tmp_path)
    assert "is not a training state" in line and "not a finished pipeline" in line


def test_resume_from_another_runs_training_state(finished, tmp_path, capsys):
    state = finished / "checkpoints" / f"{KEY}.state" / "checkpoint-4"
    line = refused("main.py", [*DIGITS, "--algorithm", "PU", "--output_dir", tmp_path / "out",
                               "--resume_from_checkpoint", state], capsys, tmp_path)
    assert f"is a training state of run {KEY}, not of main_Digits_even_PU_0.1_{DIGITS_TAGS}_42" in line


def test_resume_with_other_settings(states, capsys):
    # Every option that changes training also changes the key, so a state under the same key with
    # other settings comes from another version of a config: its record says so.
    out, state_dir = states
    for state in list_checkpoints(state_dir):
        record = json.loads((state / TRAINING_STATE_FILE).read_text())
        record["settings"]["adam_weight_decay"] = 0.5
        (state / TRAINING_STATE_FILE).write_text(json.dumps(record))
    argv = [*DIGITS, "--algorithm", "Unsupervised", "--output_dir", out, "--resume_from_checkpoint", "latest"]
    line = refused("main.py", argv, capsys, out)
    assert "was made with adam_weight_decay = 0.5, this run has 0.01" in line


def test_resume_from_an_incomplete_training_state(states, capsys):
    out, state_dir = states
    (state_dir / "checkpoint-8" / "optimizer.bin").unlink()
    line = refused("main.py", [*DIGITS, "--algorithm", "Unsupervised", "--output_dir", out,
                               "--resume_from_checkpoint", "latest"], capsys, out)
    assert "checkpoint-8 is incomplete (no optimizer.bin)" in line


def test_resume_from_a_damaged_training_state(states, capsys):
    out, state_dir = states
    weights = state_dir / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    line = refused("main.py", [*DIGITS, "--algorithm", "Unsupervised", "--output_dir", out,
                               "--resume_from_checkpoint", "latest"], capsys, out)
    assert "model.safetensors is damaged" in line


def test_resume_from_a_training_state_that_fails_to_load(states, capsys):
    # Whole enough to pass the cheap checks, it fails in accelerate's load_state, after the data and
    # the model are ready: still nothing written (no TensorBoard log either).
    out, state_dir = states
    optimizer = state_dir / "checkpoint-8" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    line = refused("main.py", [*DIGITS, "--algorithm", "Unsupervised", "--output_dir", out,
                               "--resume_from_checkpoint", "latest"], capsys, out)
    assert "cannot load the training state" in line and "checkpoint-8" in line


def test_zero_checkpoints_to_keep(tmp_path, capsys):
    line = refused("main.py", [*DIGITS, "--output_dir", tmp_path / "out", "--checkpoints_total_limit", "0"],
                   capsys, tmp_path)
    assert "--checkpoints_total_limit: must be a positive integer" in line


# --- main.py: output folder, finished runs, configs, precision, data ------------------------------

def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    line = refused("main.py", [*DIGITS, "--output_dir", tmp_path / "taken" / "out"], capsys, tmp_path)
    assert "taken is a file, not a folder" in line


def test_output_dir_that_cannot_be_written(tmp_path, capsys):
    folder = unwritable_folder(tmp_path)
    line = refused("main.py", [*DIGITS, "--output_dir", folder / "pudm-out"], capsys, tmp_path)
    assert f"cannot write to {folder}" in line


def test_images_of_a_finished_run_are_not_overwritten(finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished / "outputs", out / "outputs")      # the grid, without its pipeline
    line = refused("main.py", [*DIGITS, "--algorithm", "Unsupervised", "--output_dir", out], capsys, out)
    assert f"{KEY}.png holds a finished run" in line and "--overwrite" in line


def test_config_main_py_does_not_train(tmp_path, capsys):
    line = refused("main.py", ["--config_name", "CelebA_male", "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "invalid choice: 'CelebA_male'" in line and "Digits_even" in line


def test_fp16_without_a_gpu(tmp_path, capsys):
    """Every machine: tests/conftest.py hides the GPU from this test as from all but the `gpu` ones."""
    line = refused("main.py", [*DIGITS, "--mixed_precision", "fp16", "--output_dir", tmp_path / "out"],
                   capsys, tmp_path)
    assert "fp16 needs a CUDA GPU" in line


def test_damaged_cifar10_batch_file(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_class=3, test_per_class=1)
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    line = refused("main.py", [*CIFAR, "--data_dir", tmp_path / "data", "--output_dir", tmp_path / "out"],
                   capsys, tmp_path)
    assert "CIFAR10 files in" in line and "are damaged" in line


# --- main-ft.py -------------------------------------------------------------------------------------

def test_fine_tuning_from_a_stable_diffusion_pipeline(cifar, sd_pipeline, tmp_path, capsys):
    line = refused("main-ft.py", [*CIFAR, "--data_dir", cifar, "--pretrained_model", sd_pipeline,
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "StableDiffusionPipeline" in line and "must be a DDPM pipeline" in line


def test_fine_tuning_from_a_training_state(cifar, finished, tmp_path, capsys):
    state = finished / "checkpoints" / f"{KEY}.state" / "checkpoint-4"
    line = refused("main-ft.py", [*CIFAR, "--data_dir", cifar, "--pretrained_model", state,
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "has no model_index.json" in line


def test_fine_tuning_resumed_from_a_main_py_training_state(cifar, finished, tmp_path, capsys):
    state = finished / "checkpoints" / f"{KEY}.state" / "checkpoint-4"
    pretrained = save_tiny_ddpm(tmp_path / "ddpm", sample_size=CIFAR_SIZE)
    line = refused("main-ft.py", [*CIFAR, "--data_dir", cifar, "--pretrained_model", pretrained,
                                  "--output_dir", tmp_path / "out", "--resume_from_checkpoint", state],
                   capsys, tmp_path)
    assert f"is a training state of run {KEY}, not of main_ft_CIFAR10_vehicles_PU_0.1_{CIFAR_TAGS}_42" in line


# --- main-sd.py -------------------------------------------------------------------------------------

def test_truncated_png_in_the_sd_folder(sd_pipeline, tmp_path, capsys):
    data = sd_folder(tmp_path / "data")
    image = data / "0_unlabeled" / "001.png"
    image.write_bytes(image.read_bytes()[:60])          # a valid header, then nothing
    line = refused("main-sd.py", [*SD, "--data_dir", data, "--pretrained_model", sd_pipeline,
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "001.png is not a readable image" in line


def test_sd_pipeline_without_its_scheduler(sd_pipeline, tmp_path, capsys):
    broken = shutil.copytree(sd_pipeline, tmp_path / "broken")
    shutil.rmtree(broken / "scheduler")
    line = refused("main-sd.py", [*SD, "--data_dir", sd_folder(tmp_path / "data"), "--pretrained_model", broken,
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "has no scheduler" in line


def test_sd_from_a_main_py_checkpoint(finished, tmp_path, capsys):
    line = refused("main-sd.py", [*SD, "--data_dir", sd_folder(tmp_path / "data"),
                                  "--pretrained_model", finished / "checkpoints" / KEY,
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "has no vae" in line


def test_sd_data_dir_that_is_a_file(sd_pipeline, tmp_path, capsys):
    (tmp_path / "images.zip").write_bytes(b"PK")
    line = refused("main-sd.py", [*SD, "--data_dir", tmp_path / "images.zip", "--pretrained_model", sd_pipeline,
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "0_unlabeled is missing" in line and "make-sd-data.py" in line


# --- evaluate.py ------------------------------------------------------------------------------------

def test_evaluating_a_training_state_moved_out_of_its_runs_folder(finished, tmp_path, capsys):
    # A state is judged in its run's pipeline, found beside checkpoints/{key}.state/.
    state = shutil.copytree(finished / "checkpoints" / f"{KEY}.state" / "checkpoint-4", tmp_path / "checkpoint-4")
    line = refused("evaluate.py", [state, "--output_dir", tmp_path / "out"], capsys, finished)
    assert "lies outside a checkpoints/{key}.state/ folder" in line and not (tmp_path / "out").exists()


@pytest.fixture
def checkpoint_copy(finished, tmp_path):
    return shutil.copytree(finished / "checkpoints" / KEY, tmp_path / "checkpoints" / KEY)


def test_evaluating_a_checkpoint_with_a_damaged_record(checkpoint_copy, tmp_path, capsys):
    (checkpoint_copy / "run_config.json").write_text("{cut short")
    line = refused("evaluate.py", [checkpoint_copy, "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "run_config.json is unreadable or incomplete" in line


def test_evaluating_a_checkpoint_without_its_unet(checkpoint_copy, tmp_path, capsys):
    shutil.rmtree(checkpoint_copy / "unet")
    line = refused("evaluate.py", [checkpoint_copy, "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "cannot load the pipeline" in line and "damaged" in line


def test_evaluating_a_checkpoint_with_cut_short_weights(checkpoint_copy, tmp_path, capsys):
    weights = checkpoint_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = refused("evaluate.py", [checkpoint_copy, "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "cannot load the pipeline" in line


def test_sd_evaluation_of_a_checkpoint_with_a_damaged_record(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoints" / "main_sd_PU_0.1_42"
    checkpoint.mkdir(parents=True)
    (checkpoint / "run_config.json").write_text("{cut short")
    line = refused("evaluate-sd.py", ["--checkpoint", checkpoint, "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "run_config.json is unreadable or incomplete" in line


def test_evaluating_into_a_file(finished, tmp_path, capsys):
    (tmp_path / "results.txt").write_text("taken")
    line = refused("evaluate.py", [finished / "checkpoints" / KEY, "--output_dir", tmp_path / "results.txt"],
                   capsys, tmp_path)
    assert "results.txt is a file, not a folder" in line
