"""Two CPU processes: `torchrun --nproc_per_node 2 main.py ...` (accelerate's MULTI_CPU over gloo).

Each process must train on its own half of every epoch and only the main process may write: one
pipeline, one grid, one TensorBoard file, one epoch line, while each process saves its own RNG
state into the shared training state.
"""
import os
import subprocess
import sys
from pathlib import Path

from fixtures import offline_env
from utils.checkpointing import TRAINING_STATE_FILE, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
KEY = "main_Digits_even_PU_0.1_nUn200_nUs20_nS20_ep1_steps2_0"
PROCESSES = 2
# 240 images in batches of 32 are 8 batches an epoch: 4 for each process.
ARGS = ["--config_name", "Digits_even", "--n_u_normal", "200", "--n_u_sensitive", "20", "--n_s", "20",
        "--num_epochs", "1", "--batch_size", "32", "--num_inference_steps", "2", "--num_eval_samples", "0",
        "--seed", "0", "--checkpointing_steps", "2"]
TIMEOUT_S = 600


def test_two_cpu_processes_train_on_their_own_shards_and_write_once(tmp_path):
    env = offline_env({**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(PROCESSES), "main.py", *ARGS, "--output_dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert f"training: 4 steps of 32 images per epoch on each of {PROCESSES} processes" in lines
    assert sum(line.startswith("epoch 1/1 ") for line in lines) == 1
    assert sum(line.startswith("saved ") for line in lines) == 1

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
