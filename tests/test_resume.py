"""Surviving a killed run: training states, resume to identical weights, and the non-finite guard.

For main.py (a small PU split of the offline digits) and main-ft.py (a tiny pretrained DDPM on tiny
CIFAR10-format data), a run is started in a subprocess, killed with SIGKILL once a training state
exists, and resumed; its final weights and sample grid must equal, bit for bit, those of a run never
stopped (CPU, in the subprocess too: CUDA_VISIBLE_DEVICES=""). Training is deterministic, so a
"resume" that loaded nothing and trained again from step 0 would end identical as well: the resumed
run must also train exactly the steps after the saved one. The uninterrupted and resumed runs call
the script's `main` in this process; the killed one runs with this process's thread count, since
CPU kernels sum in a thread-dependent order.
"""
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import main
import utils.training
from fixtures import cpu_env, offline_env, write_cifar10
from tiny_models import load_script, save_tiny_ddpm
from utils.checkpointing import PROGRESS_FILE, TRAINING_STATE_FILE, list_checkpoints
from utils.errors import USAGE_EXIT_CODE
from utils.files import RUN_CONFIG_FILE

REPO = Path(__file__).resolve().parents[1]
# The killed run's first training state comes after start-up (~10 s) and a few steps (~1 s idle).
KILL_TIMEOUT_S = 120
DIVERGED_EXIT = 3               # README, Reproducibility: a non-finite loss or gradient exits with code 3


class Case:
    """One script's resume scenario: its arguments, run key, step count and when to kill it."""

    def __init__(self, script, args, key, steps, epochs, every, kill_after):
        self.script, self.args, self.key = script, args, key
        self.steps, self.epochs, self.every, self.kill_after = steps, epochs, every, kill_after

    def epoch_of(self, step):
        """The epoch (from 1) that optimizer step `step` (from 1) belongs to."""
        return (step - 1) // (self.steps // self.epochs) + 1

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
              key="main_Digits_even_PU_0.1_nUn200_nUs20_nS20_ep2_steps2_0", steps=16, epochs=2, every=3, kill_after=6)   # 2 epochs of 8 batches


def run_killed(case, out, *extra):
    """Start `case` in a subprocess and SIGKILL it once checkpoint-{kill_after} is complete; the
    process is killed and reaped whatever happens, an assertion failing here included."""
    state_dir = out / "checkpoints" / f"{case.key}.state"
    env = cpu_env(offline_env({**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}))
    log = out.with_name(f"{out.name}.stderr")      # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, case.script, *case.argv(out, *extra)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not (state_dir / f"checkpoint-{case.kill_after}" / TRAINING_STATE_FILE).exists():
            assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no training state in {KILL_TIMEOUT_S} s: {log.read_text()[-2000:]}"
            time.sleep(0.02)
    finally:
        proc.kill()         # SIGKILL
        proc.wait()
    return state_dir


def count_training_steps(monkeypatch):
    """A list that grows by one for each batch the training loop trains on in this process."""
    steps, error = [], utils.training.denoising_error

    def counted(*args, **kwargs):
        steps.append(1)
        return error(*args, **kwargs)
    monkeypatch.setattr(utils.training, "denoising_error", counted)
    return steps


def check_kill_and_resume(case, tmp_path, capsys, monkeypatch):
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

    before = torch.load(states[-1] / PROGRESS_FILE, weights_only=False)["seconds"]   # the killed process's
    trained = count_training_steps(monkeypatch)
    started = time.time()
    case.run(out, *saving, "--resume_from_checkpoint", "latest")
    wall = time.time() - started
    resumed_log = capsys.readouterr().out
    # The recorded training time is the killed process's, as its state carried it, plus this one's.
    recorded = json.loads((out / "checkpoints" / case.key / RUN_CONFIG_FILE).read_text())["train_seconds"]
    assert 0 < before < recorded <= before + wall + 0.1
    assert f"resumed from {states[-1]}: step {resumed_step}" in resumed_log
    # It went on from the saved step: it trained only the steps after it, and logged only the epoch
    # that step was in and those after (a fresh start would train all case.steps and log every epoch).
    assert len(trained) == case.steps - resumed_step
    epochs = [line for line in resumed_log.splitlines() if line.startswith("epoch ")]
    assert [int(line.split()[1].split("/")[0]) for line in epochs] == \
        list(range(case.epoch_of(resumed_step), case.epochs + 1))

    weights, expected = case.weights(out), case.weights(reference)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert case.grid(out) == case.grid(reference)
    # The resumed epoch's logged means include the batches trained before the kill.
    assert epochs and set(epochs) <= set(reference_log.splitlines())
    # --checkpoints_total_limit 2 keeps the newest two; no half-written or half-deleted folder remains.
    last = case.steps // case.every * case.every
    assert [p.name for p in list_checkpoints(state_dir)] == [f"checkpoint-{last - case.every}", f"checkpoint-{last}"]
    assert not list(state_dir.glob(".*"))


