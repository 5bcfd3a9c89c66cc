"""The paper's table layout from result JSON files (report.py): grouping, mean +- std, Markdown, CSV, plot.

report.py's docstring states the result schema. Rows are (algorithm, beta, key tags, sampling) keys,
so that runs which differ in a setting (an ablation: --n_s 30, --pu_correction nn) get rows of their
own and only the seed is averaged; columns are config names tagged with the script; each table maps
(row, column) to (mean, sample std, n) over seeds.
"""
import csv
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from configs import AUTO_BETA, CONFIGS
from losses import ALGORITHMS
from utils.data import DATASETS
from utils.errors import UsageError
from utils.metrics import SHARE_PREFIX
from utils.records import tagged_value, without_tag

ALGORITHM_ORDER = tuple(ALGORITHMS)      # rows in the algorithm table's order
RATE, ACCURACY, FID, FD_CLASSIFIER = "non_sensitive_rate", "classifier_accuracy", "fid", "fd_classifier"
# The class classifier's quality measures (utils.metrics.class_quality), tabled in this order after FID.
FD_CLASSES, PRECISION, RECALL, SENSITIVE_SHARE = "fd_classes", "precision", "recall", "sensitive_share"
CLASS_ACCURACY = "class_accuracy"
QUALITY = (FD_CLASSES, PRECISION, RECALL, SENSITIVE_SHARE)
TITLES = {RATE: "Non-sensitive rate (share of samples the classifier calls normal; higher is better)",
          FID: "FID against the normal-only test set (lower is better)",
          FD_CLASSES: "Fréchet distance in the class classifier's features against the normal-only test set "
                      "(lower is better)",
          PRECISION: "Precision (k = 3, class classifier's features): share of samples inside the normal test "
                     "images' manifold (higher is better)",
          RECALL: "Recall (k = 3, class classifier's features): share of normal test images inside the "
                  "samples' manifold (higher is better)",
          SENSITIVE_SHARE: "Sensitive share: samples the class classifier puts in a sensitive class (lower is better)"}
DECIMALS = {RATE: 3, FID: 2, FD_CLASSIFIER: 3, FD_CLASSES: 2}
DEFAULT_DECIMALS = 3
SCRIPT_TAGS = {"main": "", "main_ft": " (fine-tuned)"}
MISSING = "—"
TAG_NUMBER = re.compile(r"^(\D+)(\d+(?:\.\d*)?(?:e[-+]?\d+)?)$")   # a key tag's name and number: ckpt500, lr1e-05
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


def beta_of(r):
    """The run's beta, or "auto" where it was estimated (--beta auto: one row whatever each seed's estimate)."""
    return AUTO_BETA if r.get("beta_estimate") else float(r["beta"])


def beta_text(beta):
    return f"β={beta}" if beta == AUTO_BETA else f"β={beta:g}"


def beta_order(beta):
    return (1, 0.0) if beta == AUTO_BETA else (0, beta)


def tags_of(r):
    """The run's key tags (settings that differ from its config's), as a tuple; () for default runs."""
    return tuple(r.get("key_tags") or ())


def n_s_of(r):
    """The labeled-set size |S| the run trained with: recorded in the result, else its `nS` key tag,
    else (a default run) its config's own; None for a config this registry does not know."""
    if r.get("n_s") is not None:
        return r["n_s"]
    tagged = tagged_value(tags_of(r), "n_s")
    if tagged is not None:
        return tagged
    config = CONFIGS.get(r["config_name"])
    return getattr(config, "n_s", None)


