"""main-ft.py: fine-tuning a pretrained DDPM pipeline on tiny CIFAR10-format data, and its input checks.

The "pretrained" model is a tiny DDPMPipeline saved by tests/tiny_models.py with
google/ddpm-cifar10-32's layout and schedule; the data is written by tests/fixtures.py in
torchvision's CIFAR10 format, and the PU counts are shrunk to it with --n_u_normal and friends.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tiny_models import load_script, save_tiny_ddpm

CONFIG = "CIFAR10_vehicles"        # normal: classes 0, 1, 8, 9
COUNTS = ["--n_u_normal", "8", "--n_u_sensitive", "1", "--n_s", "2", "--n_test", "4"]
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return save_tiny_ddpm(tmp_path_factory.mktemp("pretrained") / "ddpm", sample_size=IMAGE_SIZE)


def run_main_ft(argv):
    script = load_script("main-ft.py")
    script.main(script.parse_args(argv))


def test_main_ft_finetunes_and_saves_a_ddim_pipeline(tmp_path, cifar, pretrained, capsys):
    from diffusers import DDIMPipeline, DDIMScheduler
    out, source = tmp_path / "out", shutil.copytree(pretrained, tmp_path / "ddpm")
    argv = ["--config_name", CONFIG, "--algorithm", "PU", "--pretrained_model", str(source), "--data_dir", str(cifar),
            "--output_dir", str(out), *COUNTS, "--num_epochs", "1", "--batch_size", "4", "--num_inference_steps", "2",
            "--num_eval_samples", "0", "--resume_from_checkpoint", "latest"]
    run_main_ft(argv)
    assert "epoch 1/1 " in capsys.readouterr().out
    # Re-run once finished (a sweep script's second pass): settled from the model's configs alone,
    # without loading its weights, which are gone here.
    (source / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    run_main_ft(argv)
    assert "nothing to train" in capsys.readouterr().out
    key = f"main_ft_{CONFIG}_PU_0.1_nUn8_nUs1_nS2_nT4_ep1_bs4_steps2_42"
    ckpt = out / "checkpoints" / key

    before = load_file(pretrained / "unet" / "diffusion_pytorch_model.safetensors")   # the copy's original
    after = load_file(ckpt / "unet" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    assert not all(torch.equal(before[k], after[k]) for k in before)    # the UNet trained

    pipe = DDIMPipeline.from_pretrained(ckpt)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    pretrained_schedule = json.loads((pretrained / "scheduler" / "scheduler_config.json").read_text())
    for name in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "clip_sample"):
        assert pipe.scheduler.config[name] == pretrained_schedule[name], name
    sample = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert sample.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(sample).all()

    record = json.loads((ckpt / "run_config.json").read_text())
    assert record["script"] == "main_ft" and record["config"]["pretrained_model"] == str(source)
    assert (record["config"]["sampler"], record["config"]["num_inference_steps"]) == ("ddim", 2)
    # The architecture recorded is the pretrained UNet's, not the from-scratch configs' paper UNet.
    architecture = json.loads((pretrained / "unet" / "config.json").read_text())
    assert record["config"]["unet"] == {k: v for k, v in architecture.items() if not k.startswith("_")}
    assert record["split"] == dict(n_u_normal=8, n_u_sensitive=1, n_s=2, n_test=4)
    with Image.open(out / "outputs" / "images" / f"{key}.png") as grid:
        assert grid.size == (8 * IMAGE_SIZE + 9 * 2,) * 2     # 8 x 8 with torchvision's 2 px padding


def test_fine_tuning_samples_with_ddim_in_50_steps_by_default(tmp_path, cifar, pretrained):
    """The paper's sampler for fine-tuned models, whatever the from-scratch config says (DDPM 1000)."""
    out = tmp_path / "out"
    run_main_ft(["--config_name", CONFIG, "--pretrained_model", str(pretrained), "--data_dir", str(cifar),
                 "--output_dir", str(out), *COUNTS, "--num_epochs", "1", "--batch_size", "4", "--num_eval_samples", "0"])
    record = json.loads((out / "checkpoints" / f"main_ft_{CONFIG}_PU_0.1_nUn8_nUs1_nS2_nT4_ep1_bs4_42" /
                         "run_config.json").read_text())
    assert (record["config"]["sampler"], record["config"]["num_inference_steps"]) == ("ddim", 50)


