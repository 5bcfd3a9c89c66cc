"""The paper's table layout from result JSON files (report.py): grouping, mean +- std, Markdown, CSV, plot.

report.py's docstring states the result schema. Rows are (algorithm, beta, sampling) keys, columns
config names tagged with the script; each table maps (row, column) to (mean, sample std, n) over seeds.
"""
import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

from losses import ALGORITHMS
from utils.errors import UsageError

ALGORITHM_ORDER = tuple(ALGORITHMS)      # rows in the algorithm table's order
RATE, ACCURACY, FID, FD_CLASSIFIER = "non_sensitive_rate", "classifier_accuracy", "fid", "fd_classifier"
TITLES = {RATE: "Non-sensitive rate (share of samples the classifier calls normal; higher is better)",
          FID: "FID against the normal-only test set (lower is better)"}
DECIMALS = {RATE: 3, FID: 2, FD_CLASSIFIER: 3}
DEFAULT_DECIMALS = 3
SCRIPT_TAGS = {"main": "", "main_ft": " (fine-tuned)"}
MISSING = "—"
REQUIRED = ("config_name", "algorithm", "beta", "seed", "metrics")


def load_results(results_dir):
    """Every result JSON in `results_dir`; a UsageError naming a file that is not one."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(f"{results_dir} is not a folder; pass the outputs/results folder evaluate.py wrote")
    results = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not valid JSON ({e}); fix or move it")
        missing = [k for k in REQUIRED if k not in r] if isinstance(r, dict) else list(REQUIRED)
        if missing:
            raise UsageError(f"{path} lacks {', '.join(missing)}; it is not a result file, move it elsewhere")
        results.append(r)
    if not results:
        raise UsageError(f"no result files (*.json) in {results_dir}; run evaluate.py on a checkpoint first")
    return results


def column_of(r):
    return r["config_name"] + SCRIPT_TAGS.get(r.get("script", "main"), f" ({r.get('script')})")


def sampling_of(r):
    return f"{r.get('sampler') or ''} {r.get('num_inference_steps') or ''}".strip()


def row_keys(results):
    """Row key (algorithm, beta, sampling) of each result and a label for each row."""
    betas = defaultdict(set)
    for r in results:
        betas[r["algorithm"]].add(float(r["beta"]))
    # Configs may differ in sampler (DDPM 1000 from scratch, DDIM 50 fine-tuned); only a cell that
    # would average over several sampling settings splits the rows by them.
    samplings = defaultdict(set)
    for r in results:
        samplings[r["algorithm"], float(r["beta"]), column_of(r)].add(sampling_of(r))
    mixed_sampling = any(len(s) > 1 for s in samplings.values())
    keys = [(r["algorithm"], float(r["beta"]), sampling_of(r) if mixed_sampling else "") for r in results]

    def label(key):
        algorithm, beta, sampling = key
        text = f"{algorithm} (β={beta:g})" if len(betas[algorithm]) > 1 else algorithm
        return f"{text}, {sampling}" if sampling else text
    order = {a: i for i, a in enumerate(ALGORITHM_ORDER)}
    rows = sorted(set(keys), key=lambda k: (order.get(k[0], len(order)), k[0], k[1], k[2]))
    return keys, {k: label(k) for k in rows}


def summarize(values):
    """(mean, sample std or None, n) of the non-null values; None where there are none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def format_cell(stats, decimals):
    if stats is None:
        return MISSING
    mean, std, n = stats
    spread = f" ± {std:.{decimals}f}" if std is not None else ""
    return f"{mean:.{decimals}f}{spread} (n={n})"


def build_tables(results):
    """[(title, metric name per column, {column: header}, {(row, column): stats})] and the row labels."""
    keys, rows = row_keys(results)
    by_cell = defaultdict(list)
    for key, r in zip(keys, results):
        by_cell[key, column_of(r)].append(r)
    columns = sorted({column_of(r) for r in results})
    present = {m for r in results for m, v in r["metrics"].items() if v is not None}
    tables = []

    def table(title, metric_of_column, header_of_column):
        cells = {(row, col): summarize(r["metrics"].get(metric_of_column[col]) for r in by_cell.get((row, col), []))
                 for row in rows for col in metric_of_column}
        tables.append((title, metric_of_column, header_of_column, cells))

    def with_metric(metric):
        return [c for c in columns if any(r["metrics"].get(metric) is not None for r in results if column_of(r) == c)]

    if RATE in present:
        cols = with_metric(RATE)
        headers = {}
        for c in cols:
            acc = summarize(r["metrics"].get(ACCURACY) for r in results if column_of(r) == c)
            headers[c] = f"{c} (classifier acc. {acc[0]:.3f})" if acc else c
        table(TITLES[RATE], {c: RATE for c in cols}, headers)
    if present & {FID, FD_CLASSIFIER}:
        cols = sorted(set(with_metric(FID)) | set(with_metric(FD_CLASSIFIER)))
        metric_of = {c: FID if all(r["metrics"].get(FID) is not None for r in results if column_of(r) == c)
                     else FD_CLASSIFIER for c in cols}
        headers = {c: c if metric_of[c] == FID else f"{c} [fd_classifier]" for c in cols}
        title = TITLES[FID]
        if FD_CLASSIFIER in metric_of.values():
            title += ("; [fd_classifier]: Inception FID unavailable, Fréchet distance in the sensitivity "
                      "classifier's penultimate features instead (comparable within a column only)")
        table(title, metric_of, headers)
    for metric in sorted(present - {RATE, ACCURACY, FID, FD_CLASSIFIER}):
        cols = with_metric(metric)
        table(metric, {c: metric for c in cols}, {c: c for c in cols})
    return tables, rows


