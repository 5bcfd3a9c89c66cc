"""Evaluation: the sensitivity classifier, the non-sensitive rate, Frechet distances, evaluate.py.

The digits classifier is trained once for the module (the real recipe, ~10-20 s on one core) and
its cache file is copied into the end-to-end run's output folder, which also shows the cache is
reused. The end-to-end test trains a checkpoint with `python main.py` and evaluates it with
`python evaluate.py`, both offline, in subprocesses.
"""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import linalg
from torch import nn

from fixtures import cpu_env, offline_env

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import evaluate  # noqa: E402
from configs import get_config, with_overrides  # noqa: E402
from utils.classifier import (CLASSES, CLASSIFIER_SEED, ImageClassifier, accuracy, build_classifier,  # noqa: E402
                              cache_path, labeled_split, load_or_train_classifier, predict_normal,
                              train_classifier)
from utils.data import Recipe  # noqa: E402
from utils.checkpointing import MODEL_FILE, PROGRESS_FILE, TRAINING_STATE_FILE  # noqa: E402
from utils.evaluation import config_from_record  # noqa: E402
from utils.files import RUN_CONFIG_FILE  # noqa: E402
from utils.metrics import (ClassifierFeatures, frechet_distances, frechet_metric,  # noqa: E402
                           inception_metric_or_reason, non_sensitive_rate)
from utils.pipelines import default_output_dir, load_judged_model  # noqa: E402
from utils.report import build_tables, load_results  # noqa: E402
from utils.run import Run  # noqa: E402

DIGITS = "Digits_even"
KEY = "main_Digits_even_PU_0.1_nUn100_nUs10_nS10_nT40_ep1_steps2_42"   # the tiny run: main.py with TINY_COUNTS
USAGE_EXIT = 2
# A smaller split than the config's keeps main.py to a few batches; evaluate.py must take the recorded
# n_test (the FID reference size) from the checkpoint rather than the registry's 145.
TINY_N_TEST = 40
TINY_COUNTS = ["--n_u_normal", "100", "--n_u_sensitive", "10", "--n_s", "10", "--n_test", str(TINY_N_TEST)]
CPU = torch.device("cpu")
STATE_STEP = 2      # the tiny run (4 steps) saves a training state every STATE_STEP steps


def run_script(script, *args, torch_home):
    """`python script args` offline and on the CPU, with an empty torch hub cache so no Inception weights
    are found."""
    env = cpu_env(offline_env(dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_HOME=str(torch_home))))
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """The cached Digits_even classifier, trained with its real recipe: (model, meta, output dir)."""
    out = tmp_path_factory.mktemp("classifier")
    model, meta = load_or_train_classifier(DIGITS, get_config(DIGITS), "datasets", out, CPU)
    return model, meta, out


# --- the classifier -------------------------------------------------------------------------------

def test_classifier_beats_chance_clearly_on_digits_in_two_epochs():
    config = get_config(DIGITS)
    torch.manual_seed(0)
    model, init = build_classifier(config, "cnn", "scratch")
    train_classifier(model, labeled_split(config, "datasets", train=True),
                     Recipe("cnn", epochs=2, batch_size=32, learning_rate=2e-3, flip=False), CPU)
    test = labeled_split(config, "datasets", train=False)
    majority = max(test.labels.mean(), 1 - test.labels.mean())
    assert init == "scratch"
    assert majority < 0.55                      # the split is balanced, so chance is about 0.5
    assert accuracy(model, test, CPU) > 0.85


def test_class_classifier_beats_chance_clearly_on_digits_in_two_epochs():
    config = get_config(DIGITS)
    torch.manual_seed(0)
    model, _ = build_classifier(config, "cnn", "scratch", num_outputs=10)
    train_set = labeled_split(config, "datasets", train=True, task=CLASSES)
    assert sorted(set(train_set.labels)) == list(range(10))      # every class, sensitive ones included
    train_classifier(model, train_set, Recipe("cnn", epochs=2, batch_size=32, learning_rate=2e-3, flip=False), CPU)
    test = labeled_split(config, "datasets", train=False, task=CLASSES)
    assert np.bincount(test.labels).max() / len(test) < 0.15      # about balanced: chance is about 0.1
    assert accuracy(model, test, CPU) > 0.6
    assert model.predict(torch.rand(5, 3, 16, 16)).shape == (5,)


