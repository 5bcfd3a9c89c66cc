"""The baselines Filter, Clean and NegGrad (docs/baselines.md): NegGrad's objective on hand-worked numbers,
Filter's and Clean's selections on constructed scores and labels, each algorithm end to end through
main.py, main-ft.py and main-sd.py on tiny data, the refusals, and report.py's row order.

The scripts run in this process through `main(parse_args(argv))`, as `python <script>` would run them.

Hand arithmetic used below: NegGrad's loss is R_U - weight * S_capped with R_U = sum((1 - y) L) / B
and S_capped = sum(y min(L, cap)) / n_S, n_S = max(1, sum y). So dloss/dL is 1/B for a U sample,
-weight/n_S for an S sample below the cap, and 0 for an S sample at or above it.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import utils.prior_data
from losses import ALGORITHMS, DEFAULT_NEGGRAD_WEIGHT, get_objective, get_objective_with_terms, neggrad, \
    neggrad_terms, unsupervised
from utils.errors import USAGE_EXIT_CODE
from utils.prior import HeldOutScores
from utils.selection import clean_kept, filter_kept, select

from fixtures import write_coloured_sd_folder, write_image_folder
from tiny_models import load_script, save_tiny_clip, save_tiny_ddpm, save_tiny_stable_diffusion

TIGHT = dict(rel=1e-12, abs=1e-15)
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def tensors(L, y):
    return torch.tensor(L, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)


def gradient(objective, L, y):
    L = L.clone().requires_grad_(True)
    objective(L, y).backward()
    return L.grad.tolist()


# ---- NegGrad's objective ----------------------------------------------------------------------------

# Batch A: B = 4, one S sample (L = 1), U errors 2, 4, 3. R_U = 9 / 4 = 2.25.
BATCH_A = ([2.0, 4.0, 1.0, 3.0], [0, 0, 1, 0])


def test_neggrad_below_the_cap():
    L, y = tensors(*BATCH_A)
    # weight 0.5, cap 10: S_capped = 1 / 1 = 1; loss = 2.25 - 0.5 * 1 = 1.75.
    loss, terms = neggrad_terms(L, y, 0.5, 10.0)
    assert loss.item() == pytest.approx(1.75, **TIGHT)
    assert (terms["R_U"].item(), terms["S_capped"].item()) == (pytest.approx(2.25, **TIGHT), pytest.approx(1.0, **TIGHT))
    # d/dL_U = 1/4; d/dL_S = -0.5 / 1: descent raises the error on S.
    assert gradient(lambda L, y: neggrad(L, y, 0.5, 10.0), L, y) == pytest.approx([0.25, 0.25, -0.5, 0.25], **TIGHT)


def test_neggrad_above_the_cap_has_no_gradient_on_s():
    L, y = tensors(*BATCH_A)
    # cap 0.5 < L_S = 1: S_capped = 0.5; loss = 2.25 - 0.5 * 0.5 = 2.0; the S sample's gradient is 0.
    assert neggrad(L, y, 0.5, 0.5).item() == pytest.approx(2.0, **TIGHT)
    assert gradient(lambda L, y: neggrad(L, y, 0.5, 0.5), L, y) == pytest.approx([0.25, 0.25, 0.0, 0.25], **TIGHT)


def test_neggrad_with_two_s_samples_one_beyond_the_cap():
    # B = 4, n_S = 2; weight 0.2, cap 10. R_U = (1 + 1) / 4 = 0.5; S_capped = (min(50, 10) + 3) / 2 = 6.5;
    # loss = 0.5 - 0.2 * 6.5 = -0.8. d/dL_S = -0.2 / 2 = -0.1 below the cap, 0 beyond it.
    L, y = tensors([1.0, 1.0, 50.0, 3.0], [0, 0, 1, 1])
    assert neggrad(L, y, 0.2, 10.0).item() == pytest.approx(-0.8, **TIGHT)
    assert gradient(lambda L, y: neggrad(L, y, 0.2, 10.0), L, y) == pytest.approx([0.25, 0.25, 0.0, -0.1], **TIGHT)


def test_neggrad_without_s_is_unsupervised_and_is_bounded_below():
    L, y = tensors([1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0])
    # No S: S_capped = 0 / max(1, 0) = 0, and the loss is Unsupervised's (1 + 2 + 3 + 4) / 4 = 2.5.
    assert neggrad(L, y, 0.3, 768.0).item() == pytest.approx(2.5, **TIGHT) == unsupervised(L, y).item()
    # However large the error on S, the loss stays >= -weight * cap: 1 / 2 - 1 * 768 = -767.5, gradient 0 on S.
    L, y = tensors([1.0, 1e30], [0, 1])
    assert neggrad(L, y, 1.0, 768.0).item() == pytest.approx(-767.5, **TIGHT)
    assert gradient(lambda L, y: neggrad(L, y, 1.0, 768.0), L, y) == pytest.approx([0.5, 0.0], **TIGHT)


def test_the_bound_objectives_take_the_cap_from_the_loop_and_the_others_ignore_it():
    L, y = tensors(*BATCH_A)
    assert get_objective("NegGrad", 0.0, neggrad_weight=0.5)(L, y, 10).item() == pytest.approx(1.75, **TIGHT)
    loss, terms = get_objective_with_terms("NegGrad", 0.0)(L, y, 10)
    assert loss.item() == pytest.approx(2.25 - DEFAULT_NEGGRAD_WEIGHT, **TIGHT) and set(terms) == {"R_U", "S_capped"}
    with pytest.raises(ValueError, match="cap"):
        get_objective("NegGrad", 0.0)(L, y)
    with pytest.raises(ValueError, match="weight"):
        get_objective_with_terms("NegGrad", 0.0, neggrad_weight=None)
    for name in ("Unsupervised", "Supervised", "PU", "Filter", "Clean"):
        objective = get_objective(name, 0.1)
        assert torch.equal(objective(L, y, 768), objective(L, y)), name
    # Filter and Clean train the Unsupervised objective: 9 / 4.
    assert get_objective("Filter", 0.1)(L, y).item() == get_objective("Clean", 0.0)(L, y).item() == 2.25


def test_the_algorithm_table_lists_the_baselines_after_the_paper():
    assert list(ALGORITHMS) == ["Unsupervised", "Supervised", "PU", "Filter", "Clean", "NegGrad"]
    assert [a.uses_beta for a in ALGORITHMS.values()] == [False, False, True, True, False, False]
    assert [a.selection for a in ALGORITHMS.values()] == [None, None, None, "filter", "clean", None]


# ---- Filter's and Clean's selections --------------------------------------------------------------------

# Two S images (positions 0, 1) scoring highest of all, then 8 U images; U's sensitive ones at 2 and 3.
LABELS = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
U_SENSITIVE = np.array([False, False, True, True, False, False, False, False, False, False])
SCORES = np.array([9.0, 8.0, 5.0, 1.0, 5.0, 3.0, -1.0, 0.0, 2.0, 4.0])


def test_filter_drops_exactly_the_top_scoring_u_images_never_s():
    # beta 0.5: round(0.5 x 8) = 4 dropped: the scores 5 (positions 2 and 4), 4 (9) and 3 (5).
    assert filter_kept(LABELS, SCORES, 0.5).tolist() == [0, 1, 3, 6, 7, 8]
    # beta 0.125: round(1.0) = 1 dropped; positions 2 and 4 tie at 5: the earlier one goes.
    assert filter_kept(LABELS, SCORES, 0.125).tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    # beta 0.3125: round(2.5) = 2 (halves to even): both fives.
    assert filter_kept(LABELS, SCORES, 0.3125).tolist() == [0, 1, 3, 5, 6, 7, 8, 9]
    # beta 0: nothing dropped, so Filter trains on what Unsupervised trains on.
    assert filter_kept(LABELS, SCORES, 0.0).tolist() == list(range(10))


def test_filter_records_what_it_dropped():
    held_out = HeldOutScores(SCORES, LABELS, "5-fold cnn (scratch) logits", 5)
    selection = select("filter", LABELS, U_SENSITIVE, held_out, 0.5)
    assert selection.kept.tolist() == [0, 1, 3, 6, 7, 8]
    # Dropped 2, 4, 5, 9: one sensitive (2); the sensitive image at 3 stays.
    assert selection.record == dict(rule="filter", n_train=6, n_dropped=4, n_dropped_sensitive=1, n_sensitive_kept=1,
                                    scores="5-fold cnn (scratch) logits")
    # Where U's labels are unknown (an image folder) the sensitive counts are None.
    record = select("filter", LABELS, None, held_out, 0.5).record
    assert (record["n_dropped"], record["n_dropped_sensitive"], record["n_sensitive_kept"]) == (4, None, None)
    with pytest.raises(ValueError, match="held-out scores"):
        select("filter", LABELS[1:], U_SENSITIVE[1:], held_out, 0.5)


def test_clean_keeps_s_and_the_normal_images_of_u():
    assert clean_kept(LABELS, U_SENSITIVE).tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    assert select("clean", LABELS, U_SENSITIVE).record == dict(rule="clean", n_train=8, n_dropped=2,
                                                               n_dropped_sensitive=2, n_sensitive_kept=0)


def test_held_out_scores_sit_at_their_images_positions():
    held_out = HeldOutScores.from_groups([0, 1, 0, 1], [10.0, 30.0], [20.0, 40.0], "m", 2)
    assert held_out.scores.tolist() == [10.0, 20.0, 30.0, 40.0]
    assert held_out.scores_u.tolist() == [10.0, 30.0] and held_out.scores_s.tolist() == [20.0, 40.0]


# ---- main.py end to end ---------------------------------------------------------------------------------

DIGITS = ["--config_name", "Digits_even", "--n_u_normal", "40", "--n_u_sensitive", "4", "--n_s", "5", "--n_test", "8",
          "--num_epochs", "1", "--batch_size", "16", "--num_inference_steps", "2", "--num_eval_samples", "0",
          "--seed", "0"]
TAGS = "nUn40_nUs4_nS5_nT8_ep1_bs16_steps2"
N_U, N_S = 44, 5


def run_script(script, argv):
    module = load_script(script)
    module.main(module.parse_args([str(a) for a in argv]))


def record_of(out, key):
    return json.loads((out / "checkpoints" / key / "run_config.json").read_text())


def saved_split(out, key):
    """The PU split the newest training state of `key` saved (TrainingProgress, accelerate's second custom object)."""
    from utils.checkpointing import list_checkpoints
    state = list_checkpoints(out / "checkpoints" / f"{key}.state")[-1]
    return torch.load(state / "custom_checkpoint_1.pkl", weights_only=False)["split"]


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """main.py on the tiny digits split: Unsupervised, Filter at beta 0 and 0.1 (saving training states),
    Clean, and NegGrad with another weight than the default; returns the output folder."""
    out = tmp_path_factory.mktemp("baselines")
    for extra in (["--algorithm", "Unsupervised"], ["--algorithm", "Filter", "--beta", "0"],
                  ["--algorithm", "Filter", "--checkpointing_steps", "1"], ["--algorithm", "Clean"],
                  ["--algorithm", "NegGrad", "--neggrad_weight", "0.3"]):
        run_script("main.py", [*DIGITS, *extra, "--output_dir", out])
    return out


def test_filter_at_beta_zero_trains_exactly_what_unsupervised_trains(digits_runs):
    unsupervised_weights = load_file(digits_runs / "checkpoints" / f"main_Digits_even_Unsupervised_0.0_{TAGS}_0" / WEIGHTS)
    filter_weights = load_file(digits_runs / "checkpoints" / f"main_Digits_even_Filter_0.0_{TAGS}_0" / WEIGHTS)
    assert all(torch.equal(unsupervised_weights[k], filter_weights[k]) for k in unsupervised_weights)
    record = record_of(digits_runs, f"main_Digits_even_Filter_0.0_{TAGS}_0")
    assert record["selection"]["n_dropped"] == 0 and record["selection"]["n_train"] == N_U + N_S


def test_filter_drops_beta_u_and_records_the_counts_and_its_training_states_hold_the_selection(digits_runs, capsys):
    key = f"main_Digits_even_Filter_0.1_{TAGS}_0"
    record = record_of(digits_runs, key)
    assert (record["algorithm"], record["beta"], "neggrad_weight" in record) == ("Filter", 0.1, False)
    selection = record["selection"]
    # round(0.1 x 44) = 4 of U's images dropped; U holds 4 sensitive ones: dropped or kept.
    assert selection["rule"] == "filter" and selection["n_dropped"] == 4 and selection["n_train"] == N_U + N_S - 4
    assert selection["n_dropped_sensitive"] + selection["n_sensitive_kept"] == 4
    assert selection["scores"] == "5-fold cnn (scratch) logits"
    assert record["split"] == dict(n_u_normal=40, n_u_sensitive=4, n_s=5, n_test=8)     # the split drawn
    split = saved_split(digits_runs, key)
    assert len(split["indices"]) == N_U + N_S - 4 and int(split["labels"].sum()) == N_S    # S all kept
    # Resumed from its last state, the run selects again and finds the split it saved.
    (digits_runs / "outputs" / "images" / f"{key}.png").unlink()
    import shutil
    shutil.rmtree(digits_runs / "checkpoints" / key)
    capsys.readouterr()
    run_script("main.py", [*DIGITS, "--algorithm", "Filter", "--checkpointing_steps", "1", "--output_dir", digits_runs,
                           "--resume_from_checkpoint", "latest"])
    assert "resumed from" in capsys.readouterr().out
    assert record_of(digits_runs, key)["selection"] == selection


def test_clean_trains_on_u_normal_and_s(digits_runs):
    record = record_of(digits_runs, f"main_Digits_even_Clean_0.0_{TAGS}_0")
    assert record["beta"] == 0.0 and record["selection"] == dict(rule="clean", n_train=45, n_dropped=4,
                                                                 n_dropped_sensitive=4, n_sensitive_kept=0)


def test_neggrad_records_its_weight_tags_the_key_and_logs_its_parts(digits_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    key = f"main_Digits_even_NegGrad_0.0_{TAGS}_w0.3_0"
    record = record_of(digits_runs, key)
    assert (record["beta"], record["neggrad_weight"], record["key_tags"][-1]) == (0.0, 0.3, "w0.3")
    assert "selection" not in record
    logs = EventAccumulator(str(digits_runs / "outputs" / "logs" / key)).Reload()
    assert {"train/loss", "train/R_U", "train/S_capped"} <= set(logs.Tags()["scalars"])
    # The loop caps S's error at one image's element count, 3 x 16 x 16.
    assert 0 < logs.Scalars("train/S_capped")[0].value <= 3 * 16 * 16


def test_filter_with_beta_auto_cross_fits_once_for_the_estimate_and_the_selection(tmp_path, monkeypatch):
    calls = []
    score = utils.prior_data.held_out_image_scores

    def counted(*args, **kwargs):
        calls.append(1)
        return score(*args, **kwargs)
    monkeypatch.setattr(utils.prior_data, "held_out_image_scores", counted)
    run_script("main.py", [*DIGITS, "--algorithm", "Filter", "--beta", "auto", "--output_dir", tmp_path])
    record = record_of(tmp_path, f"main_Digits_even_Filter_auto_{TAGS}_0")
    assert len(calls) == 1
    assert record["beta"] == record["beta_estimate"]["estimate"]
    assert record["selection"]["n_dropped"] == round(record["beta"] * N_U)


# ---- main-ft.py end to end ---------------------------------------------------------------------------------

def test_main_ft_fine_tunes_with_each_baseline(tmp_path):
    pretrained = save_tiny_ddpm(tmp_path / "ddpm", sample_size=16)
    out = tmp_path / "out"
    before = load_file(pretrained / WEIGHTS)
    for algorithm in ("Filter", "Clean", "NegGrad"):
        run_script("main-ft.py", [*DIGITS, "--algorithm", algorithm, "--pretrained_model", pretrained,
                                  "--output_dir", out])
    records = {r["algorithm"]: r for r in (record_of(out, f"main_ft_Digits_even_{a}_{b}_{TAGS}_0")
                                           for a, b in (("Filter", 0.1), ("Clean", 0.0), ("NegGrad", 0.0)))}
    assert records["Filter"]["selection"]["n_dropped"] == 4 and records["Clean"]["selection"]["n_dropped"] == 4
    # The default weight adds no tag to the key.
    assert records["NegGrad"]["neggrad_weight"] == DEFAULT_NEGGRAD_WEIGHT
    assert records["NegGrad"]["key_tags"] == TAGS.split("_")
    for algorithm in records:
        after = load_file(out / "checkpoints" / records[algorithm]["key"] / WEIGHTS)
        assert not all(torch.equal(before[k], after[k]) for k in before), algorithm


# ---- main-sd.py end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    return dict(sd=save_tiny_stable_diffusion(root / "sd"), clip=save_tiny_clip(root / "clip"))


def sd_args(tiny_sd, data, out, algorithm):
    return ["--algorithm", algorithm, "--data_dir", data, "--pretrained_model", tiny_sd["sd"], "--output_dir", out,
            "--num_epochs", "1", "--batch_size", "5", "--resolution", "16", "--num_inference_steps", "2",
            "--num_workers", "0", "--num_eval_samples", "0", "--clip_model", tiny_sd["clip"]]


def test_main_sd_filters_by_clip_features_and_runs_neggrad(tmp_path, tiny_sd):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    # U: 9 normal (bluish, man_*) and 1 sensitive (reddish, brad_pitt_000, first in file order); S: 5 reddish.
    data = write_coloured_sd_folder(tmp_path / "data", 9, 1, 5)
    out = tmp_path / "out"
    run_script("main-sd.py", [*sd_args(tiny_sd, data, out, "Filter"), "--checkpointing_steps", "1"])
    key = "main_sd_Filter_0.1_ep1_bs5_steps2_res16_42"
    record = record_of(out, key)
    # round(0.1 x 10) = 1 dropped; a folder's U labels are unknown, so no sensitive counts.
    assert record["selection"] == dict(rule="filter", n_train=14, n_dropped=1, n_dropped_sensitive=None,
                                       n_sensitive_kept=None,
                                       scores="5-fold logistic regression of CLIP image features")
    assert record["data"] == dict(n_unlabeled=10, n_positive=5)                   # the folders as they are
    split = saved_split(out, key)
    assert split["indices"].tolist() == list(range(1, 15))     # the reddish image of U (position 0) is the one dropped

    run_script("main-sd.py", sd_args(tiny_sd, data, out, "NegGrad"))
    key = "main_sd_NegGrad_0.0_ep1_bs5_steps2_res16_42"
    assert record_of(out, key)["neggrad_weight"] == DEFAULT_NEGGRAD_WEIGHT
    logs = EventAccumulator(str(out / "outputs" / "logs" / key)).Reload()
    # The cap is the latent's element count: 4 channels x 8 x 8.
    assert 0 < logs.Scalars("train/S_capped")[0].value <= 4 * 8 * 8


# ---- refusals ---------------------------------------------------------------------------------------------

def refused(script, argv, capsys, out):
    module = load_script(script)
    with pytest.raises(SystemExit) as stopped:
        module.main(module.parse_args([str(a) for a in argv]))
    assert stopped.value.code == USAGE_EXIT_CODE
    assert not out.exists()
    return capsys.readouterr().err


def test_clean_is_refused_where_u_labels_are_unknown(tmp_path, tiny_sd, capsys):
    folder = write_image_folder(tmp_path / "faces", 10, 1, 5)
    out = tmp_path / "out"
    message = "U's labels are unknown for image folders; Clean trains on U's normal images only"
    assert message in refused("main.py", ["--train_data_dir", folder, "--algorithm", "Clean", "--batch_size", "8",
                                           "--output_dir", out], capsys, out)
    pretrained = save_tiny_ddpm(tmp_path / "ddpm", sample_size=16)
    assert message in refused("main-ft.py", ["--train_data_dir", folder, "--algorithm", "Clean", "--batch_size", "8",
                                             "--pretrained_model", pretrained, "--output_dir", out], capsys, out)
    data = write_coloured_sd_folder(tmp_path / "sd", 4, 1, 2)
    assert message in refused("main-sd.py", sd_args(tiny_sd, data, out, "Clean"), capsys, out)


@pytest.mark.parametrize("argv, message", [
    (["--algorithm", "Clean", "--beta", "auto"], "Clean does not use beta: drop --beta or use --algorithm PU or Filter"),
    (["--algorithm", "NegGrad", "--beta", "auto"], "NegGrad does not use beta"),
    (["--algorithm", "NegGrad", "--neggrad_weight", "0"], "--neggrad_weight: must be a positive number"),
])
def test_options_the_baselines_do_not_take(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    module = load_script("main.py")
    with pytest.raises(SystemExit) as stopped:
        module.main(module.parse_args([*DIGITS, *argv, "--output_dir", str(out)]))
    assert stopped.value.code == USAGE_EXIT_CODE and message in capsys.readouterr().err
    assert not out.exists()


# ---- report.py ------------------------------------------------------------------------------------------------

def test_report_orders_the_rows_by_the_algorithm_table(tmp_path, capsys):
    import report
    results = tmp_path / "results"
    results.mkdir()
    runs = [("NegGrad", 0.0, ["w0.3"]), ("NegGrad", 0.0, []), ("Clean", 0.0, []), ("Filter", 0.1, []),
            ("PU", 0.1, []), ("Supervised", 0.0, []), ("Unsupervised", 0.0, [])]
    for i, (algorithm, beta, tags) in enumerate(runs):
        key = "_".join(["main_Digits_even", algorithm, str(beta), *tags, "0"])
        (results / f"{key}.json").write_text(json.dumps(dict(
            key=key, script="main", config_name="Digits_even", algorithm=algorithm, beta=beta, seed=0, key_tags=tags,
            metrics=dict(non_sensitive_rate=0.9 + i / 100, classifier_accuracy=0.98))))
    report.main(report.parse_args([str(results)]))
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| algorithm")]
    assert rows == ["Unsupervised", "Supervised", "PU", "Filter", "Clean", "NegGrad", "NegGrad (w0.3)"]
