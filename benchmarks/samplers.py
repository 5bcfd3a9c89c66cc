"""Which sampler gives the answer of the paper's DDPM in 1,000 steps at a tenth of its UNet evaluations?

    python benchmarks/samplers.py runs/fashion/checkpoints/main_FashionMNIST_clothes_cpu_{Unsupervised_0.0,PU_0.1}_0 --output_dir runs/samplers --json runs/samplers/samplers.json

For each checkpoint folder main.py or main-ft.py wrote, draws --num_samples images (default: the run's
num_eval_samples) with DDPM in 1,000 steps and the run's seed (the reference), again with the next seed
(the reference's own spread: what a second draw of the same sampler changes), and with each candidate
(sampler, steps) and the run's seed. Each draw is judged by the project's evaluation
(utils.evaluation: the config's classifiers, trained and cached under --output_dir/checkpoints/classifiers
on first use): per-class shares, sensitive share, non-sensitive rate, fd_classes, precision, recall.

A candidate passes on a checkpoint when `pass_checks` holds: its sensitive share within
max(1 point, the references' spread) of the reference's, every class's share within 2 points,
precision and recall within 0.02, fd_classes within the references' own spread, and at most a tenth
of the reference's UNet evaluations. It passes overall when it passes on every checkpoint given.
The second reference is judged by the same rule too (but for the evaluation count): a sampler that
draws from the reference's own distribution from an independent seed fails the share and
precision/recall checks as often as the second reference does, so its verdict is the rule's noise
floor at this many samples.

The table's "max class z" (not part of the rule) is the largest, over the classes, of a class's share
difference in standard errors (a two-proportion z): for two independent draws of the same sampler,
noise alone keeps it below 2.8 over ten classes in at least 19 draws of 20 (c with
(2 Phi(c) - 1)^K = 0.95 for K classes; correlated shares only lower it). That calibrates the second
reference's row; a candidate starts from the reference's own seed, so its draw is correlated with the
reference's and its z reads low.

The default candidates take 1,338 UNet evaluations per image, the two references 2,000: about 3.3
times one 1,000-step draw, which for 1,000 images of a 16 px model takes 30-47 minutes on one CPU core.
So every finished measurement is cached in --output_dir/sampler_measurements.json (written
atomically after each), keyed by checkpoint key, sampler, steps, seed, number of samples and batch
size, and a run stopped part way resumes where it stopped when started again with the same
arguments. Runs on different checkpoints may share one --output_dir at the same time (each re-reads
the cache before it adds a measurement). A checkpoint retrained under the same key needs another
--output_dir. The batch size is a fixed number (default: the one --eval_batch_size auto picks on a
CPU), so the samples do not depend on the machine's free memory.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: import the project

from models import SAMPLERS, unet_evaluations  # noqa: E402
from utils.cli import positive_int  # noqa: E402
from utils.errors import exits_on_usage_error  # noqa: E402
from utils.evaluation import evaluate, load_checkpoint_model, load_judges, read_checkpoint_run  # noqa: E402
from utils.files import write_json_atomically  # noqa: E402
from utils.metrics import SHARE_PREFIX  # noqa: E402
from utils.sampling import CPU_EVAL_PIXELS, Sampling, sampling_precision  # noqa: E402

REFERENCE_SAMPLER = "ddpm"
REFERENCE_STEPS = 1000                 # the paper's protocol
SECOND_SEED_OFFSET = 1                 # the second reference draw takes the run's seed + 1
DEFAULT_CANDIDATES = ("ddpm:100,250", "ddim:25,50,100", "ddim_eta1:50,100", "dpmpp_2m:20,25,50",
                      "dpmpp_2m_sde:25,50,100", "unipc:20,25,50", "euler_a:50,100", "heun:25,50")
CACHE_FILE = "sampler_measurements.json"

# The pass rule. Shares, precision and recall are fractions: 0.01 is one point.
MIN_SENSITIVE_SHARE_TOLERANCE = 0.01   # widened to the references' own spread where that is larger
CLASS_SHARE_TOLERANCE = 0.02
PRECISION_RECALL_TOLERANCE = 0.02
MAX_EVALUATION_SHARE = 0.1             # of the reference's UNet evaluations per sample
# Shares are counts over N, their differences computed in floating point: 0.12 - 0.10 may come out a
# hair above 0.02. A difference this much over a tolerance still counts as within it.
ROUNDING_SLACK = 1e-9


def parse_candidates(text):
    """'dpmpp_2m:20,50' -> [('dpmpp_2m', 20), ('dpmpp_2m', 50)]; an argparse type."""
    sampler, _, steps = text.partition(":")
    if sampler not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown sampler {sampler!r} in {text!r}; valid: {', '.join(SAMPLERS)}")
    try:
        counts = [positive_int(s) for s in steps.split(",")]
    except (argparse.ArgumentTypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: write SAMPLER:STEPS[,STEPS...] with positive step counts, "
                                         f"e.g. dpmpp_2m:20,50")
    return [(sampler, n) for n in counts]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints/main_* folders written by main.py or main-ft.py")
    p.add_argument("--output_dir", required=True,
                   help="receives the measurement cache and checkpoints/classifiers/ (the judges)")
    p.add_argument("--candidates", nargs="+", type=parse_candidates, default=list(map(parse_candidates,
                   DEFAULT_CANDIDATES)), metavar="SAMPLER:STEPS[,STEPS]",
                   help=f"samplers and step counts to test (default: {' '.join(DEFAULT_CANDIDATES)})")
    p.add_argument("--num_samples", type=positive_int, help="images per draw (default: the run's num_eval_samples)")
    p.add_argument("--eval_batch_size", type=positive_int,
                   help="images per sampling batch (default: what --eval_batch_size auto picks on a CPU)")
    p.add_argument("--reference_steps", type=positive_int, default=REFERENCE_STEPS,
                   help="the reference DDPM's steps: the paper's 1000; fewer only for smoke tests "
                        "(default: %(default)s)")
    p.add_argument("--data_dir", help="data root of the judges and the test set (default: the run's)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: CUDA where there is one")
    p.add_argument("--json", type=Path, help="also write every measurement, check and verdict here")
    p.add_argument("--cached_only", action="store_true",
                   help="measure nothing: tabulate what the cache holds (a run still in progress, say)")
    return p.parse_args(argv)


# --- The pass rule ---------------------------------------------------------------------------------

def within(value, target, tolerance):
    """Whether |value - target| <= tolerance (up to ROUNDING_SLACK); False where either is missing."""
    return value is not None and target is not None and abs(value - target) <= tolerance + ROUNDING_SLACK


def class_share_pairs(measurement, reference):
    """(measurement's share, reference's share) of every class of either ({class: share} under 'shares';
    a class one of them never drew has share 0 there)."""
    a, b = measurement["shares"], reference["shares"]
    return [(a.get(c, 0.0), b.get(c, 0.0)) for c in {*a, *b}]


def largest_share_difference(measurement, reference):
    """The largest |share difference| over the classes of either measurement."""
    return max(abs(x - y) for x, y in class_share_pairs(measurement, reference))


def share_difference_z(a, b, n_a, n_b):
    """|a - b| in standard errors of the difference of two independent binomial shares (a of n_a draws,
    b of n_b), pooled as the two-proportion test pools them; 0 where both are 0 or both 1."""
    pooled = (a * n_a + b * n_b) / (n_a + n_b)
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return 0.0 if standard_error == 0 else abs(a - b) / standard_error


def largest_share_z(measurement, reference):
    """The largest share_difference_z over the classes of either measurement."""
    n_a, n_b = measurement["num_samples"], reference["num_samples"]
    return max(share_difference_z(x, y, n_a, n_b) for x, y in class_share_pairs(measurement, reference))


def pass_checks(candidate, reference, second_reference):
    """{check: passed} for `candidate` against the reference draw and its second draw (another seed).

    Each argument is a plain dict with sensitive_share, shares ({class: share}), precision, recall,
    fd_classes and unet_evaluations (per sample).
    """
    sensitive_spread = abs(reference["sensitive_share"] - second_reference["sensitive_share"])
    fd_spread = abs(reference["fd_classes"] - second_reference["fd_classes"])
    return dict(
        sensitive_share=within(candidate["sensitive_share"], reference["sensitive_share"],
                               max(MIN_SENSITIVE_SHARE_TOLERANCE, sensitive_spread)),
        class_shares=largest_share_difference(candidate, reference) <= CLASS_SHARE_TOLERANCE + ROUNDING_SLACK,
        precision=within(candidate["precision"], reference["precision"], PRECISION_RECALL_TOLERANCE),
        recall=within(candidate["recall"], reference["recall"], PRECISION_RECALL_TOLERANCE),
        fd_classes=within(candidate["fd_classes"], reference["fd_classes"], fd_spread),
        unet_evaluations=candidate["unet_evaluations"] <= MAX_EVALUATION_SHARE * reference["unet_evaluations"])


def passes(candidate, reference, second_reference):
    return all(pass_checks(candidate, reference, second_reference).values())


# --- Measurements and their cache ------------------------------------------------------------------

def measurement_key(checkpoint_key, sampler, steps, seed, num_samples, batch_size):
    return f"{checkpoint_key}|{sampler}|steps{steps}|seed{seed}|n{num_samples}|batch{batch_size}"


def load_cache(path):
    """{measurement key: measurement} from the cache file at `path`; empty where there is none yet."""
    return json.loads(path.read_text())["measurements"] if path.is_file() else {}


def cpu_batch_size(config):
    """The sampling batch --eval_batch_size auto picks on a CPU for `config`'s image size."""
    return max(1, CPU_EVAL_PIXELS // config.image_size ** 2)


class Bench:
    """One checkpoint's measurements: taken from the cache, or drawn and judged (and cached) on first
    request. The model and the judges load only when something must be measured."""

    def __init__(self, checkpoint, args, cache, cache_path):
        self.checkpoint = str(checkpoint)
        self.run, record = read_checkpoint_run(checkpoint, args.output_dir)
        self.output_dir, self.data_dir = args.output_dir, args.data_dir or self.run.data_dir
        self.device, self.dtype = sampling_precision(args.device, record.get("mixed_precision"))
        self.num_samples = args.num_samples or self.run.config.num_eval_samples
        self.batch_size = min(args.eval_batch_size or cpu_batch_size(self.run.config), self.num_samples)
        self.cache, self.cache_path = cache, cache_path
        self._model = self._judges = None

    def key(self, sampler, steps, seed):
        return measurement_key(self.run.key, sampler, steps, seed, self.num_samples, self.batch_size)

    def is_cached(self, sampler, steps, seed):
        return self.key(sampler, steps, seed) in self.cache

    def measurement(self, sampler, steps, seed, cached_only=False):
        """The measurement of `num_samples` images drawn by `sampler` in `steps` steps from `seed`; with
        `cached_only`, None where it is not cached yet."""
        key = self.key(sampler, steps, seed)
        if key not in self.cache and cached_only:
            return None
        if key not in self.cache:
            print(f"measuring {key}", file=sys.stderr)
            measurement = self.measure(sampler, steps, seed)
            # Re-read before writing: runs on other checkpoints may share the cache, each adding its own.
            self.cache.update(load_cache(self.cache_path))
            self.cache[key] = measurement
            write_json_atomically(self.cache_path, dict(measurements=self.cache))
            print(f"{key}: {measurement['seconds']} s, sensitive share {fmt(measurement['sensitive_share'])}, "
                  f"fd_classes {fmt(measurement['fd_classes'])}", file=sys.stderr)
        return self.cache[key]

    def measure(self, sampler, steps, seed):
        unet, noise_scheduler = self.model()
        sampling = Sampling(sampler, steps, self.num_samples, self.batch_size, seed)
        evaluation = evaluate(unet, noise_scheduler, sampling, self.judges(), dtype=self.dtype)
        m = evaluation["metrics"]
        shares = {k[len(SHARE_PREFIX):]: v for k, v in m.items() if k.startswith(SHARE_PREFIX)}
        return dict(checkpoint=self.checkpoint, checkpoint_key=self.run.key, config_name=self.run.config_name,
                    sampler=sampler, steps=steps, seed=seed, num_samples=self.num_samples, batch_size=self.batch_size,
                    device=str(self.device), dtype=str(self.dtype).replace("torch.", "") if self.dtype else "float32",
                    seconds=evaluation["times"]["sampling_s"],
                    unet_evaluations=unet_evaluations(noise_scheduler, sampler, steps), shares=shares,
                    **{k: m[k] for k in ("sensitive_share", "non_sensitive_rate", "fd_classes", "precision", "recall",
                                         "fd_classifier", "fid")})

    def model(self):
        if self._model is None:
            self._model = load_checkpoint_model(self.checkpoint, self.device)
        return self._model

    def judges(self):
        if self._judges is None:
            self._judges = load_judges(self.run.config_name, self.run.config, self.data_dir, self.output_dir,
                                       self.device)
        return self._judges


def planned(bench, reference_steps, candidates):
    """(sampler, steps, seed) of every draw one checkpoint needs: the two references, then the candidates."""
    seed = bench.run.seed
    return [(REFERENCE_SAMPLER, reference_steps, seed), (REFERENCE_SAMPLER, reference_steps, seed + SECOND_SEED_OFFSET),
            *((sampler, steps, seed) for sampler, steps in candidates)]


def checkpoint_results(bench, reference_steps, candidates, cached_only=False):
    """The references and each candidate of one checkpoint, the candidates with their checks; with
    `cached_only`, what the cache holds (None without both references)."""
    draws = [bench.measurement(*draw, cached_only=cached_only) for draw in planned(bench, reference_steps, candidates)]
    reference, second, *measured = draws
    if reference is None or second is None:
        print(f"{bench.run.key}: the two reference draws are not measured yet", file=sys.stderr)
        return None
    judged = []
    for measurement in filter(None, measured):
        checks = pass_checks(measurement, reference, second)
        judged.append(dict(measurement, checks=checks, passes=all(checks.values())))
    # The second reference judged by the same rule: what a sampler identical to the reference scores,
    # the rule's own noise floor at this many samples (its fd_classes check holds by construction).
    control = {k: ok for k, ok in pass_checks(second, reference, second).items() if k != "unet_evaluations"}
    return dict(checkpoint=bench.checkpoint, key=bench.run.key, num_samples=bench.num_samples, seed=bench.run.seed,
                reference=reference, second_reference=dict(second, checks=control), candidates=judged)


# --- Reporting ---------------------------------------------------------------------------------------

TABLE_COLUMNS = ("sampler", "steps", "UNet evals", "seconds", "sensitive share", "max class diff", "max class z",
                 "precision", "recall", "fd_classes", "pass")


def fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def verdict(checks):
    failed = [name for name, ok in checks.items() if not ok]
    return "yes" if not failed else "no: " + ", ".join(failed)


def table_row(measurement, reference, verdict_text):
    return (measurement["sampler"], str(measurement["steps"]), str(measurement["unet_evaluations"]),
            fmt(measurement["seconds"], ".1f"), fmt(measurement["sensitive_share"]),
            fmt(largest_share_difference(measurement, reference)), fmt(largest_share_z(measurement, reference), ".1f"),
            fmt(measurement["precision"]), fmt(measurement["recall"]), fmt(measurement["fd_classes"]), verdict_text)


def markdown_table(result):
    """One checkpoint's Markdown table: the two reference draws, then every candidate."""
    reference, second = result["reference"], result["second_reference"]
    rows = [table_row(reference, reference, f"reference (seed {reference['seed']})"),
            table_row(second, reference, f"reference (seed {second['seed']}); by the rule: {verdict(second['checks'])}"),
            *(table_row(c, reference, verdict(c["checks"])) for c in result["candidates"])]
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return f"### {result['key']} ({result['num_samples']} samples)\n\n" + "\n".join(lines)


def passing_everywhere(results, candidates):
    """The candidates, as 'sampler:steps', that pass on every checkpoint's results."""
    passed = {(c["sampler"], c["steps"]) for c in results[0]["candidates"] if c["passes"]}
    for result in results[1:]:
        passed &= {(c["sampler"], c["steps"]) for c in result["candidates"] if c["passes"]}
    return [f"{sampler}:{steps}" for sampler, steps in candidates if (sampler, steps) in passed]


def unique(candidates):
    """The (sampler, steps) pairs of the parsed --candidates, flattened, each once, in order."""
    return list(dict.fromkeys(pair for group in candidates for pair in group))


@exits_on_usage_error
def main(args):
    candidates = unique(args.candidates)
    cache_path = Path(args.output_dir) / CACHE_FILE
    cache = load_cache(cache_path)
    benches = [Bench(checkpoint, args, cache, cache_path) for checkpoint in args.checkpoints]
    draws = [(b, draw) for b in benches for draw in planned(b, args.reference_steps, candidates)]
    missing = sum(not b.is_cached(*draw) for b, draw in draws)
    print(f"{len(draws) - missing} measurements cached in {cache_path}, {missing} to measure", file=sys.stderr)
    started = time.time()
    results = [checkpoint_results(b, args.reference_steps, candidates, args.cached_only) for b in benches]
    results = [r for r in results if r is not None]
    passing = passing_everywhere(results, candidates) if results else []
    for result in results:
        print(markdown_table(result) + "\n")
    partial = " (of the cached measurements only)" if args.cached_only and missing else ""
    print(f"passes on every checkpoint{partial}: {', '.join(passing) or 'none'}")
    summary = dict(reference=dict(sampler=REFERENCE_SAMPLER, steps=args.reference_steps,
                                  second_seed_offset=SECOND_SEED_OFFSET),
                   tolerances=dict(min_sensitive_share=MIN_SENSITIVE_SHARE_TOLERANCE, class_share=CLASS_SHARE_TOLERANCE,
                                   precision_recall=PRECISION_RECALL_TOLERANCE,
                                   max_evaluation_share=MAX_EVALUATION_SHARE),
                   checkpoints=results, passing=passing, measured_s=round(time.time() - started, 1))
    if args.json:
        write_json_atomically(args.json, summary)
    return summary


if __name__ == "__main__":
    main(parse_args())
