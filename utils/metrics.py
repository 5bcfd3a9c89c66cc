"""The paper's two metrics on generated images: the non-sensitive rate and Frechet distances.

- `non_sensitive_rate`: the share of samples a sensitivity classifier calls normal.
- `frechet_distances`: torchmetrics' FrechetInceptionDistance between generated images and a
  reference set. With `feature=2048` it is the FID (Inception-v3 pool features, images in [0, 1],
  weights from torch-fidelity's download or a local file); with a module it is the same Frechet
  distance in that module's features. `inception_metric_or_reason` turns a missing Inception
  download into (None, reason) so the rest of an evaluation still runs offline.
- `precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019, k = 3) of generated
  against reference features, through torch-fidelity's implementation: the share of samples inside
  the reference manifold (quality) and of references inside the samples' manifold (coverage).
- `class_shares`: each class's share of the samples, so a model that drops a class shows it.
- `frechet_distance`: the Frechet distance between two sets of features already extracted.
- `class_quality`: all of the above in the class classifier's features (utils.classifier, task
  CLASSES), the quality measure that works offline and is not trained on normal-vs-sensitive.
- `ClassifierFeatures`: the sensitivity classifier's penultimate features as such a module. The
  Frechet distance in them ("fd_classifier") is a dataset-specific stand-in for FID where the
  Inception weights cannot be had; it is comparable only between runs judged by the same classifier.
"""
import pickle

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from utils.errors import first_line

INCEPTION_FEATURES = 2048
PRC_NEIGHBOURHOOD = 3       # k of improved precision and recall (Kynkaanniemi et al. 2019)
PRC_BATCH = 10_000          # rows of the distance matrix torch-fidelity computes at a time
SHARE_PREFIX = "share_"     # result metrics share_0, share_1, ...: each class's share of the samples


def non_sensitive_rate(is_normal):
    """Share of True in the bool tensor `is_normal` [N]."""
    if len(is_normal) == 0:
        raise ValueError("the non-sensitive rate needs at least one sample")
    return is_normal.float().mean().item()


class ClassifierFeatures(nn.Module):
    """An ImageClassifier's penultimate features [B, D] for images in [0, 1]."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features   # torchmetrics reads this instead of probing

    def forward(self, x):
        return self.classifier.features(x).float()


def batches(images, batch_size):
    """`images` (a tensor [N, C, H, W] or an iterable of such batches) in batches of at most `batch_size`."""
    if torch.is_tensor(images):
        return (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    return images


def frechet_metric(feature=INCEPTION_FEATURES, weights_path=None):
    """A torchmetrics FrechetInceptionDistance taking images in [0, 1].

    `feature` is 2048 (Inception-v3 pool features: the FID) or an nn.Module mapping images to
    [B, D] features. Inception weights come from torch-fidelity's download unless `weights_path`
    names a local file; a failed download raises OSError.
    """
    kwargs = dict(feature_extractor_weights_path=weights_path) if weights_path else {}
    if isinstance(feature, nn.Module):
        feature.eval()
    return FrechetInceptionDistance(feature=feature, normalize=True, **kwargs)


def inception_metric_or_reason(weights_path=None):
    """(FID metric, None), or (None, why) where the Inception weights cannot be loaded."""
    try:
        return frechet_metric(INCEPTION_FEATURES, weights_path), None
    except (OSError, RuntimeError, ModuleNotFoundError, pickle.UnpicklingError) as e:
        source = weights_path or "torch-fidelity's download"
        return None, f"Inception-v3 weights unavailable from {source}: {first_line(e)}"


@torch.no_grad()
def frechet_distances(generated, reference, metrics, device="cpu", batch_size=256):
    """{name: Frechet distance} for each metric in `metrics` ({name: frechet_metric(...)}).

    `generated` and `reference` hold images in [0, 1] with 1 or 3 channels: tensors [N, C, H, W] or
    iterables of batches (a DataLoader), each read once whatever the number of metrics.
    """
    metrics = {name: m.to(device) for name, m in metrics.items()}
    for real, images in ((False, generated), (True, reference)):
        for batch in batches(images, batch_size):
            batch = batch.to(device).float()
            if batch.shape[1] == 1:   # grayscale (an image folder's): Inception takes three channels
                batch = batch.expand(-1, 3, -1, -1)
            for m in metrics.values():
                m.update(batch, real=real)
    return {name: m.compute().item() for name, m in metrics.items()}


def precision_recall(generated, reference, k=PRC_NEIGHBOURHOOD):
    """(precision, recall) of `generated` against `reference` features, float tensors [N, D].

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour in the same set; precision is the share of generated points inside the reference
    manifold, recall the share of reference points inside the generated one.
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
    out = prc_features_to_metric(generated.double().cpu(), reference.double().cpu(), prc_neighborhood=k,
                                 prc_batch_size=PRC_BATCH, save_cpu_ram=False, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def frechet_distance(features_a, features_b):
    """The Frechet distance between Gaussians fitted to two feature sets, float tensors [N, D]
    (torch-fidelity's statistics in float64; the FID where the features are Inception's)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    stats = [fid_features_to_statistics(f.double().cpu()) for f in (features_a, features_b)]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


def class_quality(generated, reference, predicted, normal_classes, num_classes):
    """The class classifier's quality measures of the samples, as result metrics.

    `generated`, `reference`: its penultimate features [N, D] of the samples and of the normal-only
    test set; `predicted`: the class it gives each sample [N]. Returns fd_classes, precision,
    recall (k = 3), sensitive_share (samples in a class outside `normal_classes`) and share_{c}
    for each class c.
    """
    # The k-th neighbour must exist in both sets; a smaller evaluation gets no precision or recall.
    enough = min(len(generated), len(reference)) > PRC_NEIGHBOURHOOD
    precision, recall = precision_recall(generated, reference) if enough else (None, None)
    shares = class_shares(predicted, range(num_classes))
    sensitive = sum(v for c, v in shares.items() if c not in normal_classes)
    return dict(fd_classes=frechet_distance(generated, reference), precision=precision, recall=recall,
                sensitive_share=sensitive, **{f"{SHARE_PREFIX}{c}": v for c, v in shares.items()})


def class_shares(predicted, classes):
    """{class: share of the samples predicted as it} for every class in `classes` (0.0 where none is)."""
    predicted = torch.as_tensor(predicted)
    if len(predicted) == 0:
        raise ValueError("class shares need at least one sample")
    return {int(c): (predicted == c).float().mean().item() for c in classes}
