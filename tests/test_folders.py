"""Image folders as data (utils/folders.py): main.py, main-ft.py and evaluate.py on them, any pretrained
DDPM, evaluate.py on a pipeline this project did not train, the folder export, and the refusals.

The folders are written here (tests/fixtures.write_image_folder): PNGs and JPEGs, grayscale or RGB, of
two sizes, some in nested folders; normal images dark, sensitive ones bright, so that the folder's
judge learns them in its few epochs. The scripts run in this process through `main(parse_args(argv))`,
offline (no Inception weights: FID is null with its reason).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from configs import get_config, with_overrides
from fixtures import refused, write_image_folder
from tiny_models import load_script, save_tiny_ddpm
from utils.errors import USAGE_EXIT_CODE, UsageError
from utils.folders import TEST_NORMAL, TEST_SENSITIVE, folder_name, list_images, load_folder_data, load_images, \
    scan_folder

RECIPE = "FashionMNIST_clothes_cpu"      # the default recipe of folder runs: 16 px, a small CNN judge
QUICK = ["--num_epochs", "1", "--batch_size", "8", "--num_inference_steps", "2", "--num_eval_samples", "8"]
TAGS = "ep1_bs8_steps2"


def run_script(script, argv):
    module = load_script(script)
    module.main(module.parse_args([str(a) for a in argv]))


def result_of(out, key):
    return json.loads((out / "outputs" / "results" / f"{key}.json").read_text())


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    """An RGB folder with labeled test images: U = 20 normal + 2 sensitive, S = 5, test 6 + 6."""
    return write_image_folder(tmp_path_factory.mktemp("rgb") / "faces", 20, 2, 5, n_test=6, n_test_sensitive=6)


@pytest.fixture(scope="module")
def main_run(rgb_folder, tmp_path_factory):
    """main.py on the RGB folder: (output dir, key)."""
    out = tmp_path_factory.mktemp("main_run")
    run_script("main.py", ["--train_data_dir", rgb_folder, "--resolution", "16", "--algorithm", "PU", "--seed", "0",
                           "--output_dir", out, *QUICK])
    return out, f"main_faces_PU_0.1_{TAGS}_0"


# --- the folder itself ------------------------------------------------------------------------------

def test_scan_lists_nested_images_of_any_format_and_skips_the_rest(tmp_path):
    root = write_image_folder(tmp_path / "data", 4, 1, 2, n_test=2)
    (root / "unlabeled" / "notes.txt").write_text("not an image")
    (root / "unlabeled" / ".hidden.png").write_bytes(b"half-written")
    Image.new("RGB", (9, 7)).save(root / "unlabeled" / "nested" / "extra.bmp")
    folder = scan_folder(root)
    assert folder.root == root.resolve() and folder.name == "data"
    assert len(folder.unlabeled) == 6 and len(folder.sensitive) == 2 and len(folder.test_normal) == 2
    assert folder.test_sensitive == () and not folder.has_judge
    assert {p.suffix for p in folder.unlabeled} == {".png", ".jpg", ".bmp"}
    assert any("deeper" in str(p) for p in folder.unlabeled)
    assert list(folder.unlabeled) == sorted(folder.unlabeled) == list_images(root / "unlabeled")


def test_images_are_resized_on_the_short_side_centre_cropped_and_given_the_channel_count(tmp_path):
    # 32 x 8 (width x height): a red left quarter, a green middle half, a blue right quarter.
    pixels = np.zeros((8, 32, 3), dtype=np.uint8)
    pixels[:, :8, 0], pixels[:, 8:24, 1], pixels[:, 24:, 2] = 255, 255, 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.png")
    rgb = load_images([tmp_path / "wide.png", tmp_path / "gray.png"], 4, 3)
    assert rgb.shape == (2, 3, 4, 4) and rgb.dtype == torch.float32
    # Short side 8 -> 4 makes it 16 x 4; the centre 4 columns lie well inside the green half.
    torch.testing.assert_close(rgb[0, 1], torch.ones(4, 4))
    assert rgb[0, 0].max() == 0 and rgb[0, 2].max() == 0
    assert torch.equal(rgb[1, 0], rgb[1, 1]) and torch.equal(rgb[1, 1], rgb[1, 2])    # grayscale as RGB
    gray = load_images([tmp_path / "wide.png"], 4, 1)
    assert gray.shape == (1, 1, 4, 4)
    torch.testing.assert_close(gray[0, 0], torch.full((4, 4), 150 / 255), atol=1 / 255, rtol=0)   # L of green


def test_folder_data_is_s_then_u_in_file_order(tmp_path):
    root = write_image_folder(tmp_path / "data", 6, 1, 3, n_test=2, n_test_sensitive=2, mode="L",
                              sizes=((10, 10), (14, 10)))
    folder = scan_folder(root)
    config = get_config(RECIPE)
    from utils.folders import folder_config
    config = with_overrides(folder_config(config, folder), image_size=8, channels=1, batch_size=4)
    data = load_folder_data(config)
    assert data.train.images.shape == (10, 1, 8, 8)
    assert data.train.images.min() >= -1 and data.train.images.max() <= 1
    assert data.train.labels.tolist() == [1] * 3 + [0] * 7
    assert torch.equal(data.train.images[:3], load_images(folder.sensitive, 8, 1) * 2 - 1)
    assert data.counts() == dict(n_unlabeled=7, n_s=3, n_test=2, n_test_sensitive=2, n_u_normal=None,
                                 n_u_sensitive=None)
    assert config.true_prior is None     # U's labels are unknown


def test_folder_names_are_safe_for_keys(tmp_path):
    assert folder_name(tmp_path / "my faces (2024)") == "my-faces-2024"
    assert folder_name(tmp_path / "set_v1.2") == "set_v1.2"
    assert folder_name(tmp_path / "data" / ".") == "data"


# --- main.py on folders ---------------------------------------------------------------------------------

def test_main_py_trains_on_folders_and_judges_with_the_folders_test_images(main_run, rgb_folder):
    out, key = main_run
    checkpoint = out / "checkpoints" / key
    record = json.loads((checkpoint / "run_config.json").read_text())
    assert record["config_name"] == "faces" and record["args"]["config_name"] == RECIPE
    assert record["config"]["train_data_dir"] == str(rgb_folder.resolve())
    assert (record["config"]["n_u_normal"], record["config"]["n_u_sensitive"]) == (None, None)   # never invented
    assert record["split"] == dict(n_unlabeled=22, n_s=5, n_test=6, n_test_sensitive=6, n_u_normal=None,
                                   n_u_sensitive=None)
    with Image.open(out / "outputs" / "images" / f"{key}.png") as grid:
        assert grid.size == (8 * 16 + 9 * 2,) * 2
    result = result_of(out, key)
    assert result["dataset"] == "folder" and result["train_data_dir"] == str(rgb_folder.resolve())
    m = result["metrics"]
    assert 0 <= m["non_sensitive_rate"] <= 1 and m["classifier_accuracy"] == 1.0    # dark against bright
    assert m["fid"] is None and "Inception" in result["unavailable"]["fid"]           # offline
    assert m["fd_classifier"] is not None
    assert m["fd_classes"] is None and "class labels" in result["unavailable"]["fd_classes"]
    assert (out / "checkpoints" / "classifiers" / "folder_faces_cnn-scratch_16px_seed0.pt").is_file()


def test_report_reads_folder_results_with_their_nulls(main_run, capsys):
    out, key = main_run
    report = load_script("report.py")
    report.main(report.parse_args([str(out / "outputs" / "results")]))
    text = capsys.readouterr().out
    assert "| faces (classifier acc. " in text and "faces [fd_classifier]" in text
    assert "class classifier" not in text      # folders have no class labels: no such table


def test_another_folder_of_the_same_name_does_not_take_over_the_run(main_run, tmp_path, capsys):
    out, key = main_run
    other = write_image_folder(tmp_path / "faces", 20, 2, 5, seed=1)
    line = refused("main.py", ["--train_data_dir", other, "--resolution", "16", "--seed", "0", "--output_dir", out,
                               *QUICK, "--resume_from_checkpoint", "latest"], capsys, out)
    assert "made with train_data_dir" in line and str(other.resolve()) in line


def test_main_py_on_a_grayscale_folder_at_another_size_tags_the_key(tmp_path):
    folder = write_image_folder(tmp_path / "digits", 10, 1, 5, mode="L")
    out = tmp_path / "out"
    run_script("main.py", ["--train_data_dir", folder, "--resolution", "8", "--channels", "1", "--output_dir", out,
                           *QUICK[:-2], "--num_eval_samples", "0"])
    key = f"main_digits_PU_0.1_{TAGS}_res8_ch1_42"
    config = json.loads((out / "checkpoints" / key / "unet" / "config.json").read_text())
    assert (config["in_channels"], config["out_channels"], config["sample_size"]) == (1, 1, 8)


def test_beta_auto_estimates_the_prior_of_a_folder(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "mix", 18, 2, 6, sizes=((16, 16),))
    out = tmp_path / "out"
    run_script("main.py", ["--train_data_dir", folder, "--beta", "auto", "--output_dir", out, *QUICK[:-2],
                           "--num_eval_samples", "0"])
    assert "beta auto: " in capsys.readouterr().out
    record = json.loads((out / "checkpoints" / f"main_mix_PU_auto_{TAGS}_42" / "run_config.json").read_text())
    estimate = record["beta_estimate"]
    assert (estimate["n_u"], estimate["n_s"]) == (20, 6) and record["beta"] == estimate["estimate"]
    assert "cnn" in estimate["method"]


def test_estimate_beta_reads_a_folder_as_beta_auto_does(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "mix", 18, 2, 6, sizes=((16, 16),))
    script = load_script("estimate-beta.py")
    script.main(script.parse_args(["--train_data_dir", str(folder), "--resolution", "8", "--json"]))
    record = json.loads(capsys.readouterr().out)
    assert (record["config_name"], record["n_u"], record["n_s"], record["true_prior"]) == (RECIPE, 20, 6, None)


# --- main-ft.py: any pretrained DDPM, on folders --------------------------------------------------------

@pytest.fixture(scope="module")
def gray_pretrained(tmp_path_factory):
    """A tiny 1-channel 8 px DDPMPipeline, as a user's own pretrained model."""
    return save_tiny_ddpm(tmp_path_factory.mktemp("gray") / "ddpm", sample_size=8, channels=1)