def test_class_classifier_is_one_per_dataset_and_size(tmp_path):
    even, odd = get_config(DIGITS), get_config("Digits_odd")
    path = cache_path(tmp_path, DIGITS, even, "cnn", "scratch", 0, CLASSES)
    assert path == cache_path(tmp_path, "Digits_odd", odd, "cnn", "scratch", 0, CLASSES)   # blind to the split
    assert path.name == "Digits_classes_cnn-scratch_16px_seed0.pt"
    assert path != cache_path(tmp_path, DIGITS, even, "cnn", "scratch", 0)
    assert path != cache_path(tmp_path, DIGITS, replace(even, classifier_size=8), "cnn", "scratch", 0, CLASSES)


def test_classifier_is_cached_with_its_accuracy_and_reused(digits_classifier, capsys):
    model, meta, out = digits_classifier
    config = get_config(DIGITS)
    path = cache_path(out, DIGITS, config, "cnn", "scratch", CLASSIFIER_SEED)
    assert Path(meta["path"]) == path and path.is_file()
    assert meta["test_accuracy"] > 0.95 and meta["n_test"] == 297   # the whole test split, both classes
    mtime = path.stat().st_mtime_ns
    again, meta_again = load_or_train_classifier(DIGITS, config, "datasets", out, CPU)
    assert "training" not in capsys.readouterr().err and path.stat().st_mtime_ns == mtime
    assert meta_again["test_accuracy"] == meta["test_accuracy"]
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(model(x), again(x))


def test_cache_name_holds_what_determines_the_classifier(tmp_path):
    config = get_config(DIGITS)
    base = cache_path(tmp_path, DIGITS, config, "cnn", "scratch", 0)
    others = [cache_path(tmp_path, "Digits_odd", config, "cnn", "scratch", 0),
              cache_path(tmp_path, DIGITS, replace(config, classifier_size=8), "cnn", "scratch", 0),
              cache_path(tmp_path, DIGITS, config, "cnn", "scratch", 1),
              cache_path(tmp_path, DIGITS, config, "resnet18", "imagenet", 0)]
    assert len({base, *others}) == 5
    assert base.parent == tmp_path / "checkpoints" / "classifiers"


def test_resnet_classifier_offline_trains_from_scratch_says_so_and_caches(data_root, tmp_path, offline, capsys,
                                                                         monkeypatch):
    root, _ = data_root
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))     # no cached ImageNet weights either
    # The tiny CIFAR10 at 32 px instead of 224 keeps the ResNet-18 to seconds on a CPU.
    config = with_overrides(get_config("CIFAR10_vehicles"), classifier_size=32)
    model, meta = load_or_train_classifier("CIFAR10_vehicles", config, root, tmp_path, CPU)
    printed = capsys.readouterr().out
    assert "could not be downloaded" in printed and "from scratch" in printed
    assert meta["init"] == "scratch" and meta["recipe"]["arch"] == "resnet18" and meta["recipe"]["flip"]
    assert Path(meta["path"]).name == "CIFAR10_vehicles_resnet18-scratch_32px_seed0.pt"
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["n_test"] == 50
    _, cached = load_or_train_classifier("CIFAR10_vehicles", config, root, tmp_path, CPU)
    assert cached["path"] == meta["path"] and "could not be downloaded" not in capsys.readouterr().out


def test_missing_classifier_weights_file_is_a_usage_error(tmp_path):
    from utils.errors import UsageError
    with pytest.raises(UsageError, match="--classifier_weights"):
        load_or_train_classifier("CIFAR10_vehicles", get_config("CIFAR10_vehicles"), tmp_path, tmp_path, CPU,
                                 weights_path=tmp_path / "missing.pth")
    assert not (tmp_path / "checkpoints").exists()


# --- the non-sensitive rate ------------------------------------------------------------------------

