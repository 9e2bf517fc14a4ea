"""Pruning score metrics: a higher score means a more important weight.

Each metric maps a weight ``W`` of shape ``(out_features, in_features)`` and the
:class:`~optishear_moo.activations.InputStatistics` of its inputs to a float32 score matrix
of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..activations import InputStatistics

ScoreMetric = Callable[[torch.Tensor, "InputStatistics | None"], torch.Tensor]


def _require(statistics: InputStatistics | None, metric: str) -> InputStatistics:
    if statistics is None:
        raise ValueError(f"the {metric} metric needs activation statistics from calibration data")
    return statistics


def magnitude_score(weight: torch.Tensor, statistics: InputStatistics | None = None) -> torch.Tensor:
    """``|W_ij|`` (data-free)."""
    return weight.detach().abs().float()


def wanda_score(weight: torch.Tensor, statistics: InputStatistics | None) -> torch.Tensor:
    """Wanda: ``|W_ij| · ‖X_j‖₂`` (Sun et al., 2023)."""
    statistics = _require(statistics, "wanda")
    return weight.detach().abs().float() * statistics.l2_norm.unsqueeze(0)


def relative_importance(weight: torch.Tensor) -> torch.Tensor:
    """``|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|``: importance relative to row and column."""
    magnitude = weight.detach().abs().float()
    row_sum = magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    column_sum = magnitude.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return magnitude / row_sum + magnitude / column_sum


def ria_score(
    weight: torch.Tensor, statistics: InputStatistics | None, power: float = 0.5
) -> torch.Tensor:
    """RIA: relative importance times ``‖X_j‖₂ ** power`` (Zhang et al., 2024; ``power`` = 0.5)."""
    statistics = _require(statistics, "ria")
    return relative_importance(weight) * statistics.l2_norm.pow(power).unsqueeze(0)


SCORE_METRICS: dict[str, ScoreMetric] = {
    "magnitude": magnitude_score,
    "wanda": wanda_score,
    "ria": ria_score,
}
