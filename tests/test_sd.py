"""Stable Diffusion: the data folder check, the model input, main-sd.py, make-sd-data.py, evaluate-sd.py.

Every model is a tiny one saved by tests/tiny_models.py (16 px images, 8 x 8 latents), and the
scripts run in-process through their `main`, as `python <script>` would run them.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from configs import with_overrides
from configs.sd import SD_CONFIG
from fixtures import write_coloured_sd_folder
from tiny_models import load_script, save_tiny_clip, save_tiny_stable_diffusion
from models.pretrained import training_noise_scheduler
from utils.sd import SDImageDataset, frozen_copy, make_sd_model_input, validate_sd_folder

RESOLUTION = 16     # the tiny pipeline's native size
N_UNLABELED, N_POSITIVE = 4, 2


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return dict(sd=save_tiny_stable_diffusion(root / "sd"), clip=save_tiny_clip(root / "clip"))


def write_sd_folder(root, n_unlabeled=N_UNLABELED, n_positive=N_POSITIVE, seed=0):
    """Random non-square PNGs (one grayscale) in the two subfolders main-sd.py reads."""
    rng = np.random.default_rng(seed)
    for folder, n in ((SD_CONFIG.unlabeled_dir, n_unlabeled), (SD_CONFIG.positive_dir, n_positive)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
            (image.convert("L") if i == 0 else image).save(root / folder / f"{i:03d}.png")
    return root


def sd_config():
    return with_overrides(SD_CONFIG, resolution=RESOLUTION)


def test_dataset_items_and_model_input(tmp_path, tiny_sd):
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    files = validate_sd_folder(write_sd_folder(tmp_path / "data"), SD_CONFIG)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd["sd"], safety_checker=None,
                                                   requires_safety_checker=False)
    config = sd_config()
    dataset = SDImageDataset(files, config, pipe.tokenizer)
    assert len(dataset) == N_UNLABELED + N_POSITIVE
    pixels, ids, y = zip(*(dataset[i] for i in range(len(dataset))))
    assert list(y) == [0] * N_UNLABELED + [1] * N_POSITIVE
    assert all(p.shape == (3, RESOLUTION, RESOLUTION) and -1 <= p.min() and p.max() <= 1 for p in pixels)
    assert ids[0].shape == (pipe.tokenizer.model_max_length,) == (77,)
    assert not torch.equal(ids[0], ids[-1])     # the two captions differ

    vae = frozen_copy(pipe.vae, "cpu", torch.float32)
    text_encoder = frozen_copy(pipe.text_encoder, "cpu", torch.float32)
    batch = (torch.stack(pixels), torch.stack(ids), torch.tensor(y))
    torch.manual_seed(1)
    latents, embeddings, labels = make_sd_model_input(vae, text_encoder)(batch)
    torch.manual_seed(1)
    with torch.no_grad():
        expected = pipe.vae.encode(batch[0]).latent_dist.sample() * pipe.vae.config.scaling_factor
    assert pipe.vae.config.scaling_factor == 0.18215
    torch.testing.assert_close(latents, expected)
    assert latents.shape == (len(y), 4, RESOLUTION // 2, RESOLUTION // 2)
    assert embeddings.shape == (len(y), 77, pipe.text_encoder.config.hidden_size)
    assert not latents.requires_grad and not embeddings.requires_grad
    assert torch.equal(labels, batch[2])

    # Training noises latents on the pipeline's own schedule (SD v1-4's scaled-linear betas).
    noise_scheduler = training_noise_scheduler(pipe.scheduler, tiny_sd["sd"])
    assert isinstance(noise_scheduler, DDPMScheduler)
    torch.testing.assert_close(noise_scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)


@pytest.mark.parametrize("damage, message", [("missing_positive", "1_positive is missing"),
                                             ("empty_positive", "1_positive holds no images"),
                                             ("corrupt_image", "001.png is not a readable image")])
def test_bad_sd_folder_exits_2_and_writes_nothing(tmp_path, tiny_sd, damage, message, capsys):
    data = write_sd_folder(tmp_path / "data")
    positive = data / SD_CONFIG.positive_dir
    if damage == "missing_positive":
        for f in positive.iterdir():
            f.unlink()
        positive.rmdir()
    elif damage == "empty_positive":
        for f in positive.iterdir():
            f.unlink()
    else:
        (data / SD_CONFIG.unlabeled_dir / "001.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    script = load_script("main-sd.py")
    with pytest.raises(SystemExit) as exit_info:
        script.main(script.parse_args(["--data_dir", str(data), "--pretrained_model", str(tiny_sd["sd"]),
                                       "--output_dir", str(out), "--clip_model", str(tiny_sd["clip"])]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    if damage != "corrupt_image":
        assert "expected" in err and "0_unlabeled" in err     # the message shows the expected tree
    assert not out.exists()


def test_main_sd_trains_only_the_unet_and_evaluates(tmp_path, tiny_sd, capsys):
    data = write_sd_folder(tmp_path / "data")
    out = tmp_path / "out"
    script = load_script("main-sd.py")
    script.main(script.parse_args([
        "--algorithm", "PU", "--data_dir", str(data), "--pretrained_model", str(tiny_sd["sd"]),
        "--output_dir", str(out), "--num_epochs", "1", "--batch_size", "3", "--resolution", str(RESOLUTION),
        "--num_inference_steps", "2", "--num_workers", "0", "--num_eval_samples", "4",
        "--clip_model", str(tiny_sd["clip"])]))
    key = f"main_sd_PU_0.1_ep1_bs3_steps2_res{RESOLUTION}_42"
    assert "epoch 1/1 " in capsys.readouterr().out     # --num_epochs overrides the config's 1000
    ckpt = out / "checkpoints" / key
    for part in ("vae", "text_encoder", "unet"):
        before = load_file(next((tiny_sd["sd"] / part).glob("*.safetensors")))
        after = load_file(next((ckpt / part).glob("*.safetensors")))
        assert before.keys() == after.keys()
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same == (part != "unet"), part
    run_config = json.loads((ckpt / "run_config.json").read_text())
    assert run_config["config"]["learning_rate"] == SD_CONFIG.pu_learning_rate
    assert run_config["data"] == dict(n_unlabeled=N_UNLABELED, n_positive=N_POSITIVE)
    # The resolved config names the data, the model and the judge this run used, not the defaults.
    assert {k: run_config["config"][k] for k in ("data_dir", "pretrained_model", "clip_model")} == dict(
        data_dir=str(data), pretrained_model=str(tiny_sd["sd"]), clip_model=str(tiny_sd["clip"]))
    for name in ("brad_pitt", "middle_aged_man"):
        with Image.open(out / "outputs" / "images" / f"{key}_{name}.png") as grid:
            assert grid.size == (4 * RESOLUTION + 5 * 2,) * 2     # 4 x 4 with torchvision's 2 px padding
    result = json.loads((out / "outputs" / "results" / f"{key}.json").read_text())
    assert result["config_name"] == "SD" and result["script"] == "main_sd" and result["num_samples"] == 4
    assert result["num_inference_steps"] == 2
    assert (result["algorithm"], result["beta"], result["seed"]) == ("PU", 0.1, 42)
    shares = result["metrics"]
    assert set(shares) == {"brad_pitt_share_brad_pitt_prompt", "brad_pitt_share_man_prompt"}
    assert all(v in (0, 0.25, 0.5, 0.75, 1) for v in shares.values())

    # evaluate-sd.py draws the same seeded samples from the saved pipeline, so it agrees exactly.
    evaluate = load_script("evaluate-sd.py")
    results = tmp_path / "ev" / "outputs" / "results"
    for steps in ([], ["--num_inference_steps", "3"]):
        evaluate.main(evaluate.parse_args(["--checkpoint", str(ckpt), "--num_samples", "4", *steps,
                                           "--clip_model", str(tiny_sd["clip"]), "--output_dir", str(tmp_path / "ev")]))
    again = json.loads((results / f"{key}.json").read_text())
    assert again["metrics"] == shares and again["key"] == key and again["num_inference_steps"] == 2
    # Another step count is another result, tagged like evaluate.py's, beside the run's own.
    other = json.loads((results / f"{key}_steps3.json").read_text())
    assert other["run_key"] == key and other["num_inference_steps"] == 3
    # It redraws the run's grids too (a run stopped before writing them is completed), pixel for pixel.
    for name in ("brad_pitt", "middle_aged_man"):
        with Image.open(out / "outputs" / "images" / f"{key}_{name}.png") as grid, \
                Image.open(tmp_path / "ev" / "outputs" / "images" / f"{key}_{name}.png") as redrawn:
            assert np.array_equal(np.asarray(grid), np.asarray(redrawn))
        assert (tmp_path / "ev" / "outputs" / "images" / f"{key}_steps3_{name}.png").is_file()


def test_make_sd_data_writes_the_tree_and_resumes(tmp_path, tiny_sd):
    script = load_script("make-sd-data.py")
    out = tmp_path / "made"
    argv = ["--pretrained_model", str(tiny_sd["sd"]), "--output_dir", str(out), "--num_inference_steps", "2",
            "--batch_size", "2", "--num_unlabeled_man", "3", "--num_unlabeled_brad_pitt", "1",
            "--num_positive_brad_pitt", "2"]
    script.main(script.parse_args(argv))
    names = {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()}
    assert names == {"0_unlabeled/man_0000.png", "0_unlabeled/man_0001.png", "0_unlabeled/man_0002.png",
                     "0_unlabeled/brad_pitt_0000.png",
                     "1_positive/brad_pitt_0000.png", "1_positive/brad_pitt_0001.png"}
    files = validate_sd_folder(out, SD_CONFIG)
    assert [len(files[0]), len(files[1])] == [4, 2]
    pixels = {n: np.asarray(Image.open(out / n)) for n in names}
    assert all(p.shape == (RESOLUTION, RESOLUTION, 3) for p in pixels.values())
    # Each image has its own seed: far apart, so "equal up to rounding" below means "the same seed".
    assert np.abs(pixels["0_unlabeled/man_0000.png"].astype(int) - pixels["0_unlabeled/man_0001.png"]).max() > 10
    # Same prompt, different seed offsets: the unlabeled and positive Brad Pitt images differ.
    assert not np.array_equal(pixels["0_unlabeled/brad_pitt_0000.png"], pixels["1_positive/brad_pitt_0000.png"])

    mtimes = {n: (out / n).stat().st_mtime_ns for n in names}
    deleted = "0_unlabeled/man_0001.png"
    (out / deleted).unlink()
    script.main(script.parse_args(argv))
    assert {n: (out / n).stat().st_mtime_ns for n in names if n != deleted} == \
           {n: t for n, t in mtimes.items() if n != deleted}
    redrawn = np.asarray(Image.open(out / deleted)).astype(int)
    # Drawn in another batch: equal up to one grey level of floating-point rounding.
    assert np.abs(redrawn - pixels[deleted]).max() <= 1


def test_missing_pretrained_part_exits_2(tmp_path, tiny_sd, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd["sd"], broken)
    shutil.rmtree(broken / "tokenizer")
    script = load_script("make-sd-data.py")
    with pytest.raises(SystemExit) as exit_info:
        script.main(script.parse_args(["--pretrained_model", str(broken), "--output_dir", str(tmp_path / "made")]))
    assert exit_info.value.code == 2
    assert "has no tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "made").exists()


def test_main_sd_beta_auto_estimates_the_prior_from_clip_features_and_keys_it(tmp_path, tiny_sd, capsys):
    """--beta auto on the SD folders: estimated once (utils.prior on CLIP image features), trained with,
    recorded beside the pipeline and in the results, and named `auto` in the key."""
    # 9 + 1 in U, 5 in S (5 folds need 5): colours that any features separate, or the estimate is 1.
    data = write_coloured_sd_folder(tmp_path / "data", 9, 1, 5)
    out = tmp_path / "out"
    script = load_script("main-sd.py")
    argv = ["--algorithm", "PU", "--beta", "auto", "--data_dir", str(data), "--pretrained_model", str(tiny_sd["sd"]),
            "--output_dir", str(out), "--num_epochs", "1", "--batch_size", "5", "--resolution", str(RESOLUTION),
            "--num_inference_steps", "2", "--num_workers", "0", "--num_eval_samples", "1",
            "--clip_model", str(tiny_sd["clip"]), "--resume_from_checkpoint", "latest"]
    script.main(script.parse_args(argv))
    assert "beta auto: " in capsys.readouterr().out
    key = f"main_sd_PU_auto_ep1_bs5_steps2_res{RESOLUTION}_42"
    record = json.loads((out / "checkpoints" / key / "run_config.json").read_text())
    estimate = record["beta_estimate"]
    assert record["beta"] == estimate["estimate"] and estimate["method"].endswith("of CLIP image features")
    assert (estimate["n_u"], estimate["n_s"]) == (10, 5) and 0.0 <= estimate["estimate"] < 1.0
    assert estimate["interval"][1] >= 0.1     # the truth, 1 in 10, below the upper end
    result = json.loads((out / "outputs" / "results" / f"{key}.json").read_text())
    assert result["beta"] == record["beta"] and result["beta_estimate"] == estimate
    # Re-run: finished, and nothing is estimated again.
    script.main(script.parse_args(argv))
    again = capsys.readouterr().out
    assert "nothing to train" in again and "beta auto" not in again


def test_main_sd_learns_any_concept_from_image_folders(tmp_path, tiny_sd, capsys):
    """--sensitive_prompt and --normal_prompt: S's and U's captions, the sampled prompts and CLIP's labels,
    on the image folders' layout (unlabeled/, sensitive/, nested); evaluate-sd.py takes the run's prompts."""
    rng = np.random.default_rng(0)
    data = tmp_path / "cars"
    for folder, n in (("unlabeled/more", 3), ("unlabeled", 1), ("sensitive", 2)):
        (data / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(data / folder / f"{i}.jpg")
    out = tmp_path / "out"
    prompts = ["--sensitive_prompt", "a photo of a red car", "--normal_prompt", "a photo of a car"]
    script = load_script("main-sd.py")
    script.main(script.parse_args([
        "--train_data_dir", str(data), *prompts, "--pretrained_model", str(tiny_sd["sd"]), "--output_dir", str(out),
        "--num_epochs", "1", "--batch_size", "3", "--resolution", str(RESOLUTION), "--num_inference_steps", "2",
        "--num_workers", "0", "--num_eval_samples", "2", "--clip_model", str(tiny_sd["clip"])]))
    assert "4 unlabeled in unlabeled/" in capsys.readouterr().out
    key = f"main_sd_PU_0.1_ep1_bs3_steps2_res{RESOLUTION}_42"
    config = json.loads((out / "checkpoints" / key / "run_config.json").read_text())["config"]
    assert (config["positive_caption"], config["unlabeled_caption"]) == ("a photo of a red car", "a photo of a car")
    assert (config["unlabeled_dir"], config["positive_dir"]) == ("unlabeled", "sensitive")
    assert config["clip_labels"] == ["a photo of a red car", "a photo of a car"]
    for name in ("red_car", "car"):
        assert (out / "outputs" / "images" / f"{key}_{name}.png").is_file()
    result = json.loads((out / "outputs" / "results" / f"{key}.json").read_text())
    assert set(result["metrics"]) == {"red_car_share_red_car_prompt", "red_car_share_car_prompt"}
    assert result["prompts"] == {"red_car_share_red_car_prompt": "a photo of a red car",
                                 "red_car_share_car_prompt": "a photo of a car"}

    evaluate = load_script("evaluate-sd.py")
    ev = tmp_path / "ev"
    for extra in ([], ["--sensitive_prompt", "a photo of a blue car"]):
        evaluate.main(evaluate.parse_args(["--checkpoint", str(out / "checkpoints" / key), "--num_samples", "2",
                                           "--clip_model", str(tiny_sd["clip"]), "--output_dir", str(ev), *extra]))
    again = json.loads((ev / "outputs" / "results" / f"{key}.json").read_text())
    assert again["metrics"] == result["metrics"]           # the run's own prompts, drawn alike
    other = json.loads((ev / "outputs" / "results" / f"{key}_blue_car_vs_car.json").read_text())
    assert set(other["metrics"]) == {"blue_car_share_blue_car_prompt", "blue_car_share_car_prompt"}


def test_prompts_keep_the_default_experiment_as_it_is(capsys):
    from configs.sd import BRAD_PITT, MIDDLE_AGED_MAN, prompt_name, with_prompts
    assert with_prompts(SD_CONFIG, BRAD_PITT, MIDDLE_AGED_MAN) is SD_CONFIG
    assert [prompt_name(p.prompt) for p in SD_CONFIG.sample_prompts] == [p.name for p in SD_CONFIG.sample_prompts]
    assert prompt_name("A picture of the Eiffel Tower, at night!") == "eiffel_tower_at_night"
    script = load_script("main-sd.py")
    args = script.parse_args([])
    assert (args.sensitive_prompt, args.normal_prompt) == (BRAD_PITT, MIDDLE_AGED_MAN)
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    assert "--sensitive_prompt" in capsys.readouterr().out


def test_make_sd_data_draws_any_concept(tmp_path, tiny_sd):
    script = load_script("make-sd-data.py")
    out = tmp_path / "made"
    script.main(script.parse_args(["--pretrained_model", str(tiny_sd["sd"]), "--output_dir", str(out),
                                   "--num_inference_steps", "2", "--num_unlabeled_man", "2",
                                   "--num_unlabeled_brad_pitt", "1", "--num_positive_brad_pitt", "1",
                                   "--sensitive_prompt", "a photo of a red car", "--normal_prompt", "a photo of a car"]))
    names = {f.relative_to(out).as_posix() for f in out.rglob("*.png")}
    assert names == {"0_unlabeled/car_0000.png", "0_unlabeled/car_0001.png", "0_unlabeled/red_car_0000.png",
                     "1_positive/red_car_0000.png"}