def row_keys(results):
    """Row key (algorithm, beta, key tags, sampling) of each result and a label for each row."""
    betas = defaultdict(set)
    for r in results:
        betas[r["algorithm"]].add(beta_of(r))
    # Columns may differ in sampler (DDPM 1000 from scratch, DDIM 50 fine-tuned). Where one column holds
    # several, its rows would sit side by side as if comparable (on the digits DDIM 100 draws 16.8%
    # sensitive samples where DDPM 1000 draws 10.0%), so then every row names its sampling.
    samplings = defaultdict(set)
    for r in results:
        samplings[column_of(r)].add(sampling_of(r))
    mixed_sampling = any(len(s) > 1 for s in samplings.values())
    keys = [(r["algorithm"], beta_of(r), tags_of(r), sampling_of(r) if mixed_sampling else "") for r in results]

    def label(key):
        algorithm, beta, tags, sampling = key
        inside = ([beta_text(beta)] if len(betas[algorithm]) > 1 else []) + list(tags)
        text = f"{algorithm} ({', '.join(inside)})" if inside else algorithm
        return f"{text}, {sampling}" if sampling else text
    order = {a: i for i, a in enumerate(ALGORITHM_ORDER)}
    rows = sorted(set(keys), key=lambda k: (order.get(k[0], len(order)), k[0], beta_order(k[1]), tags_order(k[2]),
                                            k[3]))
    return keys, {k: label(k) for k in rows}


def tags_order(tags):
    """Key tags as they sort in a table: by name, then by number, so that a learning curve's rows
    (ckpt500, ckpt1000, ...) or a sweep's (nS10, nS100) come in numeric order."""
    return tuple((tag, -math.inf) if (m := TAG_NUMBER.match(tag)) is None else (m.group(1), float(m.group(2)))
                 for tag in tags)


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

    def with_accuracy(cols, accuracy_metric, judge):
        """Each column's header with the mean held-out accuracy of the classifier that judged it."""
        headers = {}
        for c in cols:
            acc = summarize(r["metrics"].get(accuracy_metric) for r in results if column_of(r) == c)
            headers[c] = f"{c} ({judge} acc. {acc[0]:.3f})" if acc else c
        return headers

    if RATE in present:
        cols = with_metric(RATE)
        table(TITLES[RATE], {c: RATE for c in cols}, with_accuracy(cols, ACCURACY, "classifier"))
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
    for metric in [m for m in QUALITY if m in present]:
        cols = with_metric(metric)
        table(TITLES[metric], {c: metric for c in cols}, with_accuracy(cols, CLASS_ACCURACY, "class classifier"))
    shares = {m for m in present if m.startswith(SHARE_PREFIX)}
    if shares:
        tables.extend(class_share_tables(results, rows, by_cell, columns, shares))
    for metric in sorted(present - {RATE, ACCURACY, FID, FD_CLASSIFIER, CLASS_ACCURACY, *QUALITY} - shares):
        cols = with_metric(metric)
        table(metric, {c: metric for c in cols}, {c: c for c in cols})
    return tables, rows


def class_name(r, metric):
    """`share_3` of a Fashion-MNIST run -> "Dress"; a sensitive class (not in its config's normal
    classes) is starred."""
    c = int(metric[len(SHARE_PREFIX):])
    names = DATASETS[r["dataset"]].class_names if r.get("dataset") in DATASETS else ()
    config = CONFIGS.get(r["config_name"])
    star = "*" if config is not None and c not in config.normal_classes else ""
    return (names[c] if c < len(names) else str(c)) + star


def class_share_tables(results, rows, by_cell, columns, shares):
    """One table per config column: rows the algorithms, columns each class's share of the samples."""
    tables = []
    for column in columns:
        in_column = [r for r in results if column_of(r) == column]
        metrics = sorted({m for r in in_column for m in shares if r["metrics"].get(m) is not None},
                         key=lambda m: int(m[len(SHARE_PREFIX):]))
        if not metrics:
            continue
        cell_ids = {f"{column}: {m}": m for m in metrics}
        headers = {cid: class_name(in_column[0], m) for cid, m in cell_ids.items()}
        cells = {(row, cid): summarize(r["metrics"].get(m) for r in by_cell.get((row, column), []))
                 for row in rows for cid, m in cell_ids.items()}
        title = f"Class shares of the samples in {column} (class classifier; * sensitive class)"
        tables.append((title, cell_ids, headers, cells))
    return tables


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
    writer.writerow(["metric", "algorithm", "beta", "key_tags", "sampling", "row", "column", "mean", "std", "n"])
    for _, metric_of, _, cells in tables:
        for (row, col), stats in cells.items():
            mean, std, n = stats if stats else ("", "", 0)
            algorithm, beta, tags, sampling = row
            writer.writerow([metric_of[col], algorithm, beta, "_".join(tags), sampling, rows[row], col, mean,
                             "" if std is None else std, n])
    return buffer.getvalue()


