"""The sampler registry (models.SAMPLERS), the sampling loop with every sampler, and the benchmarks
that compare samplers (benchmarks/samplers.py) and time the loop (benchmarks/sampling_speed.py).

The end-to-end tests share one tiny digits run trained by main.py in this process. Its judges are
the config's real classifier architectures with untrained weights, cached where the evaluation
looks for them: the plumbing of the benchmark and of evaluate.py is under test here, not the judges
(tests/test_evaluation.py trains and checks those).
"""
import inspect
import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import evaluate
import main
from benchmarks import samplers as bench
from benchmarks import sampling_speed
from configs import get_config
from models import SAMPLERS, build_noise_scheduler, build_sampler, sampler_spec, unet_evaluations
from utils.classifier import (CLASSES, CLASSIFIER_SEED, SENSITIVITY, accuracy, build_classifier, cache_path,
                              describe, labeled_split, num_outputs)
from utils.data import dataset_spec
from utils.files import RESULTS_DIR
from utils.sampling import Sampling, generate

DIGITS = "Digits_even"
TINY_RUN = ["--config_name", DIGITS, "--n_u_normal", "100", "--n_u_sensitive", "10", "--n_s", "10", "--n_test", "40",
            "--num_epochs", "1", "--num_inference_steps", "2", "--num_eval_samples", "0"]
STOCHASTIC = ("ddpm", "ddim_eta1", "dpmpp_2m_sde", "euler_a")     # step() draws noise from the generator
DETERMINISTIC = tuple(name for name in SAMPLERS if name not in STOCHASTIC)
# Images computed at batch sizes 1 and 2 differ in the last bits of the UNet's sums, amplified by the
# scale of the initial noise (sigma_max, about 157, for Heun).
BATCH_SIZE_TOLERANCE = 1e-4     # per unit of initial noise std
CPU = torch.device("cpu")


def digits_schedule():
    return build_noise_scheduler(get_config(DIGITS))


def draw(unet, sampler, seed=0, num_samples=3, batch_size=2, steps=3, noise_scheduler=None):
    return generate(unet, noise_scheduler or digits_schedule(), Sampling(sampler, steps, num_samples, batch_size, seed))


# --- The registry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_draws_finite_images_that_its_seed_repeats(tiny_unet, sampler):
    images = draw(tiny_unet, sampler)              # two batches: the scheduler's state must not leak between them
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, draw(tiny_unet, sampler))
    assert not torch.equal(images, draw(tiny_unet, sampler, seed=1))


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_start_each_batch_afresh(tiny_unet, sampler):
    """Without step noise the generator only gives the initial noise, drawn in the same order at any
    batch size: images drawn one at a time equal those drawn together, so no solver history (multistep,
    Heun) carries from one batch into the next."""
    one_by_one = draw(tiny_unet, sampler, num_samples=2, batch_size=1)
    together = draw(tiny_unet, sampler, num_samples=2, batch_size=2)
    scheduler = build_sampler(digits_schedule(), sampler)
    scheduler.set_timesteps(3)
    noise_scale = float(scheduler.init_noise_sigma)
    assert torch.allclose(one_by_one, together, rtol=0, atol=BATCH_SIZE_TOLERANCE * noise_scale)


