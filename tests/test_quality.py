"""The sample-quality measures beside the rate: improved precision / recall and class shares."""
import numpy as np
import pytest
import torch

from utils.metrics import class_shares, precision_recall


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
