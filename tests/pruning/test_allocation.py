import numpy as np
import pytest
import torch

from optishear_moo.pruning import outlier_ratio, owl_allocation, uniform_allocation


def test_uniform_allocation():
    assert uniform_allocation(4, 0.6).tolist() == [0.6] * 4
    with pytest.raises(ValueError):
        uniform_allocation(4, 1.0)


def test_outlier_ratio_counts_scores_above_threshold_times_mean():
    scores = [torch.ones(10, 10), torch.zeros(1, 10)]
    scores[0][0, 0] = 1000.0  # mean ≈ 10; one score above 5x the mean
    assert outlier_ratio(scores, 5.0) == pytest.approx(1 / 110)
    calls = []

    def anew():  # scores given by a function are asked for twice, one matrix held at a time
        calls.append(1)
        return (s.clone() for s in scores)

    assert outlier_ratio(anew, 5.0) == pytest.approx(1 / 110) and len(calls) == 2


def test_owl_keeps_the_weighted_mean_and_prunes_outlier_blocks_less():
    ratios = np.array([0.01, 0.05, 0.02, 0.09])
    sizes = np.array([100, 100, 300, 50])
    sparsity = owl_allocation(ratios, 0.6, lam=0.08, block_sizes=sizes)
    assert np.average(sparsity, weights=sizes) == pytest.approx(0.6)
    assert np.argsort(sparsity).tolist() == np.argsort(-ratios).tolist()
    assert sparsity.max() - sparsity.min() == pytest.approx(0.16)
    assert owl_allocation(np.full(3, 0.02), 0.5).tolist() == [0.5] * 3


def test_owl_rejects_sparsities_outside_the_unit_interval():
    with pytest.raises(ValueError, match="lower owl_lambda"):
        owl_allocation(np.array([0.0, 1.0]), 0.95, lam=0.2)