def test_killed_main_run_resumes_to_identical_weights(tmp_path, capsys, monkeypatch):
    check_kill_and_resume(DIGITS, tmp_path, capsys, monkeypatch)


def test_resume_from_a_named_training_state_that_is_not_the_latest(tmp_path, capsys, monkeypatch):
    """--resume_from_checkpoint PATH: the older of the two states kept, to the uninterrupted weights."""
    reference = tmp_path / "uninterrupted"
    DIGITS.run(reference)
    out = tmp_path / "killed"
    saving = ["--checkpointing_steps", str(DIGITS.every), "--checkpoints_total_limit", "2"]
    older, newer = list_checkpoints(run_killed(DIGITS, out, *saving))[-2:]
    step = int(older.name.split("-")[1])
    capsys.readouterr()
    trained = count_training_steps(monkeypatch)
    DIGITS.run(out, *saving, "--resume_from_checkpoint", str(older))
    assert f"resumed from {older}: step {step}" in capsys.readouterr().out
    assert len(trained) == DIGITS.steps - step
    weights, expected = DIGITS.weights(out), DIGITS.weights(reference)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_killed_fine_tuning_run_resumes_to_identical_weights(tmp_path, capsys, monkeypatch):
    data = tmp_path / "datasets"
    write_cifar10(data, per_class=3, test_per_class=1)
    pretrained = save_tiny_ddpm(tmp_path / "pretrained", sample_size=32)
    # 11 images in batches of 2: 6 steps an epoch, 10 epochs, so the kill lands well before the end.
    case = Case("main-ft.py", ["--config_name", "CIFAR10_vehicles", "--pretrained_model", str(pretrained),
                               "--data_dir", str(data), "--n_u_normal", "8", "--n_u_sensitive", "1", "--n_s", "2",
                               "--n_test", "4", "--num_epochs", "10", "--batch_size", "2",
                               "--num_inference_steps", "2", "--num_eval_samples", "0", "--seed", "0"],
                key="main_ft_CIFAR10_vehicles_PU_0.1_nUn8_nUs1_nS2_nT4_ep10_bs2_steps2_0", steps=60, epochs=10, every=4, kill_after=8)
    check_kill_and_resume(case, tmp_path, capsys, monkeypatch)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path, capsys):
    # A learning rate of 1e38 is accepted (it is positive) and wrecks the weights: the warmup gives
    # step 1 a rate of 0, step 2 a rate of 1e36, and step 3's forward pass overflows.
    key = DIGITS.key.replace("_steps2", "_lr1e+38_steps2")     # the override tags the key
    state_dir = tmp_path / "checkpoints" / f"{key}.state"
    with pytest.raises(SystemExit) as stopped:
        DIGITS.run(tmp_path, "--learning_rate", "1e38", "--checkpointing_steps", "1")
    assert stopped.value.code == DIVERGED_EXIT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: non-finite loss or gradient at step 3 (epoch 1) of PU training: loss=")
    assert "R_S=" in error and "R_N=" in error
    assert f"the last good training state is {state_dir / 'checkpoint-2'}" in error
    assert [p.name for p in list_checkpoints(state_dir)] == ["checkpoint-1", "checkpoint-2"]
    assert not list(state_dir.glob(".*"))
    assert not (tmp_path / "checkpoints" / key).exists()
    assert not (tmp_path / "outputs" / "images").exists()


def test_non_finite_gradient_with_a_finite_loss_stops_the_run_with_exit_3(tmp_path, capsys, monkeypatch):
    """A gradient that overflows while the loss stays finite: fp32 on CPU has no grad scaler to skip
    such a step, so the guard must stop at that step (not one later, once the wrecked weights make
    the loss non-finite too) and keep the last good training state."""
    bad_step = 3
    build_unet = main.build_unet

    def unet_whose_gradient_overflows(config):
        unet = build_unet(config)
        backward_passes = itertools.count(1)
        unet.conv_out.bias.register_hook(
            lambda grad: torch.full_like(grad, math.inf) if next(backward_passes) == bad_step else grad)
        return unet
    monkeypatch.setattr(main, "build_unet", unet_whose_gradient_overflows)
    state_dir = tmp_path / "checkpoints" / f"{DIGITS.key}.state"
    with pytest.raises(SystemExit) as stopped:
        main.main(main.parse_args(DIGITS.argv(tmp_path, "--checkpointing_steps", "1")))
    assert stopped.value.code == DIVERGED_EXIT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: non-finite loss or gradient at step {bad_step} (epoch 1) of PU training: loss=")
    loss = float(re.search(r" loss=([^,]+),", error).group(1))
    assert math.isfinite(loss) and "grad norm=inf" in error
    assert f"the last good training state is {state_dir / f'checkpoint-{bad_step - 1}'}" in error
    assert [p.name for p in list_checkpoints(state_dir)] == [f"checkpoint-{i}" for i in range(1, bad_step)]
    assert not (tmp_path / "checkpoints" / DIGITS.key).exists()
    assert not (tmp_path / "outputs" / "images").exists()
