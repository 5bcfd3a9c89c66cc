"""Sweeps as re-runnable loops: idempotent runs, keys that name overrides, interruption, seed bounds.

A sweep here is two tiny main.py runs on the offline digits, each run through the same command
with `--resume_from_checkpoint latest`. Killed part-way (SIGKILL in the first run, SIGTERM in the
second) and re-run until done, it must end with every run finished exactly once and weights equal,
bit for bit, to an uninterrupted sweep (CPU, same thread count).
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fixtures import cpu_env, offline_env
from tiny_models import load_script
from utils.checkpointing import TRAINING_STATE_FILE
from configs import get_config
from utils.errors import SIGNAL_EXIT_BASE, USAGE_EXIT_CODE
from utils.cli import run_request
from utils.run import Run

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 120
TINY = ["--config_name", "Digits_even", "--n_u_normal", "40", "--n_u_sensitive", "4", "--n_s", "4",
        "--num_epochs", "2", "--batch_size", "8", "--num_inference_steps", "2", "--num_eval_samples", "0",
        "--seed", "0", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest"]
TAGS = "nUn40_nUs4_nS4_ep2_bs8_steps2"     # the key tags of TINY's overrides
SWEEP = {"Unsupervised": f"main_Digits_even_Unsupervised_0.0_{TAGS}_0", "PU": f"main_Digits_even_PU_0.1_{TAGS}_0"}
STEPS = 12                                 # 48 images in batches of 8, two epochs


def command(out, algorithm):
    return [sys.executable, "main.py", *TINY, "--algorithm", algorithm, "--output_dir", str(out)]


def environment():
    return cpu_env(offline_env({**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}))


def run_to_end(out, algorithm):
    proc = subprocess.run(command(out, algorithm), cwd=REPO, env=environment(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def run_and_signal(out, algorithm, signum, after_step):
    """Start the run and send `signum` once its training state at `after_step` is complete."""
    state = out / "checkpoints" / f"{SWEEP[algorithm]}.state" / f"checkpoint-{after_step}" / TRAINING_STATE_FILE
    logs = out.parent / f"{out.name}-{algorithm}-{signum}"
    # Files, not pipes: a child whose pipe fills while the test polls would block.
    with open(f"{logs}.out", "w+") as stdout, open(f"{logs}.err", "w+") as stderr:
        proc = subprocess.Popen(command(out, algorithm), cwd=REPO, env=environment(), stdout=stdout,
                                stderr=stderr, text=True)
        try:
            deadline = time.time() + RUN_TIMEOUT_S
            while not state.exists():
                assert proc.poll() is None, f"the run ended before the signal: {Path(stderr.name).read_text()[-2000:]}"
                assert time.time() < deadline, "no training state appeared"
                time.sleep(0.02)
            proc.send_signal(signum)
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text()


def weights(out, key):
    return load_file(out / "checkpoints" / key / "unet" / "diffusion_pytorch_model.safetensors")


def snapshot(root):
    """{relative path: (mtime_ns, sha256)} of every file under `root`."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    for algorithm in SWEEP:
        run_to_end(out, algorithm)
    return out


def test_killed_sweep_rerun_finishes_every_run_once_with_identical_weights(reference, tmp_path):
    out = tmp_path / "sweep"
    saved = {key: 0 for key in SWEEP.values()}

    def count(log):
        for key in saved:
            saved[key] += log.count(f"saved {out / 'checkpoints' / key} ")

    # First pass: the first run is SIGKILLed mid-training, the second runs to the end.
    code, stdout, _ = run_and_signal(out, "Unsupervised", signal.SIGKILL, after_step=4)
    assert code == -signal.SIGKILL
    count(stdout)
    count(run_to_end(out, "PU"))
    # Second pass: the first run resumes; the second, finished, is left as it is.
    first = run_to_end(out, "Unsupervised")
    assert "resumed from" in first
    count(first)
    second = run_to_end(out, "PU")
    assert "is finished" in second and "nothing to train" in second
    count(second)
    assert saved == {key: 1 for key in SWEEP.values()}
    for key in SWEEP.values():
        got, expected = weights(out, key), weights(reference, key)
        assert all((got[k] == expected[k]).all() for k in expected), f"{key} differs from the uninterrupted run"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM (143)", "Ctrl-C (130)"])
def test_a_stop_signal_saves_a_state_says_how_to_resume_and_exits_128_plus_it(stop, reference, tmp_path):
    out = tmp_path / "sweep"
    key = SWEEP["PU"]
    code, _, stderr = run_and_signal(out, "PU", stop, after_step=2)
    assert code == SIGNAL_EXIT_BASE + stop
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"stopped: {stop.name} at step ")
    step = int(line.split("at step ")[1].split(";")[0])
    state = out / "checkpoints" / f"{key}.state" / f"checkpoint-{step}"
    assert 2 <= step < STEPS and (state / TRAINING_STATE_FILE).is_file()
    assert f"training state saved to {state}" in line and "--resume_from_checkpoint latest" in line
    assert not (out / "checkpoints" / key).exists()
    # The printed command resumes it to the uninterrupted run's weights.
    resumed = run_to_end(out, "PU")
    assert f"resumed from {state}: step {step}" in resumed
    got, expected = weights(out, key), weights(reference, key)
    assert all((got[k] == expected[k]).all() for k in expected)