def brightness_classifier():
    """Calls an image normal exactly when its mean brightness is above 0.5."""
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = ImageClassifier(backbone, 3, input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    with torch.no_grad():
        model.head.weight.fill_(1.0)
        model.head.bias.zero_()
    return model.eval()


def test_rate_is_exact_for_a_hand_made_classifier():
    images = torch.cat([torch.full((7, 3, 12, 12), 0.8), torch.full((3, 3, 12, 12), 0.2)])
    is_normal = predict_normal(brightness_classifier(), images[torch.randperm(10)], CPU, batch_size=4)
    assert is_normal.dtype == torch.bool and is_normal.shape == (10,)
    assert non_sensitive_rate(is_normal) == pytest.approx(0.7)
    assert non_sensitive_rate(predict_normal(brightness_classifier(), images[7:], CPU)) == 0.0


def test_rate_on_real_digits_of_known_classes_is_their_normal_share(digits_classifier):
    model, _, _ = digits_classifier
    test = labeled_split(get_config(DIGITS), "datasets", train=False)
    images = torch.stack([test[i][0] for i in range(len(test))])
    normal, sensitive = np.flatnonzero(test.labels == 1), np.flatnonzero(test.labels == 0)
    for n_normal, n_sensitive in [(60, 20), (30, 60), (100, 0), (0, 100)]:
        chosen = np.concatenate([normal[:n_normal], sensitive[:n_sensitive]])
        rate = non_sensitive_rate(predict_normal(model, images[chosen], CPU))
        assert rate == pytest.approx(n_normal / len(chosen), abs=0.05)


def test_rate_of_no_samples_is_an_error():
    with pytest.raises(ValueError):
        non_sensitive_rate(torch.zeros(0, dtype=torch.bool))


# --- Frechet distances -----------------------------------------------------------------------------

class PooledProjection(nn.Module):
    """A small fixed feature extractor: 4x4 average pooling, then a seeded linear map to 6 values."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, self.num_features)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def direct_frechet(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) with scipy, in float64."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def test_frechet_distance_with_an_injected_extractor_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    generated = torch.rand(120, 3, 16, 16, generator=g)
    reference = (torch.rand(90, 3, 16, 16, generator=g) * 0.6 + 0.3) ** 2
    extractor = PooledProjection().eval()
    with torch.no_grad():
        expected = direct_frechet(extractor(generated), extractor(reference))
    reference_batches = (reference[i:i + 32] for i in range(0, 90, 32))   # a loader-like iterable
    got = frechet_distances(generated, reference_batches, {"fd": frechet_metric(extractor)}, batch_size=50)["fd"]
    assert expected > 0.1
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_classifier_features_work(digits_classifier):
    model, _, _ = digits_classifier
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(64, 3, 16, 16, generator=generator)
    metrics = {"fd": frechet_metric(PooledProjection()), "fd_classifier": frechet_metric(ClassifierFeatures(model))}
    distances = frechet_distances(images, images, metrics)
    assert distances["fd"] == pytest.approx(0.0, abs=1e-3)
    assert distances["fd_classifier"] == pytest.approx(0.0, abs=1e-2)
    # ... and the classifier's features tell two different sets apart: dark noise against bright.
    apart = frechet_distances(images * 0.2, images * 0.2 + 0.8, metrics)
    assert apart["fd_classifier"] > 1.0 and apart["fd"] > 0.1


def test_fid_is_null_with_the_reason_when_inception_weights_are_unusable(tmp_path):
    bogus = tmp_path / "inception.pth"
    bogus.write_bytes(b"not a state dict")
    metric, reason = inception_metric_or_reason(bogus)
    assert metric is None and str(bogus) in reason


# --- checkpoints and evaluate.py -------------------------------------------------------------------

def test_config_survives_the_json_round_trip_of_run_config():
    for name in ("MNIST_even", DIGITS, "CelebA_female"):
        config = get_config(name)
        assert config_from_record(json.loads(json.dumps({"config": config.to_dict()}))) == config


def test_result_key_is_tagged_only_when_sampler_or_steps_differ_from_the_config():
    config = get_config(DIGITS)
    run = Run(script="main", config_name=DIGITS, config=config, algorithm="PU", beta=0.1, seed=42,
              pu_correction="abs")
    key = "main_Digits_even_PU_0.1_42"
    assert run.result_key(config.num_inference_steps) == key
    assert run.result_key(7) == f"{key}_steps7"
    assert run.result_key(config.num_inference_steps, config.sampler) == key
    assert run.result_key(1000, "ddpm") == f"{key}_ddpm_steps1000"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, digits_classifier):
    """A 1-epoch digits checkpoint from `python main.py`, its training states and the cached classifier
    beside it."""
    out = tmp_path_factory.mktemp("run")
    proc = run_script("main.py", "--config_name", DIGITS, "--num_epochs", "1", "--num_inference_steps", "2",
                      *TINY_COUNTS, "--num_eval_samples", "0", "--checkpointing_steps", STATE_STEP, "--output_dir", out,
                      torch_home=out / "torch_home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "outputs" / "results").exists()          # --num_eval_samples 0 skips the evaluation
    _, meta, _ = digits_classifier
    target = out / "checkpoints" / "classifiers" / Path(meta["path"]).name
    target.parent.mkdir(parents=True)
    shutil.copy(meta["path"], target)
    return out


def test_evaluate_end_to_end_on_a_tiny_checkpoint(tiny_checkpoint, digits_classifier):
    out = tiny_checkpoint
    _, meta, _ = digits_classifier
    proc = run_script("evaluate.py", out / "checkpoints" / KEY, "--num_samples", "16", "--num_inference_steps", "2",
                      "--eval_batch_size", "8", torch_home=out / "torch_home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training the sensitivity classifier" not in proc.stderr     # the cached one was used
    result = json.loads((out / "outputs" / "results" / f"{KEY}.json").read_text())
    assert {k: result[k] for k in ("key", "script", "config_name", "algorithm", "beta", "seed", "sampler",
                                   "num_inference_steps", "num_samples", "eval_batch_size")} == dict(
        key=KEY, script="main", config_name=DIGITS, algorithm="PU", beta=0.1, seed=42, sampler="ddim",
        num_inference_steps=2, num_samples=16, eval_batch_size=8)
    m = result["metrics"]
    assert 0.0 <= m["non_sensitive_rate"] <= 1.0 and m["non_sensitive_rate"] * 16 == round(m["non_sensitive_rate"] * 16)
    assert m["classifier_accuracy"] == meta["test_accuracy"]
    assert m["fid"] is None and "Inception" in result["fid_error"]           # offline
    assert np.isfinite(m["fd_classifier"]) and m["fd_classifier"] >= 0
    # The class classifier's quality measures: trained on all ten digits, cached beside the other.
    assert m["class_accuracy"] == result["class_classifier"]["test_accuracy"] > 0.9
    assert result["class_classifier"]["num_classes"] == 10
    assert np.isfinite(m["fd_classes"]) and m["fd_classes"] >= 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    shares = [m[f"share_{c}"] for c in range(10)]
    assert sum(shares) == pytest.approx(1.0) and all(s * 16 == round(s * 16) for s in shares)
    assert m["sensitive_share"] == pytest.approx(sum(shares[c] for c in (1, 3, 5, 7, 9)))
    assert result["n_reference"] == TINY_N_TEST
    assert set(result["times"]) >= {"classifier_s", "sampling_s", "metrics_s", "total_s"}
    assert {"torch", "diffusers", "torchmetrics"} <= set(result["versions"])
    tables, rows = build_tables(load_results(out / "outputs" / "results"))   # report.py reads it
    tags = ("nUn100", "nUs10", "nS10", "nT40", "ep1", "steps2")     # the run's overrides: a row of their own
    assert list(rows.values()) == [f"PU ({', '.join(tags)})"] and tables[0][3][("PU", 0.1, tags, ""), DIGITS][2] == 1


def test_evaluate_with_another_sampler_writes_a_result_of_its_own(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoint / "checkpoints" / "classifiers", out / "checkpoints" / "classifiers")
    evaluate.main(evaluate.parse_args([str(tiny_checkpoint / "checkpoints" / KEY), "--output_dir", str(out),
                                       "--sampler", "ddpm", "--num_samples", "8", "--eval_batch_size", "8"]))
    results = out / "outputs" / "results"
    assert sorted(p.name for p in results.iterdir()) == [f"{KEY}_ddpm.json"]   # the run's own key untouched
    result = json.loads((results / f"{KEY}_ddpm.json").read_text())
    assert (result["sampler"], result["num_inference_steps"], result["num_samples"]) == ("ddpm", 2, 8)
    assert [p.name for p in (out / "outputs" / "images").iterdir()] == [f"{KEY}_ddpm.png"]   # its own grid


def test_evaluate_judges_a_training_state_as_its_run_with_the_state_weights(tiny_checkpoint, tmp_path):
    state = tiny_checkpoint / "checkpoints" / f"{KEY}.state" / f"checkpoint-{STATE_STEP}"
    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoint / "checkpoints" / "classifiers", out / "checkpoints" / "classifiers")
    evaluate.main(evaluate.parse_args([str(state), "--output_dir", str(out), "--num_samples", "8",
                                       "--eval_batch_size", "8"]))
    key = KEY.removesuffix("_42") + f"_ckpt{STATE_STEP}_42"        # the run's key, tagged before the seed
    result = json.loads((out / "outputs" / "results" / f"{key}.json").read_text())
    assert (result["key"], result["seed"], result["sampler"], result["num_inference_steps"], result["checkpoint"]) \
        == (key, 42, "ddim", 2, str(state))                          # sampled as the run is
    run_seconds = json.loads((tiny_checkpoint / "checkpoints" / KEY / RUN_CONFIG_FILE).read_text())["train_seconds"]
    assert 0 < result["times"]["train_s"] < run_seconds               # the training time up to the state
    assert default_output_dir(state) == tiny_checkpoint.resolve()     # its run's root, as for the run itself
    saved = load_file(state / MODEL_FILE)
    judged, _ = load_judged_model(state, CPU)
    assert all(torch.equal(weights, saved[name]) for name, weights in judged.state_dict().items())
    final, _ = load_judged_model(tiny_checkpoint / "checkpoints" / KEY, CPU)
    assert not all(torch.equal(weights, saved[name]) for name, weights in final.state_dict().items())


def copy_state(tiny_checkpoint, checkpoints, with_pipeline=True):
    """The tiny run's state at STATE_STEP (and its pipeline) copied under `checkpoints`: the copy's path."""
    state = checkpoints / f"{KEY}.state" / f"checkpoint-{STATE_STEP}"
    shutil.copytree(tiny_checkpoint / "checkpoints" / state.parent.name / state.name, state)
    if with_pipeline:
        shutil.copytree(tiny_checkpoint / "checkpoints" / KEY, checkpoints / KEY)
    return state


def test_evaluate_judges_a_multi_process_state_and_one_without_a_training_time(tiny_checkpoint, tmp_path):
    state = copy_state(tiny_checkpoint, tmp_path / "checkpoints")
    shutil.copytree(tiny_checkpoint / "checkpoints" / "classifiers", tmp_path / "checkpoints" / "classifiers")
    saved = load_file(state / MODEL_FILE)
    # A multi-process run saves the DistributedDataParallel wrapper's names; older states have no time.
    save_file({f"module.{name}": weights for name, weights in saved.items()}, state / MODEL_FILE)
    progress = torch.load(state / PROGRESS_FILE, weights_only=True)
    torch.save({k: v for k, v in progress.items() if k != "seconds"}, state / PROGRESS_FILE)
    judged, _ = load_judged_model(state, CPU)
    assert all(torch.equal(weights, saved[name]) for name, weights in judged.state_dict().items())
    evaluate.main(evaluate.parse_args([str(state), "--num_samples", "8", "--eval_batch_size", "8"]))
    key = KEY.removesuffix("_42") + f"_ckpt{STATE_STEP}_42"
    assert json.loads((tmp_path / "outputs" / "results" / f"{key}.json").read_text())["times"]["train_s"] is None


@pytest.mark.parametrize("case, says", [("unfinished run", "is not saved"), ("another run's state", "not of"),
                                        ("other settings", "was made with learning_rate = 0.5"),
                                        ("outside its run's folder", "lies outside"),
                                        ("damaged record", "is damaged"),
                                        ("damaged weights", "damaged or incomplete"),
                                        ("no progress", "damaged or incomplete")])
def test_evaluate_refuses_a_training_state_it_cannot_judge_as_its_run(tiny_checkpoint, tmp_path, case, says, capsys):
    checkpoints = tmp_path / "checkpoints"
    state = copy_state(tiny_checkpoint, checkpoints, with_pipeline=case != "unfinished run")
    record = json.loads((state / TRAINING_STATE_FILE).read_text())
    if case == "another run's state":
        (state / TRAINING_STATE_FILE).write_text(json.dumps(dict(record, key=KEY.removesuffix("_42") + "_7")))
    if case == "other settings":
        settings = dict(record["settings"], learning_rate=0.5)
        (state / TRAINING_STATE_FILE).write_text(json.dumps(dict(record, settings=settings)))
    if case == "outside its run's folder":
        state = shutil.move(state, tmp_path / state.name)
    if case == "damaged record":
        (state / TRAINING_STATE_FILE).write_text("{")
    if case == "damaged weights":
        (state / MODEL_FILE).write_bytes((state / MODEL_FILE).read_bytes()[:100])
    if case == "no progress":
        (state / PROGRESS_FILE).unlink()
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(evaluate.parse_args([str(state), "--output_dir", str(tmp_path / "out")]))
    assert exit_info.value.code == USAGE_EXIT
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["empty folder", "missing folder", "stable diffusion run"])
def test_evaluate_refuses_what_is_not_a_pixel_checkpoint(tmp_path, case, capsys):
    folder = tmp_path / "ckpt"
    if case != "missing folder":
        folder.mkdir()
    if case == "stable diffusion run":
        (folder / "model_index.json").write_text("{}")
        (folder / "run_config.json").write_text(json.dumps(dict(script="main_sd", args=dict(config_name="x"),
                                                                config={})))
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(evaluate.parse_args([str(folder), "--output_dir", str(tmp_path / "out")]))
    assert exit_info.value.code == USAGE_EXIT
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_missing_classifier_weights_file(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(evaluate.parse_args([str(tiny_checkpoint / "checkpoints" / KEY), "--output_dir",
                                           str(tmp_path / "out"), "--classifier_weights", str(tmp_path / "no.pth")]))
    assert exit_info.value.code == USAGE_EXIT and not (tmp_path / "out").exists()
