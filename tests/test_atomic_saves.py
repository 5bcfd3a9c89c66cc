"""A failure while a finished run is being written leaves nothing that looks finished or complete.

The kill tests (tests/test_resume.py, tests/test_sweeps.py) cover a run stopped during training.
Here the failure comes during the final writes (the pipeline, the sample grid, a results file):
a disk that fills up is simulated by letting the real writer write, then raising. main.py runs in
this process on a tiny digits split (48 images, 3 steps, CPU).
"""
import hashlib
import json
import shutil

import pytest
from diffusers import DDPMPipeline

import main
import utils.experiment
from utils.files import save_folder_atomically, write_json_atomically

ARGS = ["--config_name", "Digits_even", "--n_u_normal", "40", "--n_u_sensitive", "4", "--n_s", "4",
        "--num_epochs", "1", "--batch_size", "16", "--num_inference_steps", "1", "--num_eval_samples", "0",
        "--seed", "0"]
KEY = "main_Digits_even_PU_0.1_nUn40_nUs4_nS4_ep1_bs16_steps1_0"
DISK_FULL = OSError(28, "No space left on device")


def run(out, *extra):
    main.main(main.parse_args([*ARGS, "--output_dir", str(out), *extra]))


def fail_after_writing(original):
    """`original` (a writer whose second argument is the path it writes), then a full disk."""
    def write_then_fail(self_or_data, path, *args, **kwargs):
        original(self_or_data, path, *args, **kwargs)
        raise DISK_FULL
    return write_then_fail


def fail_pipeline_save(patch):
    patch.setattr(DDPMPipeline, "save_pretrained", fail_after_writing(DDPMPipeline.save_pretrained))


def fail_grid_save(patch):
    patch.setattr(utils.experiment, "save_grid", fail_after_writing(utils.experiment.save_grid))


def leftovers(out):
    """Temporary or half-replaced files and folders anywhere under `out`."""
    return [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


def snapshot(out, files=None):
    """{path: sha256} of `files` under `out`; by default every file of the run's pipeline folder and its grid."""
    if files is None:
        files = [*(out / "checkpoints" / KEY).rglob("*"), out / "outputs" / "images" / f"{KEY}.png"]
    else:
        files = [out / f for f in files]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


# What a run's settings and seed fix (run_config.json also holds its paths and times).
TRAINED = [f"checkpoints/{KEY}/unet/diffusion_pytorch_model.safetensors", f"checkpoints/{KEY}/model_index.json",
           f"outputs/images/{KEY}.png"]


def test_failed_pipeline_write_leaves_no_finished_looking_run(tmp_path, capsys, monkeypatch):
    with monkeypatch.context() as patch:
        fail_pipeline_save(patch)
        with pytest.raises(OSError, match="No space left"):
            run(tmp_path)
    # save_pretrained had written model_index.json and the weights, but only into a temporary folder.
    assert not (tmp_path / "checkpoints" / KEY).exists()
    assert not list(tmp_path.rglob("model_index.json"))
    assert not list(tmp_path.rglob("*.png"))
    assert not leftovers(tmp_path)
    # So the sweep's re-run command trains it again instead of calling it finished.
    capsys.readouterr()
    run(tmp_path, "--resume_from_checkpoint", "latest")
    assert "nothing to train" not in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / KEY / "run_config.json").is_file()
    assert (tmp_path / "outputs" / "images" / f"{KEY}.png").is_file()


def test_failed_grid_write_leaves_no_partial_grid(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        fail_grid_save(patch)
        with pytest.raises(OSError, match="No space left"):
            run(tmp_path)
    assert not list(tmp_path.rglob("*.png"))
    assert not leftovers(tmp_path)


def test_failed_grid_write_is_completed_by_the_rerun_command(tmp_path, monkeypatch):
    """The pipeline was saved, the grid was not: the sweep's re-run command must end with what a run
    never interrupted leaves (CPU: the same weights and the same grid, bit for bit)."""
    reference, out = tmp_path / "reference", tmp_path / "out"
    run(reference)
    with monkeypatch.context() as patch:
        fail_grid_save(patch)
        with pytest.raises(OSError, match="No space left"):
            run(out)
    run(out, "--resume_from_checkpoint", "latest")
    assert len(snapshot(reference, TRAINED)) == len(TRAINED)
    assert snapshot(out, TRAINED) == snapshot(reference, TRAINED)


def test_overwrite_replaces_a_finished_run_only_once_the_new_one_is_saved(tmp_path, monkeypatch):
    run(tmp_path)
    checkpoint = tmp_path / "checkpoints" / KEY
    (checkpoint / "left_by_the_old_run.txt").write_text("old")
    # What the old model's evaluations and training left beside it (report.py reads the results).
    outputs = tmp_path / "outputs"
    derived = [outputs / "results" / f"{KEY}.json", outputs / "results" / f"{KEY}_ddpm.json",
               outputs / "images" / f"{KEY}_ddpm.png", outputs / "logs" / KEY / "events.out.tfevents.0.old-run"]
    for path in derived:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    before = snapshot(tmp_path)

    # The new run fails while its pipeline is written: the old run is still there, whole.
    with monkeypatch.context() as patch:
        fail_pipeline_save(patch)
        with pytest.raises(OSError, match="No space left"):
            run(tmp_path, "--overwrite")
    assert snapshot(tmp_path) == before
    assert all(path.read_text() == "old" for path in derived)
    assert not leftovers(tmp_path)

    # The new run succeeds: its folder replaces the old one (not merged into it), and its grid the old
    # grid; the old results, re-evaluation grid and logs are gone, the new run's logs are there.
    run(tmp_path, "--overwrite")
    assert not (checkpoint / "left_by_the_old_run.txt").exists()
    assert not any(path.exists() for path in derived)
    assert list((tmp_path / "outputs" / "logs" / KEY).glob("events.out.tfevents.*"))
    assert json.loads((checkpoint / "run_config.json").read_text())["args"]["overwrite"] is True
    assert (checkpoint / "model_index.json").is_file()
    assert (tmp_path / "outputs" / "images" / f"{KEY}.png").is_file()
    assert not leftovers(tmp_path)


def test_failed_results_write_keeps_the_old_results_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Results files (outputs/results/{key}.json) are written by write_json_atomically."""
    import pathlib
    path = tmp_path / "outputs" / "results" / f"{KEY}.json"
    write_json_atomically(path, dict(metrics=dict(fid=1.0)))
    write_text = pathlib.Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        write_text(self, text[:len(text) // 2], *args, **kwargs)
        raise DISK_FULL
    monkeypatch.setattr(pathlib.Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomically(path, dict(metrics=dict(fid=2.0)))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == dict(metrics=dict(fid=1.0))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_failed_folder_write_keeps_the_old_folder_and_leaves_no_temporary_folder(tmp_path):
    final = tmp_path / "checkpoints" / KEY
    save_folder_atomically(final, lambda tmp: (tmp / "model_index.json").write_text("old"))

    def half_written(tmp):
        (tmp / "model_index.json").write_text("new")
        raise DISK_FULL
    with pytest.raises(OSError, match="No space left"):
        save_folder_atomically(final, half_written)
    assert (final / "model_index.json").read_text() == "old"
    assert [p.name for p in final.parent.iterdir()] == [KEY]
    shutil.rmtree(final)
    with pytest.raises(OSError, match="No space left"):
        save_folder_atomically(final, half_written)
    assert not list(final.parent.iterdir())
