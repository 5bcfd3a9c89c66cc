"""The class-prior estimator (utils/prior.py) applied to the project's data, for `--beta auto`,
estimate-beta.py and the Filter baseline (utils/selection.py).

- `held_out_image_scores(train, config, device)`: cross-fitted S-vs-U scores of every image of a PU
  training set; each fold trains the dataset's own classifier recipe (utils.data.DATASETS) on S
  against U; `estimate_prior_for_images` reads the prior off them;
- `held_out_sd_scores(files, clip, device)`: the same for the Stable Diffusion folders, by logistic
  regression on CLIP image features; `estimate_prior_for_sd` reads the prior off them;
- `beta_estimator_for_images` and `beta_estimator_for_sd_folders`: what the training scripts hand to
  `Run.resolve`, a function (config, accelerator) -> PriorEstimate that loads the run's data. Each
  estimate carries its scores (PriorEstimate.scores), so Filter with --beta auto cross-fits once.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from utils.classifier import PREDICT_BATCH, autocast, build_classifier, train_classifier
from utils.data import LabeledSubset, dataset_spec, load_pu_data
from utils.prior import (DEFAULT_DELTA, DEFAULT_FOLDS, FOLD_SEED_RANGE, HeldOutScores, check_prior_counts,
                         cross_fitted_logistic_scores, cross_fitted_scores)
from utils.sd import POSITIVE, UNLABELED

CLIP_BATCH_SIZE = 64


class UnitRangeImages(Dataset):
    """(image in [0, 1], PU label) for each image of a TensorPUDataset (held in [-1, 1]), made per item
    so that no second copy of the training set is kept; the classifiers take [0, 1] images."""

    def __init__(self, train):
        self.images, self.labels = train.images.cpu(), train.labels.cpu()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i] + 1) / 2, int(self.labels[i])


@torch.no_grad()
def classifier_logits(model, images, indices, device, batch_size=PREDICT_BATCH):
    """float64 [len(indices)]: `model`'s logit for each of images[indices] ([-1, 1], mapped to [0, 1])."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        x = (images[torch.as_tensor(indices[start:start + batch_size])] + 1) / 2
        with autocast(device):
            out.append(model(x.to(device)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def held_out_image_scores(train, config, device, seed=0, n_folds=DEFAULT_FOLDS, recipe=None, weights_path=None):
    """HeldOutScores of every image of `train` (a TensorPUDataset: images in [-1, 1], y = 1 for S), in
    its order: the logit of a classifier of S against U that did not see the image.

    Each of `n_folds` folds trains a fresh classifier of S (label 1) against U (label 0) on the other
    folds with the dataset's recipe (`recipe` overrides it, e.g. with fewer epochs), built as the
    sensitivity judge is (build_classifier: a small CNN, or a ResNet-18 from ImageNet weights at
    `weights_path` or torchvision's download, from scratch where neither is at hand); its logits on
    the held-out fold are the scores. The classifiers resize their [0, 1] input to
    `config.classifier_size` themselves, so the images stay at the training size in memory.

    The classes are left imbalanced (U is ~10x S in every config): BBE needs only the ranking, and
    the Bayes classifier of S against U ranks by p_S / p_U whatever the class weights, which shift
    every logit by one constant. Oversampling S instead would show each of the few S images many
    times an epoch and speed up memorising them, which held-out scores pay for.
    The K folds' logits are ranked together as they are (see cross_fitted_scores): the folds' models
    share a recipe and nearly all their data; benchmarks/prior_images.py measures the result.
    The fold split and each fold's initialisation and shuffling follow `seed`.
    """
    labels = train.labels.cpu().numpy()
    u_idx, s_idx = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    check_prior_counts(len(u_idx), len(s_idx), n_folds)
    recipe = recipe or dataset_spec(config.dataset).classifier
    device = torch.device(device)
    images = UnitRangeImages(train)
    generator = torch.Generator().manual_seed(seed)
    fold_seeds = iter(torch.randint(FOLD_SEED_RANGE, (n_folds,), generator=generator).tolist())
    init = "scratch" if recipe.arch == "cnn" else "imagenet"
    bar = tqdm(total=n_folds, desc="prior: S-vs-U classifier per fold")

    def fit_predict(train_u, train_s, test_u, test_s):
        nonlocal init
        fold_seed = next(fold_seeds)
        indices = np.concatenate([u_idx[train_u], s_idx[train_s]])
        is_s = np.concatenate([np.zeros(len(train_u), dtype=np.int64), np.ones(len(train_s), dtype=np.int64)])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fold_seed)
            # The first fold settles the init (a ResNet without weights falls back to scratch) for all.
            model, init = build_classifier(config, recipe.arch, init, weights_path)
            model = train_classifier(model, LabeledSubset(images, indices, is_s), recipe, device, seed=fold_seed)
        scores = classifier_logits(model, images.images, np.concatenate([u_idx[test_u], s_idx[test_s]]), device)
        bar.update()
        return scores[:len(test_u)], scores[len(test_u):]

    try:
        scores_u, scores_s = cross_fitted_scores(len(u_idx), len(s_idx), fit_predict, n_folds=n_folds, seed=seed)
    finally:
        bar.close()
    return HeldOutScores.from_groups(labels, scores_u, scores_s, f"{n_folds}-fold {recipe.arch} ({init}) logits",
                                     n_folds)


def estimate_prior_for_images(train, config, device, seed=0, n_folds=DEFAULT_FOLDS, delta=DEFAULT_DELTA,
                              recipe=None, weights_path=None):
    """BBE of the sensitive share of U in `train` on its held-out scores (`held_out_image_scores`, whose
    arguments it takes), carrying them (PriorEstimate.scores)."""
    return held_out_image_scores(train, config, device, seed, n_folds, recipe, weights_path).estimate(delta)


@torch.inference_mode()
def clip_image_features(paths, clip, device, batch_size=CLIP_BATCH_SIZE):
    """float64 [len(paths), d]: CLIP's image embeddings of the files at `paths`, L2-normalised (CLIP
    compares images by cosine similarity)."""
    model, processor = clip
    model = model.to(device)
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc="CLIP image features", leave=False):
        batch = []
        for path in paths[start:start + batch_size]:
            with Image.open(path) as image:
                batch.append(image.convert("RGB"))
        pixels = processor(images=batch, return_tensors="pt").pixel_values
        features = model.get_image_features(pixel_values=pixels.to(device, model.dtype))
        features = getattr(features, "pooler_output", features)   # transformers 5 returns a model output
        out.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def held_out_sd_scores(files, clip, device, seed=0, n_folds=DEFAULT_FOLDS):
    """HeldOutScores of the Stable Diffusion folders' images (`files` = {0: U paths, 1: S paths}, as
    utils.sd.validate_sd_folder returns) in the training set's order, U then S (utils.sd.SDImageDataset):
    cross-fitted logistic regression of S against U on CLIP image features; `clip` = (CLIPModel,
    CLIPProcessor), as models.pretrained.load_clip returns."""
    check_prior_counts(len(files[UNLABELED]), len(files[POSITIVE]), n_folds)
    features_u = clip_image_features(files[UNLABELED], clip, device)
    features_s = clip_image_features(files[POSITIVE], clip, device)
    scores_u, scores_s = cross_fitted_logistic_scores(features_u, features_s, n_folds=n_folds, seed=seed)
    labels = np.repeat([UNLABELED, POSITIVE], [len(files[UNLABELED]), len(files[POSITIVE])])
    return HeldOutScores.from_groups(labels, scores_u, scores_s,
                                     f"{n_folds}-fold logistic regression of CLIP image features", n_folds)