def test_unsupported_config_lists_the_supported_ones(capsys):
    script = load_script("main-ft.py")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--config_name", "MNIST_even"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("CIFAR10_vehicles", "CIFAR10_animals", "CelebA_male", "CelebA_female"))


@pytest.mark.parametrize("source, message", [
    ("no_scheduler", "has no scheduler"),
    ("wrong_size", "takes 3-channel 16 px images"),
    ("v_prediction", "predicts 'v_prediction'"),
    ("/no/such/folder", "neither a folder nor a hub id"),
    ("pudm-tests/no-such-model", "could not load the pretrained pipeline"),
])
def test_bad_pretrained_model_exits_2_and_writes_nothing(tmp_path, cifar, pretrained, source, message, capsys,
                                                         offline):
    if source == "no_scheduler":
        source = shutil.copytree(pretrained, tmp_path / "broken")
        shutil.rmtree(source / "scheduler")
    elif source == "wrong_size":
        source = save_tiny_ddpm(tmp_path / "small", sample_size=16)
    elif source == "v_prediction":
        source = shutil.copytree(pretrained, tmp_path / "v")
        schedule = source / "scheduler" / "scheduler_config.json"
        schedule.write_text(json.dumps(dict(json.loads(schedule.read_text()), prediction_type="v_prediction")))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_main_ft(["--config_name", CONFIG, "--pretrained_model", str(source), "--data_dir", str(cifar),
                     "--output_dir", str(out), *COUNTS, "--num_eval_samples", "0"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_pretrained_configs_are_read_from_the_part_folders_or_the_root(pretrained, tmp_path):
    """main-ft.py settles a run from the model's two config files: in unet/ and scheduler/ (save_pretrained)
    or at the root, as older hub repos such as google/ddpm-* keep them (here as local folders; the hub id's
    fallback to the root cannot be exercised offline)."""
    from models.pretrained import load_ddpm_configs
    root = tmp_path / "root_layout"
    root.mkdir()
    for part in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        shutil.copy(pretrained / part, root)
    schedule = json.loads((pretrained / "scheduler" / "scheduler_config.json").read_text())
    for source in (pretrained, root):
        unet, scheduler = load_ddpm_configs(str(source))
        assert unet["sample_size"] == IMAGE_SIZE and unet["in_channels"] == 3
        assert scheduler["num_train_timesteps"] == schedule["num_train_timesteps"]


def test_main_ft_beta_auto_estimates_the_prior_of_its_split_and_keys_it(tmp_path, cifar, pretrained, capsys,
                                                                       offline, monkeypatch):
    """--beta auto in main-ft.py: the prior of the run's own split (a ResNet-18 per fold, from scratch
    offline), estimated before the pretrained weights train, recorded, and named `auto` in the key."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))     # no cached ImageNet weights
    out = tmp_path / "out"
    argv = ["--config_name", CONFIG, "--algorithm", "PU", "--beta", "auto", "--pretrained_model", str(pretrained),
            "--data_dir", str(cifar), "--output_dir", str(out), "--n_u_normal", "10", "--n_u_sensitive", "1",
            "--n_s", "5", "--n_test", "4", "--num_epochs", "1", "--batch_size", "4", "--num_eval_samples", "0"]
    run_main_ft(argv)
    assert "beta auto: " in capsys.readouterr().out
    key = f"main_ft_{CONFIG}_PU_auto_nUn10_nUs1_nS5_nT4_ep1_bs4_42"
    record = json.loads((out / "checkpoints" / key / "run_config.json").read_text())
    estimate = record["beta_estimate"]
    assert record["beta"] == estimate["estimate"] and (estimate["n_u"], estimate["n_s"]) == (11, 5)
    assert estimate["method"].startswith("best_bin") and "resnet18" in estimate["method"]