def test_main_ft_fine_tunes_a_one_channel_model_on_folders_and_evaluate_keeps_the_samples(gray_pretrained, tmp_path,
                                                                                          capsys):
    from diffusers import DDIMPipeline
    folder = write_image_folder(tmp_path / "gray", 12, 1, 5, n_test=4, n_test_sensitive=4, mode="L")
    out = tmp_path / "out"
    run_script("main-ft.py", ["--pretrained_model", gray_pretrained, "--train_data_dir", folder, "--algorithm", "PU",
                              "--output_dir", out, *QUICK])
    key = f"main_ft_gray_PU_0.1_{TAGS}_42"
    checkpoint = out / "checkpoints" / key
    record = json.loads((checkpoint / "run_config.json").read_text())
    assert record["config"]["pretrained_model"] == str(gray_pretrained) and record["args"]["config_name"] == RECIPE
    assert (record["config"]["channels"], record["config"]["image_size"]) == (1, 8)     # the model's
    before = load_file(gray_pretrained / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(before[k], after[k]) for k in before)
    pipe = DDIMPipeline.from_pretrained(checkpoint)
    schedule = json.loads((gray_pretrained / "scheduler" / "scheduler_config.json").read_text())
    assert all(pipe.scheduler.config[k] == schedule[k] for k in ("beta_start", "beta_end", "clip_sample"))
    assert result_of(out, key)["metrics"]["non_sensitive_rate"] is not None

    samples = tmp_path / "samples"
    run_script("evaluate.py", [checkpoint, "--save_samples", samples, "--num_eval_samples", "5",
                               "--output_dir", tmp_path / "ev"])
    names = sorted(p.name for p in samples.iterdir())
    assert names == [f"{i:06d}.png" for i in range(5)]
    with Image.open(samples / names[0]) as image:
        assert image.mode == "L" and image.size == (8, 8)
    assert result_of(tmp_path / "ev", key)["num_samples"] == 5
    # Again into the same folder: an earlier --save_samples folder is replaced whole.
    run_script("evaluate.py", [checkpoint, "--save_samples", samples, "--num_eval_samples", "3",
                               "--output_dir", tmp_path / "ev"])
    assert sorted(p.name for p in samples.iterdir()) == names[:3]


