"""benchmarks/throughput.py as CI runs it: a tiny setting on CPU, the JSON it prints, its refusals.
No timing is asserted; the figures are checked for shape and internal consistency only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import cpu_env, offline_env

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "throughput.py"
TINY = ["--config_name", "MNIST_even", "--unet", "digits", "--device", "cpu", "--batch_size", "4", "--steps", "2",
        "--warmup_steps", "1", "--sample_steps", "2", "--sample_images", "3"]
TOP_KEYS = {"config", "unet", "parameters", "image_size", "batch_size", "steps", "data", "device", "device_name",
            "torch_threads", "load_average", "precision", "options", "flops_per_train_image",
            "flops_per_sample_step_image", "peak_flops", "peak_flops_source", "materialize", "loader_only", "train",
            "train_peak_memory", "ours_over_naive", "naive_data_share", "ratio_bound", "sampling"}
RATE_KEYS = {"images_per_s", "seconds", "mfu", "all_seconds"}
SAMPLING_KEYS = {"images", "batch_size", "sample_steps", "sampler", "images_per_s", "seconds", "image_steps_per_s",
                 "mfu", "peak_memory"}


def run_benchmark(args, cwd, timeout=180):
    """The script from another folder than the repository, one thread, no network, no GPU."""
    env = cpu_env(offline_env({**os.environ, "OMP_NUM_THREADS": "1"}))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    proc = run_benchmark(TINY, tmp_path_factory.mktemp("bench"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)     # stdout holds the JSON and nothing else


def test_json_has_every_figure(report):
    assert TOP_KEYS <= set(report)
    assert set(report["train"]) == {"ours", "naive"}
    for path in ("ours", "naive"):
        assert RATE_KEYS <= set(report["train"][path])
        assert len(report["train"][path]["all_seconds"]) == 1
        assert report["loader_only"][path]["images_per_s"] > 0
    assert SAMPLING_KEYS <= set(report["sampling"])
    assert report["train_peak_memory"]["bytes"] > 0


def test_figures_are_consistent(report):
    assert (report["data"], report["device"], report["precision"]) == ("synthetic MNIST (idx)", "cpu", "fp32")
    assert (report["image_size"], report["batch_size"], report["steps"]) == (32, 4, 2)
    ours, naive = report["train"]["ours"], report["train"]["naive"]
    for path in (ours, naive):
        # Each figure is a difference of two timings; on a busy machine a tiny one may come out <= 0.
        if path["seconds"] > 0:
            assert path["images_per_s"] == pytest.approx(4 * 2 / path["seconds"])
        else:
            assert path["images_per_s"] is None and report["ours_over_naive"] is None
    if report["ours_over_naive"] is not None:
        assert report["ours_over_naive"] == pytest.approx(ours["images_per_s"] / naive["images_per_s"])
    # The loaders and the materialization go over the warm-up and the timed batches together.
    assert report["materialize"]["images"] == report["loader_only"]["naive"]["images"] == 4 * (1 + 2)
    if naive["images_per_s"] is not None:
        assert report["naive_data_share"] > 0
    # A training step is a forward and a backward, and the backward costs about twice the forward.
    assert 2.5 < report["flops_per_train_image"] / report["flops_per_sample_step_image"] < 3.5
    sampling = report["sampling"]
    assert (sampling["images"], sampling["batch_size"], sampling["sample_steps"]) == (3, 3, 2)
    assert sampling["image_steps_per_s"] == pytest.approx(2 * sampling["images_per_s"])
    # MNIST_even's evaluation: 10,000 samples in 1,000 DDPM steps, in batches of 64 at 32 px on CPU (auto).
    evaluation = sampling["evaluation"]
    assert (evaluation["num_samples"], evaluation["num_inference_steps"], evaluation["batch_size"]) == (10_000, 1000, 64)
    assert not evaluation["timed_at_this_batch"]            # --sample_images 3 timed a batch of 3
    assert evaluation["seconds"] == pytest.approx(10_000 * 1000 / sampling["image_steps_per_s"])
    if report["peak_flops"] is not None and ours["images_per_s"] is not None:
        assert ours["mfu"] == pytest.approx(report["flops_per_train_image"] * ours["images_per_s"]
                                            / report["peak_flops"])


def test_a_dataset_without_files_or_stand_in_is_refused(capsys):
    """In this process: the refusal comes before any model or accelerator is built."""
    from benchmarks import throughput
    with pytest.raises(SystemExit) as exit_info:
        throughput.main(throughput.parse_args(["--config_name", "CIFAR10_vehicles", "--device", "cpu"]))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "error:" in err and "--data_dir" in err
    assert out == ""
