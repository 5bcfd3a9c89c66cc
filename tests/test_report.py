"""report.py on hand-written result JSON files: means, standard deviations, counts, missing cells.

One `python report.py` subprocess checks the command line (Markdown on stdout, CSV and PNG beside
the results); the rest call report.main in this process.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import report  # noqa: E402

USAGE_EXIT = 2


def result(config, algorithm, beta, seed, rate, fid=None, fd=1.0, accuracy=0.98, script="main", sampler="ddim",
           steps=100, **extra_metrics):
    metrics = dict(non_sensitive_rate=rate, classifier_accuracy=accuracy, fid=fid, fd_classifier=fd)
    return dict(key=f"{script}_{config}_{algorithm}_{beta}_{seed}", script=script, config_name=config,
                algorithm=algorithm, beta=beta, seed=seed, sampler=sampler, num_inference_steps=steps,
                metrics=dict(metrics, **extra_metrics))


# Digits_even: no FID anywhere (offline), so its FID column falls back to fd_classifier.
# Digits_odd: FID everywhere; Supervised never ran on it, PU only once.
RESULTS = [
    result("Digits_even", "Unsupervised", 0.0, 0, 0.90, fd=2.0),
    result("Digits_even", "Unsupervised", 0.0, 1, 0.92, fd=4.0),
    result("Digits_even", "Unsupervised", 0.0, 2, 0.94, fd=6.0),
    result("Digits_even", "Supervised", 0.0, 0, 0.93, fd=5.0),
    result("Digits_even", "PU", 0.1, 0, 0.95, fd=3.0),
    result("Digits_even", "PU", 0.1, 1, 0.97, fd=5.0),
    result("Digits_odd", "Unsupervised", 0.0, 0, 0.85, fid=10.0, accuracy=0.99),
    result("Digits_odd", "Unsupervised", 0.0, 1, 0.87, fid=14.0, accuracy=0.99),
    result("Digits_odd", "PU", 0.1, 0, 0.96, fid=11.0, accuracy=0.99),
]


def write(folder, results):
    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        (folder / f"{r['key']}.json").write_text(json.dumps(r))
    return folder


def tables_by_title(markdown):
    """{title: {row label: {column header: cell}}} parsed back from report.py's Markdown."""
    tables, title, header = {}, None, None
    for line in markdown.splitlines():
        if line.startswith("**"):
            title, header = line.strip("*"), None
            tables[title] = {}
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                tables[title][cells[0]] = dict(zip(header[1:], cells[1:]))
    return tables


def run_report(folder, capsys):
    report.main(report.parse_args([str(folder)]))
    return tables_by_title(capsys.readouterr().out)


def table_starting(tables, prefix):
    (match,) = [t for title, t in tables.items() if title.startswith(prefix)]
    return match