def markdown(tables, rows):
    out = []
    for title, metric_of, headers, cells in tables:
        cols = list(metric_of)
        out += [f"**{title}**", "", "| algorithm | " + " | ".join(headers[c] for c in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for row, label in rows.items():
            out.append(f"| {label} | " + " | ".join(
                format_cell(cells[row, c], DECIMALS.get(metric_of[c], DEFAULT_DECIMALS)) for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def csv_text(tables, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "algorithm", "beta", "sampling", "row", "column", "mean", "std", "n"])
    for _, metric_of, _, cells in tables:
        for (row, col), stats in cells.items():
            mean, std, n = stats if stats else ("", "", 0)
            writer.writerow([metric_of[col], *row, rows[row], col, mean, "" if std is None else std, n])
    return buffer.getvalue()


def panel_title(metric_of):
    metrics = set(metric_of.values())
    if metrics == {RATE}:
        return "Non-sensitive rate (higher is better)"
    if metrics <= {FID, FD_CLASSIFIER}:
        return "FID (lower is better)" + ("; [fd_classifier] columns: classifier features" if FD_CLASSIFIER in metrics else "")
    return ", ".join(sorted(metrics))


def plot(tables, rows, results, path):
    """Bars per algorithm for the rate and FID tables; the rate against beta when several betas ran."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [t for t in tables if set(t[1].values()) & {RATE, FID, FD_CLASSIFIER}] or tables[:1]
    betas = defaultdict(set)
    for r in results:
        betas[r["algorithm"]].add(float(r["beta"]))
    sweep = [a for a, b in betas.items() if len(b) > 1]
    n_axes = len(panels) + bool(sweep)
    fig, axes = plt.subplots(1, n_axes, figsize=(5.5 * n_axes, 4), squeeze=False)
    for ax, (_, metric_of, headers, cells) in zip(axes[0], panels):
        cols = list(metric_of)
        width = 0.8 / max(len(rows), 1)
        for i, (row, label) in enumerate(rows.items()):
            stats = [cells[row, c] for c in cols]
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cols))]
            ax.bar(xs, [s[0] if s else math.nan for s in stats], width,
                   yerr=[(s[1] or 0) if s else 0 for s in stats], capsize=3, label=label)
        means = [s[0] for s in cells.values() if s]
        if set(metric_of.values()) == {RATE} and means:
            # Rates cluster near 1 - beta; a zero baseline would hide the differences that matter.
            ax.set_ylim(max(0.0, min(means) - 0.1), 1.0)
        ax.set_xticks(range(len(cols)), [headers[c] for c in cols], rotation=20, ha="right", fontsize=7)
        ax.set_title(panel_title(metric_of), fontsize=9)
        ax.legend(fontsize=7)
    if sweep:
        ax = axes[0][-1]
        for k, col in enumerate(sorted({column_of(r) for r in results})):
            color = f"C{k}"
            for algorithm in betas:
                points = sorted(betas[algorithm])
                stats = [summarize(r["metrics"].get(RATE) for r in results if column_of(r) == col
                                   and r["algorithm"] == algorithm and float(r["beta"]) == b) for b in points]
                kept = [(b, s) for b, s in zip(points, stats) if s]
                if not kept:
                    continue
                if algorithm in sweep:
                    ax.errorbar([b for b, _ in kept], [s[0] for _, s in kept], yerr=[s[1] or 0 for _, s in kept],
                                marker="o", capsize=3, color=color, label=f"{algorithm}, {col}")
                else:   # a single-beta algorithm is a reference level across the sweep
                    ax.axhline(kept[0][1][0], color=color, linestyle="--" if algorithm == "Unsupervised" else ":",
                               linewidth=1, label=f"{algorithm}, {col}")
        ax.set_xlabel("β (class prior)")
        ax.set_ylabel("non-sensitive rate")
        ax.set_title("Non-sensitive rate against β", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
