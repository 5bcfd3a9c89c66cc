"""The sample-quality measures beside the rate: improved precision / recall, class shares, the
Frechet distance of features and the class classifier's quality metrics built from them."""
import numpy as np
import pytest
import scipy.linalg
import torch

from utils.metrics import class_quality, class_shares, frechet_distance, precision_recall


def direct_precision_recall(generated, reference, k):
    """Kynkaanniemi et al. 2019 written out with numpy, as the check."""
    def radii(points):
        d = np.linalg.norm(points[:, None] - points[None], axis=-1)
        return np.sort(d, axis=1)[:, k]          # column 0 is the point itself
    cross = np.linalg.norm(generated[:, None] - reference[None], axis=-1)     # [G, R]
    precision = (cross <= radii(reference)[None]).any(axis=1).mean()
    recall = (cross.T <= radii(generated)[None]).any(axis=1).mean()
    return precision, recall


def test_precision_recall_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 5))
    generated = np.concatenate([rng.normal(size=(30, 5)), rng.normal(loc=4.0, size=(30, 5))])
    got = precision_recall(torch.tensor(generated), torch.tensor(reference), k=3)
    assert got == pytest.approx(direct_precision_recall(generated, reference, 3))


def test_precision_recall_known_answers():
    rng = np.random.default_rng(1)
    reference = torch.tensor(rng.normal(size=(50, 4)))
    assert precision_recall(reference.clone(), reference) == (1.0, 1.0)
    far = reference + 100.0
    assert precision_recall(far, reference) == (0.0, 0.0)
    # Half the samples on the data, half far off: precision halves, recall stays whole.
    half = torch.cat([reference[:25], far[25:]])
    precision, recall = precision_recall(half, reference)
    assert precision == 0.5 and recall > 0.5


def test_class_shares_show_a_dropped_class():
    shares = class_shares(torch.tensor([0, 0, 2, 2, 2, 4, 4, 4]), classes=(0, 2, 4, 6, 8))
    assert shares == {0: 0.25, 2: 0.375, 4: 0.375, 6: 0.0, 8: 0.0}
    with pytest.raises(ValueError):
        class_shares(torch.tensor([], dtype=torch.long), classes=(0,))


def direct_frechet(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def test_frechet_distance_equals_a_direct_computation():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 6))
    b = rng.normal(loc=0.5, scale=2.0, size=(150, 6))
    assert frechet_distance(torch.tensor(a, dtype=torch.float32), torch.tensor(b)) == pytest.approx(
        direct_frechet(a.astype(np.float32).astype(np.float64), b), rel=1e-6)
    assert frechet_distance(torch.tensor(a), torch.tensor(a)) == pytest.approx(0.0, abs=1e-8)


def test_class_quality_of_known_features_and_predictions():
    rng = np.random.default_rng(3)
    # The reference in two far-apart clusters; the samples are real points of the first one only.
    reference = torch.tensor(np.concatenate([rng.normal(size=(40, 4)), rng.normal(loc=100.0, size=(40, 4))]))
    # 8 samples: four in normal class 0, two in normal class 2, two in sensitive class 1; class 3 dropped.
    predicted = torch.tensor([0, 0, 0, 0, 2, 2, 1, 1])
    got = class_quality(reference[:8].clone(), reference, predicted, normal_classes=(0, 2, 3), num_classes=4)
    assert {k: got[k] for k in ("share_0", "share_1", "share_2", "share_3")} == dict(
        share_0=0.5, share_1=0.25, share_2=0.25, share_3=0.0)
    assert got["sensitive_share"] == 0.25
    assert got["precision"] == 1.0 and 0.0 < got["recall"] <= 0.5   # real points, half the data never reached
    assert got["fd_classes"] > 0
    same = class_quality(reference.clone(), reference, torch.zeros(80, dtype=torch.long), (0,), num_classes=2)
    assert same["fd_classes"] == pytest.approx(0.0, abs=1e-8)
    assert (same["precision"], same["recall"], same["sensitive_share"]) == (1.0, 1.0, 0.0)
