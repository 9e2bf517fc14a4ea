"""Layerwise sparsity allocation: how much of each decoder block to prune.

Allocations return one sparsity per block whose average, weighted by the blocks' prunable
parameter counts, equals the target.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SettingError, param
from .masks import check_sparsity

ALLOCATIONS = ("uniform", "owl")


def uniform_allocation(n_blocks: int, target_sparsity: float) -> np.ndarray:
    return np.full(n_blocks, check_sparsity(target_sparsity))


def outlier_ratio(scores, threshold: float = 5.0) -> float:
    """OWL's layerwise outlier distribution: share of scores above ``threshold × mean score``.

    ``scores`` are the Wanda score matrices of one block's layers, taken together: a list, or a
    function giving them anew, called twice (the mean first, then the count above it), so that
    one matrix at a time is held.
    """
    each = scores if callable(scores) else (lambda: scores)
    total, count = 0.0, 0
    for score in each():
        total, count = total + float(score.sum(dtype=torch.float64)), count + score.numel()
    limit = threshold * total / count
    return sum(int(torch.count_nonzero(score > limit)) for score in each()) / count


def owl_allocation(
    outlier_ratios: np.ndarray,
    target_sparsity: float,
    lam: float = 0.08,
    block_sizes: np.ndarray | None = None,
) -> np.ndarray:
    """OWL (Yin et al., 2024): blocks with more outliers are pruned less.

    Outlier ratios are scaled linearly onto a spread of ``2 · lam`` and centred so that the
    parameter-weighted mean sparsity equals ``target_sparsity``; block sparsities lie in
    ``[target - lam, target + lam]`` up to that centring.
    """
    target_sparsity = check_sparsity(target_sparsity)
    ratios = np.asarray(outlier_ratios, dtype=np.float64)
    weights = np.ones_like(ratios) if block_sizes is None else np.asarray(block_sizes, float)
    spread = ratios.max() - ratios.min()
    scaled = (ratios - ratios.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(ratios)
    offsets = scaled - np.average(scaled, weights=weights)
    sparsities = target_sparsity - offsets
    if sparsities.min() < 0 or sparsities.max() >= 1:
        raise SettingError(f"OWL with {param('owl_lambda')}={lam} at target {target_sparsity} gives block "
                           f"sparsities outside [0, 1) ({sparsities.min():.3f}..{sparsities.max():.3f}): "
                           f"lower {param('owl_lambda')}")
    return sparsities