def panel_title(metric_of):
    metrics = set(metric_of.values())
    if metrics == {RATE}:
        return "Non-sensitive rate (higher is better)"
    if metrics <= {FID, FD_CLASSIFIER}:
        return "FID (lower is better)" + ("; [fd_classifier] columns: classifier features" if FD_CLASSIFIER in metrics else "")
    return ", ".join(sorted(metrics))


def sweeps(results, x_of, group_of):
    """{(column, group): [(x, stats of the rate)]} for every group whose results span several x values."""
    points = defaultdict(lambda: defaultdict(list))
    for r in results:
        x = x_of(r)
        if x is not None and r["metrics"].get(RATE) is not None:
            points[column_of(r), group_of(r)][x].append(r["metrics"][RATE])
    return {k: [(x, summarize(v)) for x, v in sorted(by_x.items())] for k, by_x in points.items() if len(by_x) > 1}


def without_n_s(tags):
    return without_tag(tags, "n_s")


def group_label(column, group):
    return ", ".join([str(g) for g in group if g not in ((), "")] + [column])


def reference_levels(results):
    """(label, mean rate) of the default runs of each algorithm that does not use beta (Unsupervised,
    Supervised, Clean, NegGrad): the levels a sweep of PU or Filter is read against."""
    rates = defaultdict(list)
    for r in results:
        algorithm = ALGORITHMS.get(r["algorithm"])
        if algorithm and not algorithm.uses_beta and not tags_of(r) and r["metrics"].get(RATE) is not None:
            rates[r["algorithm"], column_of(r)].append(r["metrics"][RATE])
    return [(f"{a}, {c}", summarize(v)[0]) for (a, c), v in sorted(rates.items())]


def plot_sweep(ax, series, references, xlabel, title):
    """The rate (mean +- std over seeds) along each series; `references` as horizontal lines."""
    for i, ((column, group), points) in enumerate(sorted(series.items(), key=str)):
        ax.errorbar([x for x, _ in points], [s[0] for _, s in points], yerr=[s[1] or 0 for _, s in points],
                    marker="o", capsize=3, color=f"C{i}", label=group_label(column, group))
    for j, (label, level) in enumerate(references):
        ax.axhline(level, color="gray", linestyle=("--", ":", "-.")[j % 3], linewidth=1, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("non-sensitive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def plot(tables, rows, results, path):
    """Bars per row for the rate and FID tables; the rate against beta and against |S| where the
    results hold such a series (several betas, or several |S|, of one algorithm and setting)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [t for t in tables if set(t[1].values()) & {RATE, FID, FD_CLASSIFIER}] or tables[:1]
    beta_series = sweeps(results, lambda r: None if beta_of(r) == AUTO_BETA else beta_of(r),
                         lambda r: (r["algorithm"], tags_of(r)))
    n_s_series = sweeps(results, n_s_of, lambda r: (r["algorithm"], beta_text(beta_of(r)), without_n_s(tags_of(r))))
    references = reference_levels(results)
    n_axes = len(panels) + bool(beta_series) + bool(n_s_series)
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
    extra = iter(axes[0][len(panels):])
    if beta_series:
        plot_sweep(next(extra), beta_series, references, "β (class prior)", "Non-sensitive rate against β")
    if n_s_series:
        plot_sweep(next(extra), n_s_series, references, "|S| (labeled sensitive images)",
                   "Non-sensitive rate against |S|")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
