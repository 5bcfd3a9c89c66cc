"""`--beta auto` end to end: the prior is estimated before training, recorded, and named in the key."""
import json

import pytest

from tiny_models import load_script

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