def test_main_ft_fine_tunes_a_main_py_model_on_its_config(tmp_path):
    """A main.py checkpoint is a pretrained DDPM like any other: main-ft.py takes any config whose images fit it."""
    out = tmp_path / "out"
    digits = ["--config_name", "Digits_even", "--n_u_normal", "40", "--n_u_sensitive", "4", "--n_s", "4",
              "--n_test", "8", "--num_epochs", "1", "--batch_size", "16", "--num_inference_steps", "2",
              "--num_eval_samples", "0", "--output_dir", out]
    run_script("main.py", [*digits, "--algorithm", "Unsupervised"])
    source = out / "checkpoints" / "main_Digits_even_Unsupervised_0.0_nUn40_nUs4_nS4_nT8_ep1_bs16_steps2_42"
    run_script("main-ft.py", [*digits, "--algorithm", "PU", "--pretrained_model", source])
    record = json.loads((out / "checkpoints" / "main_ft_Digits_even_PU_0.1_nUn40_nUs4_nS4_nT8_ep1_bs16_steps2_42"
                         / "run_config.json").read_text())
    assert record["config"]["pretrained_model"] == str(source) and record["split"]["n_s"] == 4


# --- evaluate.py on a pipeline this project did not train -------------------------------------------------

@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A DDPMPipeline saved by someone else: no run_config.json; 3 channels, 16 px."""
    return save_tiny_ddpm(tmp_path_factory.mktemp("foreign") / "their-ddpm", sample_size=16)


def test_evaluate_a_foreign_pipeline_on_a_folder_without_labeled_test_images(foreign, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "mine", 6, 1, 2, n_test=4)
    out, samples = tmp_path / "out", tmp_path / "samples"
    run_script("evaluate.py", [foreign, "--train_data_dir", folder, "--num_eval_samples", "6",
                               "--num_inference_steps", "3", "--save_samples", samples, "--output_dir", out])
    printed = capsys.readouterr().out
    assert "rate needs labeled test images" in printed and "non-sensitive rate n/a" in printed
    assert "non-sensitive rate 0" not in printed and "non-sensitive rate 1" not in printed
    key = "pipeline_their-ddpm_mine_ddpm_steps3_0"     # its own sampler (DDPMScheduler), --seed 0
    result = result_of(out, key)
    assert result["script"] == "pipeline" and result["algorithm"] == "their-ddpm"
    assert result["metrics"]["non_sensitive_rate"] is None
    assert "test/sensitive" in result["unavailable"]["non_sensitive_rate"]
    assert (result["n_u_normal"], result["n_s"]) == (None, None) and result["n_reference"] == 4
    assert len(list(samples.glob("*.png"))) == 6


def test_evaluate_a_foreign_pipeline_against_a_config(foreign, tmp_path):
    out = tmp_path / "out"
    run_script("evaluate.py", [foreign, "--config_name", "Digits_even", "--num_eval_samples", "4",
                               "--num_inference_steps", "2", "--sampler", "ddim", "--seed", "3", "--output_dir", out])
    result = result_of(out, "pipeline_their-ddpm_Digits_even_ddim_steps2_3")
    m = result["metrics"]
    assert 0 <= m["non_sensitive_rate"] <= 1 and m["fd_classes"] is not None and m["sensitive_share"] is not None
    assert result["n_u_normal"] is None and result["checkpoint"] == str(foreign)


# --- refusals: exit 2, the cause named, nothing written ----------------------------------------------------

def damaged_folder(root, damage):
    root = write_image_folder(root, 10, 1, 5, n_test=3, n_test_sensitive=3)
    if damage == "no_unlabeled":
        shutil.rmtree(root / "unlabeled")
    elif damage == "empty_sensitive":
        for path in list_images(root / "sensitive"):
            path.unlink()
    elif damage == "unreadable":
        (root / "unlabeled" / "normal_004.png").write_bytes(b"\x89PNG not really")
    elif damage == "judge_without_reference":
        shutil.rmtree(root / "test" / "normal")
    elif damage == "one_sensitive_test_image":
        for path in list_images(root / "test" / "sensitive")[1:]:
            path.unlink()
    return root


@pytest.mark.parametrize("damage, message", [
    ("no_unlabeled", "unlabeled is missing; expected"),
    ("empty_sensitive", "sensitive holds no images"),
    ("unreadable", "normal_004.png is not a readable image"),
    ("judge_without_reference", "has no"),
    ("one_sensitive_test_image", "needs at least 2 of each class"),
])
def test_bad_folders_are_refused(damage, message, tmp_path, capsys):
    folder = damaged_folder(tmp_path / "data", damage)
    line = refused("main.py", ["--train_data_dir", folder, "--output_dir", tmp_path / "out", *QUICK], capsys, tmp_path)
    assert message in line


def test_a_folder_with_fewer_images_than_a_batch_is_refused(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "small", 3, 1, 2)
    line = refused("main.py", ["--train_data_dir", folder, "--output_dir", tmp_path / "out", "--batch_size", "8"],
                   capsys, tmp_path)
    assert "holds 6 training images" in line and "--batch_size 6" in line


@pytest.mark.parametrize("argv, message", [
    (["--channels", "3"], "takes 1-channel 8 px images but --channels is 3; pass --channels 1"),
    (["--resolution", "16"], "takes 1-channel 8 px images but --resolution is 16; pass --resolution 8"),
])
def test_a_model_that_does_not_fit_the_folder_is_refused(gray_pretrained, argv, message, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "data", 10, 1, 5, mode="L")
    line = refused("main-ft.py", ["--pretrained_model", gray_pretrained, "--train_data_dir", folder, *argv,
                                  "--output_dir", tmp_path / "out", *QUICK], capsys, tmp_path)
    assert message in line


def test_a_model_that_does_not_fit_the_config_is_refused_naming_what_fits(gray_pretrained, tmp_path, capsys):
    line = refused("main-ft.py", ["--pretrained_model", gray_pretrained, "--config_name", "Digits_even",
                                  "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "takes 1-channel 8 px images but Digits is 3-channel 16 px" in line and "--train_data_dir" in line


def test_foreign_pipeline_without_data_to_judge_against(foreign, tmp_path, capsys):
    line = refused("evaluate.py", [foreign, "--output_dir", tmp_path / "out"], capsys, tmp_path)
    assert "--config_name" in line and "--train_data_dir" in line


@pytest.mark.parametrize("argv, message", [
    (["--train_data_dir", "DIR", "--n_s", "3"], "--n_s: with --train_data_dir the counts are the folder's"),
    (["--resolution", "32"], "--resolution: only with --train_data_dir"),
])
def test_options_a_folder_run_cannot_take(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_script("main.py").parse_args([str(tmp_path) if a == "DIR" else a for a in argv])
    assert stopped.value.code == USAGE_EXIT_CODE and message in capsys.readouterr().err


def test_save_samples_refuses_a_folder_of_other_files(main_run, tmp_path, capsys):
    out, key = main_run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"x")
    line = refused("evaluate.py", [out / "checkpoints" / key, "--save_samples", tmp_path / "mine",
                                   "--output_dir", tmp_path / "ev"], capsys, tmp_path)
    assert "holds other files (holiday.jpg" in line


# --- the folder export: the config's split through --train_data_dir ---------------------------------------

def test_exported_split_gives_the_configs_own_training_tensors(data_root, tmp_path):
    from utils.data import load_pu_data
    from utils.folders import folder_config
    root, _ = data_root
    export = load_script("analysis/export_folders.py")
    out = tmp_path / "mnist"
    export.main(export.parse_args(["MNIST_even", "--seed", "3", "--data_dir", str(root), "--output_dir", str(out),
                                   "--n_u_normal", "30", "--n_u_sensitive", "3", "--n_s", "3", "--n_test", "10",
                                   "--n_test_sensitive", "4"]))
    config = with_overrides(get_config("MNIST_even"), n_u_normal=30, n_u_sensitive=3, n_s=3, n_test=10)
    expected = load_pu_data(config, root, 3)
    folder = scan_folder(out)
    assert folder.counts() == dict(n_unlabeled=33, n_s=3, n_test=10, n_test_sensitive=4)
    got = load_folder_data(with_overrides(folder_config(config, folder), batch_size=8))
    assert torch.equal(got.train.images, expected.train.images)     # bit for bit: same images, same order
    assert torch.equal(got.train.labels, expected.train.labels)
    truth = (out / "unlabeled_truth.csv").read_text().splitlines()
    assert truth[0] == "file,class,sensitive" and len(truth) == 34
    assert sum(line.endswith(",1") for line in truth[1:]) == 3
    with pytest.raises(SystemExit):      # it never writes over a folder
        export.main(export.parse_args(["MNIST_even", "--data_dir", str(root), "--output_dir", str(out)]))


def test_export_takes_every_sensitive_test_image_where_the_test_split_holds_fewer_than_n_test(data_root, tmp_path):
    root, (_, test_labels) = data_root[0], data_root[1]["MNIST"]
    export = load_script("analysis/export_folders.py")
    # Six normal digits against four sensitive ones: fewer sensitive test images than normal ones, as in
    # Fashion-MNIST's clothes configs.
    normal = (0, 1, 2, 4, 6, 8)
    n_normal, n_sensitive = int(np.isin(test_labels, normal).sum()), int((~np.isin(test_labels, normal)).sum())
    assert n_sensitive < n_normal
    config = with_overrides(get_config("MNIST_even"), normal_classes=normal, n_u_normal=20, n_u_sensitive=2, n_s=2,
                            n_test=n_normal)
    counts = export.export(config, root, 0, tmp_path / "default", None)
    assert (counts[TEST_NORMAL], counts[TEST_SENSITIVE]) == (n_normal, n_sensitive)
    assert counts == export.export(config, root, 0, tmp_path / "all", n_sensitive)   # the same as asking for all
    with pytest.raises(UsageError, match="lower --n_test_sensitive"):                # more is refused, unwritten
        export.export(config, root, 0, tmp_path / "more", n_sensitive + 1)
    assert not (tmp_path / "more").exists()