def old_generate(unet, noise_scheduler, scheduler_class, *, steps, num_samples, batch_size, seed):
    """The sampling loop before the registry grew: plain from_config, randn from a seeded CPU generator,
    unet(x, t), step(..., generator)."""
    scheduler = scheduler_class.from_config(noise_scheduler.config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.inference_mode():
        for start in range(0, num_samples, batch_size):
            x = torch.randn((min(batch_size, num_samples - start), 3, 8, 8), generator=generator)
            for t in scheduler.timesteps:
                eps = unet(x, t).sample
                x = scheduler.step(eps.float(), t, x, generator=generator).prev_sample
            out.append((x / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


# The config's schedule as built in memory, and a pretrained model's with explicit non-default values.
SCHEDULES = {"built": digits_schedule,
             "pretrained": lambda: DDPMScheduler(num_train_timesteps=1000, clip_sample=True,
                                                 variance_type="fixed_large")}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler,scheduler_class", [("ddpm", DDPMScheduler), ("ddim", DDIMScheduler)])
def test_ddpm_and_ddim_give_the_samples_they_gave_before_bit_for_bit(tiny_unet, schedule, sampler, scheduler_class):
    noise_scheduler = SCHEDULES[schedule]()
    old = old_generate(tiny_unet, noise_scheduler, scheduler_class, steps=4, num_samples=5, batch_size=2, seed=7)
    new = generate(tiny_unet, noise_scheduler, Sampling(sampler, num_inference_steps=4, num_samples=5, batch_size=2,
                                                        seed=7))
    assert torch.equal(old, new)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_noise_scale_and_input_scaling_are_exact_no_ops_for_ddpm_and_ddim(sampler):
    scheduler = build_sampler(digits_schedule(), sampler)
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, 8, 8)
    assert scheduler.init_noise_sigma == 1.0 and torch.equal(x * scheduler.init_noise_sigma, x)
    assert all(scheduler.scale_model_input(x, t) is x for t in scheduler.timesteps)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_keeps_the_training_schedule(sampler, tmp_path):
    """Also for a schedule built in memory, whose default values from_config would otherwise drop in
    favour of the sampler class's own (Heun's are Stable Diffusion's betas)."""
    built = digits_schedule()
    built.save_pretrained(tmp_path)
    for noise_scheduler in (built, DDPMScheduler.from_pretrained(tmp_path)):
        scheduler = build_sampler(noise_scheduler, sampler)
        assert isinstance(scheduler, SAMPLERS[sampler].scheduler)
        assert torch.equal(scheduler.alphas_cumprod, built.alphas_cumprod)
        assert scheduler.config.prediction_type == "epsilon"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_table_says_what_step_accepts(sampler):
    spec = SAMPLERS[sampler]
    accepted = inspect.signature(spec.scheduler.step).parameters
    assert ("generator" in accepted) == spec.takes_generator
    assert set(spec.step_kwargs) <= set(accepted)


def test_ddim_variants_differ_only_in_eta():
    assert SAMPLERS["ddim"].step_kwargs == dict(eta=0.0) and SAMPLERS["ddim_eta1"].step_kwargs == dict(eta=1.0)
    assert SAMPLERS["ddim"].scheduler is SAMPLERS["ddim_eta1"].scheduler and not SAMPLERS["ddim_eta1"].overrides


def test_unet_evaluations_count_every_timestep_visited():
    schedule = digits_schedule()
    for sampler in SAMPLERS:
        expected = 2 * 25 - 1 if sampler == "heun" else 25     # Heun: two a step, one in the last
        assert unet_evaluations(schedule, sampler, 25) == expected
    assert unet_evaluations(schedule, "ddpm", 1000) == 1000


def test_unknown_sampler_is_a_key_error_listing_the_valid_names():
    with pytest.raises(KeyError, match=", ".join(SAMPLERS)):
        build_sampler(digits_schedule(), "euler")
    with pytest.raises(KeyError, match="dpmpp_2m"):
        sampler_spec("dpm")


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_draws_on_cuda_what_it_draws_on_the_cpu(tiny_unet, sampler, monkeypatch):
    """The noise comes from the seeded CPU generator whatever the device, so CUDA's images are the
    CPU's up to the kernels' rounding (TF32 off, so only that), amplified by the initial noise's scale."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = draw(tiny_unet, sampler)
    cuda = draw(tiny_unet.to("cuda"), sampler)
    scheduler = build_sampler(digits_schedule(), sampler)
    scheduler.set_timesteps(3)
    assert cuda.device.type == "cpu"
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=10 * BATCH_SIZE_TOLERANCE * float(scheduler.init_noise_sigma))


# --- The pass rule ----------------------------------------------------------------------------------

REFERENCE = dict(sensitive_share=0.10, shares={"0": 0.30, "1": 0.05, "2": 0.30, "3": 0.05, "4": 0.30},
                 precision=0.60, recall=0.50, fd_classes=2.0, unet_evaluations=1000)
SECOND = dict(REFERENCE, sensitive_share=0.105, fd_classes=2.5)     # spreads: 0.005 and 0.5
ONE_SAMPLE = 0.001                                                 # one sample in 1,000 beyond a tolerance


def shifted(field, delta):
    """A candidate equal to REFERENCE but for `field` moved by `delta` (a class share: class 0's)."""
    if field == "shares":
        return dict(REFERENCE, shares=dict(REFERENCE["shares"], **{"0": REFERENCE["shares"]["0"] + delta}),
                    unet_evaluations=100)
    return dict(REFERENCE, unet_evaluations=100, **{field: REFERENCE[field] + delta})


@pytest.mark.parametrize("field,check,tolerance", [
    ("sensitive_share", "sensitive_share", bench.MIN_SENSITIVE_SHARE_TOLERANCE),
    ("shares", "class_shares", bench.CLASS_SHARE_TOLERANCE),
    ("precision", "precision", bench.PRECISION_RECALL_TOLERANCE),
    ("recall", "recall", bench.PRECISION_RECALL_TOLERANCE),
    ("fd_classes", "fd_classes", 0.5)])                           # the references' own spread
@pytest.mark.parametrize("sign", [1, -1])
def test_pass_rule_holds_at_each_tolerance_and_fails_just_beyond(field, check, tolerance, sign):
    assert bench.passes(shifted(field, sign * tolerance), REFERENCE, SECOND)
    checks = bench.pass_checks(shifted(field, sign * (tolerance + ONE_SAMPLE)), REFERENCE, SECOND)
    assert [name for name, ok in checks.items() if not ok] == [check]


def test_pass_rule_allows_a_tenth_of_the_references_unet_evaluations():
    assert bench.passes(dict(REFERENCE, unet_evaluations=100), REFERENCE, SECOND)
    checks = bench.pass_checks(dict(REFERENCE, unet_evaluations=101), REFERENCE, SECOND)
    assert [name for name, ok in checks.items() if not ok] == ["unet_evaluations"]


def test_a_wider_reference_spread_widens_the_sensitive_share_tolerance():
    spread = dict(SECOND, sensitive_share=0.13)                    # 3 points apart, more than the 1-point floor
    assert bench.passes(shifted("sensitive_share", 0.025), REFERENCE, spread)
    assert not bench.passes(shifted("sensitive_share", 0.025), REFERENCE, SECOND)
    assert not bench.passes(shifted("sensitive_share", 0.031), REFERENCE, spread)


def test_a_missing_precision_fails_rather_than_passes():
    assert not bench.pass_checks(dict(REFERENCE, precision=None, unet_evaluations=100), REFERENCE, SECOND)["precision"]


def test_class_share_z_is_the_difference_in_binomial_standard_errors():
    # 0.30 against 0.33 of 1,000 draws each: pooled 0.315, sqrt(0.315 * 0.685 * 2 / 1000) = 0.020774.
    assert bench.share_difference_z(0.30, 0.33, 1000, 1000) == pytest.approx(0.03 / 0.020774, rel=1e-4)
    assert bench.share_difference_z(0.0, 0.0, 400, 1000) == 0.0
    assert bench.share_difference_z(0.0, 1.0, 400, 1000) > 20       # all against none: no noise explains it
    a = dict(num_samples=1000, shares={"0": 0.30, "1": 0.70})
    b = dict(num_samples=1000, shares={"0": 0.33, "1": 0.62, "2": 0.05})     # class 2 unseen in a
    # Class 1 differs most (0.08, z 3.8), class 2 is least likely to by chance: pooled 0.025, z 7.16.
    assert bench.largest_share_z(a, b) == pytest.approx(0.05 / (0.025 * 0.975 * 2 / 1000) ** 0.5)


def test_candidates_parse_and_bad_ones_say_what_to_write():
    args = bench.parse_args(["ckpt", "--output_dir", "out", "--candidates", "dpmpp_2m:20,50", "unipc:25"])
    assert bench.unique(args.candidates) == [("dpmpp_2m", 20), ("dpmpp_2m", 50), ("unipc", 25)]
    defaults = bench.unique(bench.parse_args(["ckpt", "--output_dir", "out"]).candidates)
    assert len(defaults) == 20 and ("heun", 50) in defaults and all(s in SAMPLERS for s, _ in defaults)
    for bad in ("euler:20", "unipc", "unipc:0", "unipc:a"):
        with pytest.raises(SystemExit):
            bench.parse_args(["ckpt", "--output_dir", "out", "--candidates", bad])


# --- End to end on a tiny run -----------------------------------------------------------------------

def write_untrained_judges(root):
    """The digits' sensitivity and class classifiers, seeded and untrained, cached under `root` where
    load_or_train_classifier finds them, with their true held-out accuracy."""
    config = get_config(DIGITS)
    recipe = dataset_spec(config.dataset).classifier
    for task in (SENSITIVITY, CLASSES):
        torch.manual_seed(CLASSIFIER_SEED)
        model, init = build_classifier(config, recipe.arch, "scratch", num_outputs=num_outputs(config, task))
        test_set = labeled_split(config, "datasets", train=False, task=task)
        meta = dict(describe(DIGITS, config, recipe, init, CLASSIFIER_SEED, task), n_train=0, n_test=len(test_set),
                    train_seconds=0.0, test_accuracy=accuracy(model.eval(), test_set, CPU))
        path = cache_path(root, DIGITS, config, recipe.arch, init, CLASSIFIER_SEED, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(state_dict=model.state_dict(), meta=meta), path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(checkpoint folder, a root holding the judges) of a one-epoch digits run by main.py."""
    out = tmp_path_factory.mktemp("run")
    main.main(main.parse_args([*TINY_RUN, "--output_dir", str(out)]))
    checkpoint, = (p for p in (out / "checkpoints").iterdir() if p.name.startswith("main_") and p.is_dir()
                   and not p.name.endswith(".state"))
    judges = tmp_path_factory.mktemp("judges")
    write_untrained_judges(judges)
    return checkpoint, judges


@pytest.fixture
def no_inception(monkeypatch, offline, tmp_path):
    """No Inception weights to be had: FID is skipped at once, as on an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def root_with_judges(judges, root):
    shutil.copytree(judges, root, dirs_exist_ok=True)
    return root


MEASUREMENT_FIELDS = {"checkpoint", "checkpoint_key", "config_name", "sampler", "steps", "seed", "num_samples",
                      "batch_size", "device", "dtype", "seconds", "unet_evaluations", "shares", "sensitive_share",
                      "non_sensitive_rate", "fd_classes", "precision", "recall", "fd_classifier", "fid"}


def test_benchmark_tables_every_draw_and_resumes_from_its_cache(tiny_run, tmp_path, capsys, no_inception):
    checkpoint, judges = tiny_run
    out = root_with_judges(judges, tmp_path / "bench")
    argv = [str(checkpoint), "--output_dir", str(out), "--num_samples", "8", "--eval_batch_size", "4",
            "--reference_steps", "20", "--candidates", "ddim:2", "heun:2", "--json", str(out / "summary.json")]
    first = bench.main(bench.parse_args(argv))
    err = capsys.readouterr().err
    assert "0 measurements cached" in err and err.count("measuring ") == 4

    result, = first["checkpoints"]
    reference, second = result["reference"], result["second_reference"]
    assert (reference["sampler"], reference["steps"], second["seed"] - reference["seed"]) == ("ddpm", 20, 1)
    assert [(c["sampler"], c["steps"], c["unet_evaluations"]) for c in result["candidates"]] == [
        ("ddim", 2, 2), ("heun", 2, 3)]
    for measurement in (reference, second, *result["candidates"]):
        assert MEASUREMENT_FIELDS <= set(measurement) and measurement["num_samples"] == 8
        assert sum(measurement["shares"].values()) == pytest.approx(1.0) and len(measurement["shares"]) == 10
    heun = result["candidates"][1]
    assert not heun["checks"]["unet_evaluations"] and not heun["passes"]     # 3 evaluations > a tenth of 20
    assert json.loads((out / "summary.json").read_text())["checkpoints"] == json.loads(json.dumps(first["checkpoints"]))
    cache = json.loads((out / bench.CACHE_FILE).read_text())["measurements"]
    assert len(cache) == 4 and all(key.startswith(f"{checkpoint.name}|") for key in cache)

    again = bench.main(bench.parse_args(argv))
    err = capsys.readouterr().err
    assert "4 measurements cached" in err and "0 to measure" in err and "measuring" not in err
    assert again["checkpoints"] == json.loads(json.dumps(first["checkpoints"]))

    del cache[next(k for k in cache if "|heun|" in k)]           # as if stopped before the last draw
    (out / bench.CACHE_FILE).write_text(json.dumps(dict(measurements=cache)))
    bench.main(bench.parse_args(argv))
    captured = capsys.readouterr()
    assert captured.err.count("measuring ") == 1 and "|heun|" in captured.err
    table = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2 + 2                               # header, the two references, the candidates
    assert all(line.count(" | ") == len(bench.TABLE_COLUMNS) - 1 for line in table)
    assert "| heun | 2 | 3 |" in captured.out and "no: " in captured.out
    assert captured.out.strip().splitlines()[-1].startswith("passes on every checkpoint: ")
    assert "heun" not in captured.out.strip().splitlines()[-1]

    # --cached_only measures nothing: a candidate not cached yet is left out, missing references leave no table.
    cache = json.loads((out / bench.CACHE_FILE).read_text())["measurements"]
    del cache[next(k for k in cache if "|heun|" in k)]
    (out / bench.CACHE_FILE).write_text(json.dumps(dict(measurements=cache)))
    partial = bench.main(bench.parse_args([*argv, "--cached_only"]))
    captured = capsys.readouterr()
    assert "measuring" not in captured.err and "(of the cached measurements only)" in captured.out
    assert [c["sampler"] for c in partial["checkpoints"][0]["candidates"]] == ["ddim"]
    del cache[next(k for k in cache if "|ddpm|" in k)]
    (out / bench.CACHE_FILE).write_text(json.dumps(dict(measurements=cache)))
    assert bench.main(bench.parse_args([*argv, "--cached_only"]))["checkpoints"] == []
    assert "reference draws are not measured yet" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_evaluate_samples_with_every_sampler_and_records_it(tiny_run, tmp_path, sampler, no_inception):
    checkpoint, judges = tiny_run
    out = root_with_judges(judges, tmp_path / "eval")
    evaluate.main(evaluate.parse_args([str(checkpoint), "--output_dir", str(out), "--sampler", sampler,
                                       "--num_inference_steps", "3", "--num_samples", "8", "--eval_batch_size", "4"]))
    result_file, = (out / RESULTS_DIR).iterdir()
    result = json.loads(result_file.read_text())
    assert (result["sampler"], result["num_inference_steps"], result["num_samples"]) == (sampler, 3, 8)
    assert 0 <= result["metrics"]["non_sensitive_rate"] <= 1


def test_sampling_speed_benchmark_compares_variants_with_the_default(tmp_path, capsys):
    args = sampling_speed.parse_args(["--config_name", DIGITS, "--steps", "1", "--num_samples", "4",
                                      "--batch_sizes", "2", "--threads", "1",
                                      "--variants", "batch", "threads", "no_grad", "channels_last", "bf16",
                                      "--json", str(tmp_path / "speed.json")])
    result = sampling_speed.main(args)
    rows = {row["name"]: row for row in result["variants"]}
    assert list(rows) == ["default", "batch 2", "1 thread", "no_grad", "channels_last", "bf16 autocast"]
    assert rows["default"]["speedup"] == 1.0 and rows["default"]["identical"]
    assert rows["no_grad"]["identical"]                          # the same loop, only the grad mode differs
    assert rows["batch 2"]["batch_size"] == 2 and rows["1 thread"]["threads"] == 1
    assert all(row["seconds"] > 0 and row["max_abs_diff"] is not None for row in rows.values())
    assert json.loads((tmp_path / "speed.json").read_text())["variants"][0]["name"] == "default"
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
