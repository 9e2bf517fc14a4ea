"""The baselines as tensor functions: score metrics, masks, layerwise allocation, SparseGPT,
in-place masks with restore, and whole-model pruning (``prune_model``)."""

from .allocation import ALLOCATIONS, outlier_ratio, owl_allocation, uniform_allocation
from .masks import build_mask, layer_mask, nm_mask, parse_nm, row_mask
from .metrics import SCORE_METRICS, magnitude_score, relative_importance, ria_score, wanda_score
from .prune import METHODS, PruningConfig, PruningResult, prune_model
from .sparsegpt import HessianFactor, obs_update_, sparsegpt_prune_
from .update import UPDATES, lstsq_update_, reconstruct_
from .weights import DenseSnapshot, SparsityReport, apply_masks_, masks_applied, sparsity_report

__all__ = [
    "ALLOCATIONS",
    "UPDATES",
    "HessianFactor",
    "METHODS",
    "SCORE_METRICS",
    "DenseSnapshot",
    "PruningConfig",
    "PruningResult",
    "SparsityReport",
    "apply_masks_",
    "build_mask",
    "layer_mask",
    "lstsq_update_",
    "magnitude_score",
    "masks_applied",
    "nm_mask",
    "obs_update_",
    "outlier_ratio",
    "owl_allocation",
    "parse_nm",
    "prune_model",
    "reconstruct_",
    "relative_importance",
    "ria_score",
    "row_mask",
    "sparsegpt_prune_",
    "sparsity_report",
    "uniform_allocation",
    "wanda_score",
]

