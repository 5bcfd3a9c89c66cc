"""Two CPU processes: `torchrun --nproc_per_node 2 main.py ...` (accelerate's MULTI_CPU over gloo).

Each process must train on its own half of every epoch, draw its own noise, and step with the
gradient averaged over both; only the main process may write: one pipeline, one grid, one
TensorBoard file, one epoch line, while each process saves its own RNG state into the shared
training state.

What each process trained on is seen from outside the library: the run goes through
tests/multiprocess_probe.py, which calls main.py's `main` in every torchrun worker after wrapping the
dataset's batch gather, the scheduler's add_noise, a gradient hook on a few parameters,
accelerate's clip_grad_norm_ (where DDP has averaged the gradients) and, for --beta auto, the
estimate and the objective's beta, and saves what they saw per process. One launch serves every
test here; the workers run on the CPU (CUDA_VISIBLE_DEVICES=""), and torchrun and its workers are
killed if the launch overruns its time.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from fixtures import cpu_env, offline_env
from utils.checkpointing import TRAINING_STATE_FILE, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "multiprocess_probe.py"
KEY = "main_Digits_even_PU_auto_nUn200_nUs28_nS28_ep1_steps2_0"
PROCESSES = 2
IMAGES = 256
STEPS = 4            # 256 images in batches of 32 are 8 batches an epoch: 4 for each process
# A count that fills every batch of every process: with a partial last batch, accelerate's even_batches
# completes that batch with images from the start of the epoch, which two processes then share.
ARGS = ["--config_name", "Digits_even", "--n_u_normal", "200", "--n_u_sensitive", "28", "--n_s", "28",
        "--num_epochs", "1", "--batch_size", "32", "--num_inference_steps", "2", "--num_eval_samples", "0",
        "--seed", "0", "--checkpointing_steps", "2", "--beta", "auto"]
TIMEOUT_S = 180      # the launch takes about 30 s on 2 busy cores


def kill_tree(proc):
    """SIGKILL `proc` and every process it started. torchrun starts each worker in a session of its
    own, so killing its process group would miss them: it is stopped first (it can start no more),
    then its descendants and itself are killed."""
    if proc.poll() is not None:      # ended (and reaped) by itself, after its workers
        return
    try:
        parent = psutil.Process(proc.pid)
        parent.suspend()
        family = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def run_and_reap(command, timeout, **kwargs):
    """subprocess.run that kills the whole process tree when it ends, also on timeout or on any error
    here (pytest-timeout's included), so that no torchrun worker outlives the test."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(map(str, command[:6]))} ... ran past {timeout} s") from None
    finally:
        kill_tree(proc)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """(output dir, completed torchrun process, [record of process 0, record of process 1])."""
    out = tmp_path_factory.mktemp("torchrun")
    env = cpu_env(offline_env({**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}))
    done = run_and_reap([sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node", str(PROCESSES), str(PROBE), str(out / "records"), *ARGS,
                         "--output_dir", str(out)], TIMEOUT_S, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [torch.load(out / "records" / f"process_{i}.pt") for i in range(PROCESSES)]
    return out, done, records


def test_only_the_main_process_writes(launch):
    tmp_path, done, _ = launch
    lines = done.stdout.splitlines()
    assert f"training: {STEPS} steps of 32 images per epoch on each of {PROCESSES} processes" in lines
    assert sum(line.startswith("epoch 1/1 ") for line in lines) == 1
    assert sum(line.startswith("saved ") for line in lines) == 1
    # --beta auto: the estimate is said once (every process trains with it: the test below).
    assert sum(line.startswith("beta auto: ") for line in lines) == 1

    assert (tmp_path / "checkpoints" / KEY / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "outputs" / "images").iterdir()] == [f"{KEY}.png"]
    assert len(list((tmp_path / "outputs" / "logs" / KEY).iterdir())) == 1
    # No temporary folder or file survives anywhere.
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]

    states = list_checkpoints(tmp_path / "checkpoints" / f"{KEY}.state")
    assert [p.name for p in states] == ["checkpoint-2", "checkpoint-4"]
    for state in states:
        names = {p.name for p in state.iterdir()}
        assert {f"random_states_{i}.pkl" for i in range(PROCESSES)} <= names
        assert {"model.safetensors", "optimizer.bin", TRAINING_STATE_FILE} <= names
        record = json.loads((tmp_path / "checkpoints" / KEY / "run_config.json").read_text())
        assert json.loads((state / TRAINING_STATE_FILE).read_text())["auto_beta"]["beta"] == record["beta"]


def test_every_process_trains_with_process_0s_estimate_of_beta(launch):
    # The probe moves each process's own estimate by 0.01 x its rank: one beta means process 0's was shared.
    tmp_path, _, records = launch
    record = json.loads((tmp_path / "checkpoints" / KEY / "run_config.json").read_text())
    assert [r["beta"] for r in records] == [record["beta"]] * PROCESSES
    assert record["beta_estimate"]["estimate"] == record["beta"]


def test_each_process_trains_on_its_own_shard(launch):
    _, _, records = launch
    shards = [torch.cat(r["indices"]).tolist() for r in records]
    assert all(len(r["indices"]) == STEPS for r in records)
    assert all(len(shard) == len(set(shard)) == IMAGES // PROCESSES for shard in shards)
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(IMAGES))


def test_each_process_draws_its_own_noise(launch):
    _, _, records = launch
    assert all(len(r["noise"]) == STEPS for r in records)
    for step in range(STEPS):
        noise, timesteps = [r["noise"][step] for r in records], [r["timesteps"][step] for r in records]
        assert noise[0].shape == noise[1].shape == (32, 3, 16, 16)
        assert not torch.equal(noise[0], noise[1]), f"both processes drew the same noise at step {step + 1}"
        assert not torch.equal(timesteps[0], timesteps[1])


def test_gradients_are_averaged_over_the_processes(launch):
    """The gradient both processes step with is the mean of their own, for every step."""
    _, _, records = launch
    assert all(len(r["local_grads"]) == len(r["synced_grads"]) == STEPS for r in records)
    for step in range(STEPS):
        for name, own_0 in records[0]["local_grads"][step].items():
            own_1 = records[1]["local_grads"][step][name]
            synced = [r["synced_grads"][step][name] for r in records]
            scale = max(own_0.abs().max(), own_1.abs().max()).item()
            tolerance = dict(rtol=1e-5, atol=1e-6 * scale)
            assert not torch.allclose(own_0, own_1, **tolerance), f"{name}: the two processes' gradients agree"
            torch.testing.assert_close(synced[0], synced[1], **tolerance)
            torch.testing.assert_close(synced[0], (own_0 + own_1) / 2, **tolerance,
                                       msg=lambda m: f"step {step + 1}, {name}: not the mean of the processes' "
                                                     f"gradients\n{m}")
