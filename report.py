"""Turn evaluation results into the paper's tables: Markdown on stdout, CSV and a PNG plot beside them.

    python report.py outputs/results > table.md

Reads every RESULTS_DIR/*.json (main.py, main-ft.py, main-sd.py, evaluate.py and evaluate-sd.py write
them) and prints one table per metric: rows are algorithms (with beta where an algorithm ran with
several, and the key's tags, e.g. nS30, where runs differ in them, in numeric order: a learning curve's
ckpt500 before ckpt1000), columns are
configs, cells are the mean +- sample standard deviation over seeds with the count, e.g.
`0.912 ± 0.004 (n=3)`; "—" marks a cell with no result. The rate table's headers carry the
sensitivity classifier's held-out accuracy. The FID table uses `fid`; a column where some run has
no FID (Inception weights unavailable) shows `fd_classifier` instead and says so in its header.
Writes RESULTS_DIR/report.csv (one line per cell) and RESULTS_DIR/report.png (the non-sensitive
rate and FID per algorithm; the rate against beta, or against |S|, when several are present, with
Unsupervised and Supervised as reference lines).

Result JSON schema (fields report.py reads; others are kept for the record):
    {"key": str, "script": "main" | "main_ft" | "main_sd" | ...,   # one file per evaluated run
     "config_name": str, "algorithm": str, "beta": float, "seed": int,
     "sampler": str, "num_inference_steps": int,                   # optional
     "metrics": {name: float | null, ...}}
A metric may be null (not measured: an image folder has no class labels, and no rate without
labeled test images; the result's "unavailable" says why): it counts as missing.
Known metric names: non_sensitive_rate, classifier_accuracy (shown in the rate table's header),
fid, fd_classifier; the class classifier's fd_classes, precision, recall and sensitive_share
(class_accuracy in their headers), and share_{class id}, folded into one table per config whose
columns are the dataset's class names (sensitive ones starred). Any other name (e.g. evaluate-sd.py's brad_pitt_share_brad_pitt_prompt) gets a
table of its own, so a new script needs no change here. Columns are config_name, tagged with the
script unless it is main.py; rows gain the sampler and steps where one column holds several.
"""
import argparse
import sys
from pathlib import Path

from utils.errors import UsageError, exits_on_usage_error
from utils.files import write_file_atomically
from utils.report import build_tables, csv_text, load_results, markdown, plot


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", nargs="?", default="outputs/results",
                        help="folder of result JSON files (default: %(default)s)")
    return parser.parse_args(argv)


@exits_on_usage_error
def main(args):
    results = load_results(args.results_dir)
    tables, rows = build_tables(results)
    if not tables:   # e.g. image-folder evaluations without test images: every metric null, with its reason
        reasons = next((r["unavailable"] for r in results if r.get("unavailable")), {})
        why = f" (e.g. non_sensitive_rate: {reasons['non_sensitive_rate']})" if "non_sensitive_rate" in reasons else ""
        raise UsageError(f"none of the {len(results)} results in {args.results_dir} holds a measured metric{why}; "
                         f"nothing to tabulate")
    print(markdown(tables, rows))
    csv_path, png_path = Path(args.results_dir) / "report.csv", Path(args.results_dir) / "report.png"
    write_file_atomically(csv_path, lambda tmp: Path(tmp).write_text(csv_text(tables, rows)))
    write_file_atomically(png_path, lambda tmp: plot(tables, rows, results, tmp))
    print(f"{len(results)} results; wrote {csv_path} and {png_path}", file=sys.stderr)


if __name__ == "__main__":
    main(parse_args())