def estimate_prior_for_sd(files, clip, device, seed=0, n_folds=DEFAULT_FOLDS, delta=DEFAULT_DELTA):
    """BBE of the sensitive share of the Stable Diffusion folders' U on their held-out scores
    (`held_out_sd_scores`), carrying them (PriorEstimate.scores)."""
    return held_out_sd_scores(files, clip, device, seed, n_folds).estimate(delta)


def beta_estimator_for_images(data_dir, seed, classifier_weights=None):
    """main.py's and main-ft.py's --beta auto: the class prior of the run's own PU split."""

    def estimate(config, accelerator):
        with accelerator.main_process_first():   # one process downloads; the others then read its files
            data = load_pu_data(config, data_dir, seed)
        return estimate_prior_for_images(data.train, config, accelerator.device, seed=seed,
                                         weights_path=classifier_weights)
    return estimate


def beta_estimator_for_sd_folders(data_dir, clip_model, seed):
    """main-sd.py's --beta auto: the class prior of the unlabeled folder given the sensitive one, in CLIP
    image features."""
    from models.pretrained import load_clip
    from utils.sd import validate_sd_folder

    def estimate(config, accelerator):
        with accelerator.main_process_first():   # one process downloads CLIP; the others then read its files
            clip = load_clip(clip_model)
        return estimate_prior_for_sd(validate_sd_folder(data_dir, config), clip, accelerator.device, seed=seed)
    return estimate
