"""Surviving a killed run: training states, resume to identical weights, and the non-finite guard.

For main.py (a small PU split of the offline digits) and main-ft.py (a tiny pretrained DDPM on tiny
CIFAR10-format data), a run is started in a subprocess, killed with SIGKILL once a training state
exists, and resumed; its final weights and sample grid must equal, bit for bit, those of a run never
stopped (CPU). The uninterrupted and resumed runs call the script's `main` in this process; the
killed one runs with this process's thread count, since CPU kernels sum in a thread-dependent order.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import offline_env, write_cifar10
from tiny_models import load_script, save_tiny_ddpm
from utils.checkpointing import TRAINING_STATE_FILE, list_checkpoints
from utils.errors import DIVERGED_EXIT_CODE, USAGE_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
KILL_TIMEOUT_S = 300


class Case:
    """One script's resume scenario: its arguments, run key, step count and when to kill it."""

    def __init__(self, script, args, key, steps, every, kill_after):
        self.script, self.args, self.key = script, args, key
        self.steps, self.every, self.kill_after = steps, every, kill_after

    def argv(self, out, *extra):
        return [*self.args, "--output_dir", str(out), *extra]

    def run(self, out, *extra):
        module = load_script(self.script)
        module.main(module.parse_args(self.argv(out, *extra)))

    def weights(self, out):
        return load_file(out / "checkpoints" / self.key / "unet" / "diffusion_pytorch_model.safetensors")

    def grid(self, out):
        return (out / "outputs" / "images" / f"{self.key}.png").read_bytes()


DIGITS = Case("main.py", ["--config_name", "Digits_even", "--n_u_normal", "200", "--n_u_sensitive", "20",
                          "--n_s", "20", "--num_epochs", "2", "--batch_size", "32", "--num_inference_steps", "2",
                          "--num_eval_samples", "0", "--seed", "0"],
              key="main_Digits_even_PU_0.1_nUn200_nUs20_nS20_ep2_steps2_0", steps=16, every=3, kill_after=6)   # 2 epochs of 8 batches


def run_killed(case, out, *extra):
    """Start `case` in a subprocess and SIGKILL it once checkpoint-{kill_after} is complete."""
    state_dir = out / "checkpoints" / f"{case.key}.state"
    env = offline_env({**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"})
    proc = subprocess.Popen([sys.executable, case.script, *case.argv(out, *extra)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + KILL_TIMEOUT_S
    while not (state_dir / f"checkpoint-{case.kill_after}" / TRAINING_STATE_FILE).exists():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no training state appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return state_dir


def check_kill_and_resume(case, tmp_path, capsys):
    reference = tmp_path / "uninterrupted"
    case.run(reference)
    reference_log = capsys.readouterr().out
    out = tmp_path / "killed"
    saving = ["--checkpointing_steps", str(case.every), "--checkpoints_total_limit", "2"]
    state_dir = run_killed(case, out, *saving)

    # The killed run left training states but nothing that looks like a finished run.
    assert not (out / "checkpoints" / case.key).exists()
    assert not (out / "outputs" / "images" / f"{case.key}.png").exists()
    states = list_checkpoints(state_dir)
    assert states and all(json.loads((p / TRAINING_STATE_FILE).read_text())["key"] == case.key for p in states)
    resumed_step = int(states[-1].name.split("-")[1])
    assert case.kill_after <= resumed_step < case.steps

    # Starting the same run again without saying what to do with those states is refused.
    with pytest.raises(SystemExit) as refused:
        case.run(out, *saving)
    assert refused.value.code == USAGE_EXIT_CODE
    assert "unfinished run" in capsys.readouterr().err
    assert list_checkpoints(state_dir) == states

    case.run(out, *saving, "--resume_from_checkpoint", "latest")
    resumed_log = capsys.readouterr().out
    assert f"resumed from {states[-1]}: step {resumed_step}" in resumed_log

    weights, expected = case.weights(out), case.weights(reference)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert case.grid(out) == case.grid(reference)
    # The resumed epoch's logged means include the batches trained before the kill.
    epochs = [line for line in resumed_log.splitlines() if line.startswith("epoch ")]
    assert epochs and set(epochs) <= set(reference_log.splitlines())
    # --checkpoints_total_limit 2 keeps the newest two; no half-written or half-deleted folder remains.
    last = case.steps // case.every * case.every
    assert [p.name for p in list_checkpoints(state_dir)] == [f"checkpoint-{last - case.every}", f"checkpoint-{last}"]
    assert not list(state_dir.glob(".*"))


def test_killed_main_run_resumes_to_identical_weights(tmp_path, capsys):
    check_kill_and_resume(DIGITS, tmp_path, capsys)


def test_killed_fine_tuning_run_resumes_to_identical_weights(tmp_path, capsys):
    data = tmp_path / "datasets"
    write_cifar10(data, per_class=3, test_per_class=1)
    pretrained = save_tiny_ddpm(tmp_path / "pretrained", sample_size=32)
    # 11 images in batches of 2: 6 steps an epoch, 10 epochs, so the kill lands well before the end.
    case = Case("main-ft.py", ["--config_name", "CIFAR10_vehicles", "--pretrained_model", str(pretrained),
                               "--data_dir", str(data), "--n_u_normal", "8", "--n_u_sensitive", "1", "--n_s", "2",
                               "--n_test", "4", "--num_epochs", "10", "--batch_size", "2",
                               "--num_inference_steps", "2", "--num_eval_samples", "0", "--seed", "0"],
                key="main_ft_CIFAR10_vehicles_PU_0.1_nUn8_nUs1_nS2_nT4_ep10_bs2_steps2_0", steps=60, every=4, kill_after=8)
    check_kill_and_resume(case, tmp_path, capsys)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path, capsys):
    # A learning rate of 1e38 is accepted (it is positive) and wrecks the weights: the warmup gives
    # step 1 a rate of 0, step 2 a rate of 1e36, and step 3's forward pass overflows.
    key = DIGITS.key.replace("_steps2", "_lr1e+38_steps2")     # the override tags the key
    state_dir = tmp_path / "checkpoints" / f"{key}.state"
    with pytest.raises(SystemExit) as stopped:
        DIGITS.run(tmp_path, "--learning_rate", "1e38", "--checkpointing_steps", "1")
    assert stopped.value.code == DIVERGED_EXIT_CODE
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: non-finite loss or gradient at step 3 (epoch 1) of PU training: loss=")
    assert "R_S=" in error and "R_N=" in error
    assert f"the last good training state is {state_dir / 'checkpoint-2'}" in error
    assert [p.name for p in list_checkpoints(state_dir)] == ["checkpoint-1", "checkpoint-2"]
    assert not list(state_dir.glob(".*"))
    assert not (tmp_path / "checkpoints" / key).exists()
    assert not (tmp_path / "outputs" / "images").exists()
