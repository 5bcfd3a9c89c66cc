"""The training sets of the Filter and Clean baselines: which images of the run's data they keep.

Filter and Clean train the Unsupervised objective (losses.objectives.ALGORITHMS, `selection`) on a
subset of the training set chosen before training; every other algorithm trains on all of it. S is
always kept, as Unsupervised keeps it (its images add 0 to that objective), so a selecting run differs
from an Unsupervised one only by the U images it drops (docs/baselines.md).

- Filter (`filter_kept`): drop the round(beta x |U|) images of U that a cross-fitted classifier of S
  against U scores highest (utils.prior.HeldOutScores, the scores of --beta auto), beta given or
  estimated from the same scores.
- Clean (`clean_kept`): drop U's sensitive images. It needs U's labels, which a config's split knows
  and an image folder does not: `check_selection` refuses it there before anything runs.

`select` applies a rule to a training set's labels and returns the kept positions with a record of
what was dropped; `select_pixel_data` (main.py, main-ft.py) and `select_sd_files` (main-sd.py) apply
it to the run's data and fix the record on the run (Run.selection), which run_config.json and every
result carry.
"""
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from losses import get_algorithm
from utils.data import PUSplit, TensorPUDataset
from utils.errors import UsageError
from utils.prior_data import held_out_image_scores, held_out_sd_scores
from utils.sd import POSITIVE, UNLABELED

FILTER, CLEAN = "filter", "clean"


def filter_kept(labels, scores, beta):
    """int64 positions kept by Filter, ascending: all but the round(beta x |U|) U images (labels == 0)
    of highest score; S (labels == 1) is never dropped. Ties go to the earlier position (a stable sort),
    and round() takes halves to the even count."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    u = np.flatnonzero(labels == 0)
    n_drop = round(beta * len(u))
    dropped = u[np.argsort(-scores[u], kind="stable")[:n_drop]]
    keep = np.ones(len(labels), dtype=bool)
    keep[dropped] = False
    return np.flatnonzero(keep)


def clean_kept(labels, u_sensitive):
    """int64 positions kept by Clean, ascending: S and U's normal images (`u_sensitive` [N] is True at
    U's sensitive ones)."""
    return np.flatnonzero(~np.asarray(u_sensitive, dtype=bool))


def filter_rule(labels, u_sensitive, held_out, beta):
    return filter_kept(labels, held_out.scores, beta), dict(scores=held_out.method)


def clean_rule(labels, u_sensitive, held_out, beta):
    return clean_kept(labels, u_sensitive), {}


@dataclass(frozen=True)
class SelectionRule:
    """How one baseline picks its training set: `keep(labels, u_sensitive, held_out, beta)` -> (kept
    positions, what to record beside the counts), and what it needs of the data."""

    keep: Callable
    needs_scores: bool          # held-out S-vs-U scores (utils.prior.HeldOutScores)
    needs_u_labels: bool        # U's true labels (a config's split)


# The selections that ALGORITHMS entries name.
RULES = {
    FILTER: SelectionRule(filter_rule, needs_scores=True, needs_u_labels=False),
    CLEAN: SelectionRule(clean_rule, needs_scores=False, needs_u_labels=True),
}


def get_rule(name):
    if name not in RULES:
        raise KeyError(f"unknown selection {name!r}; valid: {', '.join(RULES)}")
    return RULES[name]


@dataclass(frozen=True)
class Selection:
    """The positions of the training set a run trains on (ascending) and the record of what was dropped:
    {rule, n_train, n_dropped, n_dropped_sensitive, n_sensitive_kept, ...}; the last two count U's
    sensitive images and are None where U's labels are unknown."""

    kept: np.ndarray
    record: dict


def select(rule, labels, u_sensitive=None, held_out=None, beta=None):
    """The Selection of rule `rule` (a name in RULES) on a training set labelled `labels` [N] (1 = S),
    with U's truth `u_sensitive` [N] (bool, or None where unknown), held-out scores `held_out` and beta."""
    labels = np.asarray(labels, dtype=np.int64)
    if held_out is not None and not np.array_equal(held_out.labels, labels):
        raise ValueError(f"the held-out scores were made for a training set of {len(held_out.labels)} images, "
                         f"this one holds {len(labels)} (or other labels)")
    kept, extra = get_rule(rule).keep(labels, u_sensitive, held_out, beta)
    dropped = np.setdiff1d(np.arange(len(labels)), kept)
    known = u_sensitive is not None
    record = dict(rule=rule, n_train=len(kept), n_dropped=len(dropped),
                  n_dropped_sensitive=int(np.asarray(u_sensitive)[dropped].sum()) if known else None,
                  n_sensitive_kept=int(np.asarray(u_sensitive)[kept].sum()) if known else None, **extra)
    return Selection(kept, record)