def test_report_command_writes_markdown_csv_and_png(tmp_path):
    folder = write(tmp_path / "results", RESULTS)
    proc = subprocess.run([sys.executable, "report.py", str(folder)], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rate = table_starting(tables_by_title(proc.stdout), "Non-sensitive rate")
    assert rate["Unsupervised"]["Digits_even (classifier acc. 0.980)"] == "0.920 ± 0.020 (n=3)"
    assert all(line.startswith(("|", "**")) or not line for line in proc.stdout.splitlines())
    with open(folder / "report.csv") as f:
        rows = list(csv.DictReader(f))
    cell = [r for r in rows if r["metric"] == "non_sensitive_rate" and r["row"] == "PU" and r["column"] == "Digits_even"]
    assert len(cell) == 1 and float(cell[0]["mean"]) == pytest.approx(0.96)
    assert float(cell[0]["std"]) == pytest.approx(0.0141421, rel=1e-4) and cell[0]["n"] == "2"
    with Image.open(folder / "report.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_cells_are_mean_sample_std_and_seed_count_with_missing_cells_marked(tmp_path, capsys):
    tables = run_report(write(tmp_path, RESULTS), capsys)
    rate = table_starting(tables, "Non-sensitive rate")
    assert list(rate) == ["Unsupervised", "Supervised", "PU"]           # the paper's row order
    even, odd = "Digits_even (classifier acc. 0.980)", "Digits_odd (classifier acc. 0.990)"
    assert rate["Unsupervised"] == {even: "0.920 ± 0.020 (n=3)", odd: "0.860 ± 0.014 (n=2)"}
    assert rate["Supervised"] == {even: "0.930 (n=1)", odd: "—"}
    assert rate["PU"] == {even: "0.960 ± 0.014 (n=2)", odd: "0.960 (n=1)"}


def test_fid_table_falls_back_to_fd_classifier_where_fid_is_missing_and_says_so(tmp_path, capsys):
    mixed = RESULTS + [result("Digits_odd", "Supervised", 0.0, 0, 0.9, fid=None, fd=7.0)]
    title, fid = next((t, v) for t, v in run_report(write(tmp_path, mixed), capsys).items() if t.startswith("FID"))
    assert "fd_classifier" in title
    # Digits_even has no FID; Digits_odd now has one run without it, so the whole column switches.
    assert fid["Unsupervised"] == {"Digits_even [fd_classifier]": "4.000 ± 2.000 (n=3)",
                                   "Digits_odd [fd_classifier]": "1.000 ± 0.000 (n=2)"}
    only_fid = run_report(write(tmp_path / "fid", RESULTS[6:]), capsys)
    fid_title = next(t for t in only_fid if t.startswith("FID"))
    assert "fd_classifier" not in fid_title
    assert only_fid[fid_title]["Unsupervised"] == {"Digits_odd": "12.00 ± 2.83 (n=2)"}


def test_several_betas_get_their_own_rows_and_the_beta_plot(tmp_path, capsys):
    betas = RESULTS + [result("Digits_even", "PU", 0.05, 0, 0.91), result("Digits_even", "PU", 0.05, 1, 0.93)]
    rate = table_starting(run_report(write(tmp_path, betas), capsys), "Non-sensitive rate")
    assert list(rate) == ["Unsupervised", "Supervised", "PU (β=0.05)", "PU (β=0.1)"]
    assert rate["PU (β=0.05)"]["Digits_even (classifier acc. 0.980)"] == "0.920 ± 0.014 (n=2)"
    assert rate["PU (β=0.05)"]["Digits_odd (classifier acc. 0.990)"] == "—"
    assert (tmp_path / "report.png").is_file()


def test_tagged_rows_come_in_numeric_order_as_a_learning_curve_reads(tmp_path, capsys):
    curve = [dict(result("Digits_even", "PU", 0.1, 0, rate), key=f"main_Digits_even_PU_0.1_ckpt{step}_0",
                  key_tags=[f"ckpt{step}"])                         # evaluate.py on three training states
             for step, rate in ((1000, 0.99), (250, 0.93), (500, 0.96))]
    rate = table_starting(run_report(write(tmp_path, RESULTS + curve), capsys), "Non-sensitive rate")
    assert [row for row in rate if row.startswith("PU")] == ["PU", "PU (ckpt250)", "PU (ckpt500)", "PU (ckpt1000)"]
    assert rate["PU (ckpt250)"]["Digits_even (classifier acc. 0.980)"] == "0.930 (n=1)"


def test_mixed_sampling_settings_are_kept_apart(tmp_path, capsys):
    fewer_steps = result("Digits_even", "Unsupervised", 0.0, 0, 0.5, steps=10)
    fewer_steps["key"] += "_steps10"        # as evaluate.py tags a run evaluated with other steps
    steps = RESULTS[:3] + [fewer_steps]
    rate = table_starting(run_report(write(tmp_path, steps), capsys), "Non-sensitive rate")
    assert rate["Unsupervised, ddim 10"]["Digits_even (classifier acc. 0.980)"] == "0.500 (n=1)"
    assert rate["Unsupervised, ddim 100"]["Digits_even (classifier acc. 0.980)"] == "0.920 ± 0.020 (n=3)"


def test_rows_sampled_differently_in_one_column_name_their_sampling(tmp_path, capsys):
    ddpm = result("Digits_even", "PU", 0.1, 0, 0.99, sampler="ddpm", steps=1000)
    rate = table_starting(run_report(write(tmp_path, RESULTS[:3] + [ddpm]), capsys), "Non-sensitive rate")
    assert set(rate) == {"Unsupervised, ddim 100", "PU, ddpm 1000"}


def test_other_scripts_metrics_get_tables_of_their_own(tmp_path, capsys):
    sd = [dict(key=f"main_sd_{a}_{b}_{s}", script="main_sd", config_name="middle_aged_man100", algorithm=a, beta=b,
               seed=s, num_inference_steps=50, metrics=dict(brad_pitt_share_brad_pitt_prompt=v))
          for a, b, s, v in [("Unsupervised", 0.0, 0, 0.8), ("PU", 0.1, 0, 0.1), ("PU", 0.1, 1, 0.3)]]
    tables = run_report(write(tmp_path, RESULTS[:3] + sd), capsys)
    share = tables["brad_pitt_share_brad_pitt_prompt"]
    assert share["PU"] == {"middle_aged_man100 (main_sd)": "0.200 ± 0.141 (n=2)"}
    assert share["Unsupervised"] == {"middle_aged_man100 (main_sd)": "0.800 (n=1)"}
    assert set(table_starting(tables, "Non-sensitive rate")["PU"].values()) == {"—"}


def test_class_classifier_metrics_get_quality_tables_and_a_named_class_share_table(tmp_path, capsys):
    def fashion(algorithm, beta, seed, bag, sandal):
        shares = {f"share_{c}": 0.0 for c in range(10)}
        shares.update(share_0=1.0 - bag - sandal, share_8=bag, share_5=sandal)
        r = result("FashionMNIST_clothes_cpu", algorithm, beta, seed, 0.9, fd_classes=10.0 + seed, precision=0.7,
                   recall=0.5, sensitive_share=bag + sandal, class_accuracy=0.9, **shares)
        return dict(r, dataset="FashionMNIST")
    runs = [fashion("Unsupervised", 0.0, 0, 0.10, 0.02), fashion("Unsupervised", 0.0, 1, 0.06, 0.02),
            fashion("PU", 0.1, 0, 0.0, 0.01)]
    tables = run_report(write(tmp_path, runs), capsys)
    fd = table_starting(tables, "Fréchet distance in the class classifier's features")
    assert fd["Unsupervised"] == {"FashionMNIST_clothes_cpu (class classifier acc. 0.900)": "10.50 ± 0.71 (n=2)"}
    assert table_starting(tables, "Sensitive share")["PU"] == {
        "FashionMNIST_clothes_cpu (class classifier acc. 0.900)": "0.010 (n=1)"}
    assert {table_starting(tables, t)["PU"][next(iter(table_starting(tables, t)["PU"]))]
            for t in ("Precision", "Recall")} == {"0.700 (n=1)", "0.500 (n=1)"}
    shares = table_starting(tables, "Class shares of the samples in FashionMNIST_clothes_cpu")
    assert list(shares["Unsupervised"])[:3] == ["T-shirt/top", "Trouser", "Pullover"]   # names, in class order
    assert shares["Unsupervised"]["Bag*"] == "0.080 ± 0.028 (n=2)"                     # sensitive classes starred
    assert shares["PU"]["Bag*"] == "0.000 (n=1)" and shares["PU"]["Shirt"] == "0.000 (n=1)"
    assert not any(title.startswith("share_") for title in tables)


@pytest.mark.parametrize("case", ["missing folder", "no results", "not json", "not a result"])
def test_bad_results_folders_are_usage_errors(tmp_path, case, capsys):
    folder = tmp_path / "results"
    if case != "missing folder":
        folder.mkdir()
    if case == "not json":
        (folder / "broken.json").write_text("{")
    if case == "not a result":
        (folder / "other.json").write_text(json.dumps({"key": "x"}))
    with pytest.raises(SystemExit) as exit_info:
        report.main(report.parse_args([str(folder)]))
    assert exit_info.value.code == USAGE_EXIT
    assert capsys.readouterr().err.startswith("error: ")
    assert not list(tmp_path.rglob("*report*"))                 # neither report.csv nor report.png begun