def test_finished_run_rerun_changes_no_file(reference, tmp_path, capsys):
    before = snapshot(reference)
    main = load_script("main.py")
    main.main(main.parse_args([*TINY, "--algorithm", "PU", "--output_dir", str(reference)]))
    assert "nothing to train" in capsys.readouterr().out
    assert snapshot(reference) == before


def test_finished_run_with_other_settings_under_its_key_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "out"
    key = SWEEP["PU"]
    (out / "checkpoints").mkdir(parents=True)
    record = json.loads((reference / "checkpoints" / key / "run_config.json").read_text())
    record["config"]["adam_weight_decay"] = 0.5      # a setting no option changes, so the key cannot say it
    target = out / "checkpoints" / key
    target.mkdir()
    (target / "run_config.json").write_text(json.dumps(record))
    main = load_script("main.py")
    with pytest.raises(SystemExit) as refused:
        main.main(main.parse_args([*TINY, "--algorithm", "PU", "--output_dir", str(out)]))
    assert refused.value.code == USAGE_EXIT_CODE
    assert "made with adam_weight_decay = 0.5" in capsys.readouterr().err


def test_two_overrides_at_one_seed_give_two_report_rows(tmp_path):
    report = load_script("report.py")
    results = tmp_path / "results"
    results.mkdir()
    metrics = dict(non_sensitive_rate=0.9, classifier_accuracy=0.99, fid=None, fd_classifier=1.0)
    for tags in ([], ["nS30"], ["nn"]):
        key = "_".join(["main_Digits_even_PU_0.1", *tags, "0"])
        (results / f"{key}.json").write_text(json.dumps(dict(key=key, config_name="Digits_even", algorithm="PU",
                                                             beta=0.1, seed=0, key_tags=tags, metrics=metrics)))
    tables, rows = report.build_tables(report.load_results(results))
    assert sorted(rows.values()) == ["PU", "PU (nS30)", "PU (nn)"]


def test_overrides_name_the_key_in_a_fixed_order_and_defaults_add_nothing(tmp_path):
    main = load_script("main.py")

    def key(*extra):
        args = main.parse_args(["--config_name", "Digits_even", "--seed", "0", "--output_dir", str(tmp_path), *extra])
        return Run.resolve(run_request(args), "main", "Digits_even", get_config("Digits_even")).key
    assert key() == "main_Digits_even_PU_0.1_0"
    assert key("--n_s", "70", "--batch_size", "32") == "main_Digits_even_PU_0.1_0"    # the config's own values
    assert key("--n_s", "30") == "main_Digits_even_PU_0.1_nS30_0"
    assert key("--pu_correction", "nn") == "main_Digits_even_PU_0.1_nn_0"
    assert key("--learning_rate", "1e-4", "--n_s", "30") == "main_Digits_even_PU_0.1_nS30_lr0.0001_0"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_seeds_outside_the_numpy_range_exit_2(seed, capsys):
    main = load_script("main.py")
    with pytest.raises(SystemExit) as refused:
        main.parse_args(["--config_name", "Digits_even", "--seed", seed])
    assert refused.value.code == USAGE_EXIT_CODE
    assert "seed must be in [0, 2**32)" in capsys.readouterr().err


def test_report_draws_the_rate_against_beta_and_against_n_s():
    from utils.report import n_s_of, sweeps, tags_of, without_n_s

    def result(beta, seed, rate, tags=()):
        return dict(config_name="Digits_even", algorithm="PU", beta=beta, seed=seed, key_tags=list(tags),
                    metrics=dict(non_sensitive_rate=rate))
    results = [result(b, s, 0.9 + b / 10 + s / 100) for b in (0.05, 0.1, 0.2) for s in (0, 1)]
    results += [result(0.1, s, 0.5 + n / 1000, [f"nS{n}"]) for n in (10, 30) for s in (0, 1)]
    assert [n_s_of(r) for r in results[-4:]] == [10, 10, 30, 30] and n_s_of(results[0]) == 70   # the config's
    by_beta = sweeps(results, lambda r: float(r["beta"]), lambda r: (r["algorithm"], tags_of(r)))
    assert [x for x, _ in by_beta["Digits_even", ("PU", ())]] == [0.05, 0.1, 0.2]
    assert by_beta["Digits_even", ("PU", ())][1][1][:2] == pytest.approx((0.915, 0.01 / 2 ** 0.5))
    by_n_s = sweeps(results, n_s_of, lambda r: (r["algorithm"], r["beta"], without_n_s(tags_of(r))))
    assert [(x, round(s[0], 3)) for x, s in by_n_s["Digits_even", ("PU", 0.1, ())]] == [(10, 0.51), (30, 0.53),
                                                                                       (70, 0.915)]