def check_selection(rule, algorithm, config):
    """UsageError where selection `rule` (None: no selection) needs U's labels and `config` does not know
    them: an image folder's (config.true_prior is None) or Stable Diffusion's."""
    if rule is None:
        return
    if get_rule(rule).needs_u_labels and getattr(config, "true_prior", None) is None:
        raise UsageError(f"U's labels are unknown for image folders; {algorithm} trains on U's normal images only, so "
                         f"it needs a labeled config such as Digits_even or FashionMNIST_clothes_cpu (main.py, "
                         f"main-ft.py)")


def describe(algorithm, record, n_u):
    """One line saying what a selection dropped."""
    truth = "" if record["n_dropped_sensitive"] is None else \
        f" ({record['n_dropped_sensitive']} of them sensitive; {record['n_sensitive_kept']} sensitive kept)"
    return f"{algorithm}: dropped {record['n_dropped']} of U's {n_u} images{truth}; training on {record['n_train']}"


def scores_for(run, score):
    """The run's held-out scores: those of its --beta auto estimate, else `score()`, taken from process 0
    by every process (on a GPU the classifiers are not bit-exact, and one DDP model trains on one set)."""
    if run.held_out_scores is not None:
        return run.held_out_scores
    return broadcast_object_list([score()])[0]


def select_pixel_data(run, data, weights_path=None):
    """`data` (utils.data.PUData) as `run`'s algorithm trains on it: unchanged without a selection; else
    its train set and split reduced to the kept images (the split so reduced is what training states
    save, so a resume checks it). Fixes run.selection. Filter scores the images with the dataset's
    classifier recipe (utils.prior_data.held_out_image_scores; `weights_path`: local ResNet-18 weights)."""
    rule = get_algorithm(run.algorithm).selection
    if rule is None:
        return data
    accelerator = run.accelerator
    held_out = None
    if get_rule(rule).needs_scores:
        held_out = scores_for(run, lambda: held_out_image_scores(
            data.train, run.config, accelerator.device, seed=run.seed, weights_path=weights_path))
    selection = select(rule, data.train.labels.cpu().numpy(), data.split.sensitive_in_u(), held_out, run.beta)
    run.selection = selection.record
    if accelerator.is_main_process:
        print(describe(run.algorithm, selection.record, int((data.split.labels == 0).sum())))
    kept = torch.as_tensor(selection.kept)
    return replace(data, train=TensorPUDataset(data.train.images[kept], data.train.labels[kept]),
                   split=data.split.subset(selection.kept))


def select_sd_files(run, files, clip=None, clip_model=None):
    """(files, split): the Stable Diffusion folders' `files` ({0: U paths, 1: S paths}) as `run`'s algorithm
    trains on them, and the PUSplit of the kept images in the training set's order (U then S) for the
    training states, None without a selection. Fixes run.selection. Filter scores the images by logistic
    regression on CLIP image features (`clip`, or `clip_model` loaded)."""
    rule = get_algorithm(run.algorithm).selection
    if rule is None:
        return files, None
    accelerator = run.accelerator

    def score():
        judge = clip
        if judge is None:
            from models.pretrained import load_clip
            with accelerator.main_process_first():   # one process downloads CLIP; the others then read its files
                judge = load_clip(clip_model)
        return held_out_sd_scores(files, judge, accelerator.device, seed=run.seed)

    held_out = scores_for(run, score) if get_rule(rule).needs_scores else None
    paths = [*files[UNLABELED], *files[POSITIVE]]
    labels = np.repeat([UNLABELED, POSITIVE], [len(files[UNLABELED]), len(files[POSITIVE])]).astype(np.int64)
    selection = select(rule, labels, None, held_out, run.beta)
    run.selection = selection.record
    if accelerator.is_main_process:
        print(describe(run.algorithm, selection.record, len(files[UNLABELED])))
    kept = selection.kept
    selected = {y: [paths[i] for i in kept if labels[i] == y] for y in (UNLABELED, POSITIVE)}
    split = PUSplit(kept, labels[kept], n_u_normal=None, n_u_sensitive=None, n_s=len(files[POSITIVE]))
    return selected, split
