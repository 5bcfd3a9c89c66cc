"""`--beta auto` end to end: the prior is estimated before training, recorded, and named in the key."""
import json
import shutil

import numpy as np
import pytest

from tiny_models import load_script
from utils.checkpointing import TRAINING_STATE_FILE, list_checkpoints, read_training_state
from utils.errors import UsageError
from utils.prior import best_bin_estimate
from utils.run import trainable_beta

TINY = ["--config_name", "Digits_even", "--n_u_normal", "200", "--n_u_sensitive", "20", "--n_s", "20",
        "--num_epochs", "1", "--num_inference_steps", "2", "--num_eval_samples", "8", "--seed", "0"]
KEY = "main_Digits_even_PU_auto_nUn200_nUs20_nS20_ep1_steps2_0"
TRUE_PRIOR = 20 / 220
USAGE_EXIT = 2


def test_beta_auto_is_estimated_recorded_and_keyed(tmp_path, capsys):
    main = load_script("main.py")
    argv = [*TINY, "--beta", "auto", "--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"]
    main.main(main.parse_args(argv))
    out = capsys.readouterr().out
    assert "beta auto: " in out
    record = json.loads((tmp_path / "checkpoints" / KEY / "run_config.json").read_text())
    estimate = record["beta_estimate"]
    assert record["beta"] == estimate["estimate"] and estimate["method"].startswith("best_bin")
    lower, upper = estimate["interval"]
    assert 0.0 <= lower <= estimate["estimate"] <= upper <= 1.0
    assert estimate["n_u"] == 220 and estimate["n_s"] == 20
    # With 20 labeled images the interval is wide; the truth should still lie below its upper end,
    # which bounds the prior whatever the data (DKW, probability 1 - delta).
    assert upper >= TRUE_PRIOR
    result = json.loads((tmp_path / "outputs" / "results" / f"{KEY}.json").read_text())
    assert result["beta"] == record["beta"] and result["beta_estimate"] == estimate
    # The training time is the loop's, the same in both files: the evaluation after it is not training.
    assert result["times"]["train_s"] == record["train_seconds"] > 0
    # Re-run: finished, nothing re-estimated, the recorded beta kept.
    main.main(main.parse_args(argv))
    again = capsys.readouterr().out
    assert "nothing to train" in again and "beta auto" not in again


@pytest.mark.parametrize("algorithm", ["Unsupervised", "Supervised"])
def test_beta_auto_with_an_algorithm_that_does_not_use_beta_exits_2(algorithm, tmp_path, capsys):
    main = load_script("main.py")
    with pytest.raises(SystemExit) as refused:
        main.main(main.parse_args([*TINY, "--algorithm", algorithm, "--beta", "auto", "--output_dir", str(tmp_path)]))
    assert refused.value.code == USAGE_EXIT
    assert f"{algorithm} does not use beta" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_resumed_beta_auto_run_trains_on_with_the_beta_it_began_with(tmp_path, capsys):
    main = load_script("main.py")
    argv = [*TINY, "--num_eval_samples", "0", "--beta", "auto", "--output_dir", str(tmp_path),
            "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest"]
    main.main(main.parse_args(argv))
    checkpoint = tmp_path / "checkpoints" / KEY
    record = json.loads((checkpoint / "run_config.json").read_text())
    last = list_checkpoints(tmp_path / "checkpoints" / f"{KEY}.state")[-1]
    state = read_training_state(last)
    assert state["auto_beta"] == dict(beta=record["beta"], beta_estimate=record["beta_estimate"])
    # The run made unfinished again, its last state saying another beta: the resume takes that one.
    shutil.rmtree(checkpoint)
    (tmp_path / "outputs" / "images" / f"{KEY}.png").unlink()
    state["auto_beta"] = dict(beta=0.1234, beta_estimate=dict(record["beta_estimate"], estimate=0.1234))
    (last / TRAINING_STATE_FILE).write_text(json.dumps(state))
    capsys.readouterr()
    main.main(main.parse_args(argv))
    out = capsys.readouterr().out
    assert "beta auto: 0.1234, estimated when the run began" in out and "interval" not in out
    resumed = json.loads((checkpoint / "run_config.json").read_text())
    assert resumed["beta"] == 0.1234 and resumed["beta_estimate"]["estimate"] == 0.1234


def test_an_estimate_of_one_is_refused_as_a_typed_beta_of_one_is():
    # Scores that rank U above S: every bin has q_U >= q_S, and q_U / q_S clips to 1.
    estimate = best_bin_estimate(scores_u=np.linspace(0.5, 1.0, 200), scores_s=np.linspace(0.0, 0.5, 40))
    assert estimate.beta == 1.0
    with pytest.raises(UsageError, match=r"estimated beta = 1\.0000.*pass --beta"):
        trainable_beta(estimate)
    assert trainable_beta(best_bin_estimate(scores_u=np.linspace(0.0, 1.0, 200),
                                            scores_s=np.linspace(0.9, 1.0, 40))) < 1.0
