"""A pruning plan: the decoded, serialisable result of a search (what to prune and how)."""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..activations import InputStatistics, collect_input_statistics, sequential_blocks
from ..models.adapters import get_adapter
from ..pruning.masks import check_sparsity, parse_nm
from ..pruning.prune import shared_factors
from ..pruning.update import check_update, reconstruct_
from ..pruning.weights import apply_masks_
from .meta_metric import MetaMetric, metric_masks


def project_to_mean(values: np.ndarray, target: float, weights: np.ndarray,
                    lower: float, upper: float) -> np.ndarray:
    """Shift ``values`` by one constant and clip to ``[lower, upper]`` so that their
    ``weights``-weighted mean is exactly ``target`` (bisection on the shift)."""
    if not lower <= target <= upper:
        raise ValueError(f"target sparsity {target} is outside the per-block bounds [{lower}, {upper}]")
    values = np.asarray(values, dtype=np.float64)

    def mean(shift):
        return np.average(np.clip(values + shift, lower, upper), weights=weights)

    if abs(mean(0.0) - target) < 1e-12:
        return np.clip(values, lower, upper)
    lo, hi = lower - values.max(), upper - values.min()
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < target else (lo, mid)
    return np.clip(values + (lo + hi) / 2, lower, upper)


@dataclass
class PruningPlan:
    """Meta metric + per-block sparsity (or N:M): everything needed to prune a model.

    ``apply(model)`` prunes in place. A plan from :meth:`OptiShearProblem.decode` remembers the
    search's activation statistics for the search's model; for any other model (metric
    transfer) pass ``calibration`` tokens of that model's tokenizer.
    """

    metric: MetaMetric
    block_sparsity: list[float]
    target_sparsity: float
    nm: tuple[int, int] | None = None
    objectives: dict[str, float] = field(default_factory=dict)
    update: str = "none"
    _bound: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.nm = parse_nm(self.nm)
        check_update(self.update)
        for value in self.block_sparsity:
            check_sparsity(value)

    def bind_statistics(self, model: nn.Module, statistics: dict[str, InputStatistics],
                        calibration: torch.Tensor | None = None) -> PruningPlan:
        """Remember the search's one-shot statistics (and calibration tokens) for ``model``."""
        self._bound = (weakref.ref(model), statistics, calibration)
        return self

    def _bound_to(self, model: nn.Module) -> tuple | None:
        return self._bound if self._bound is not None and self._bound[0]() is model else None

    def block_sparsity_for(self, n_blocks: int, weights: np.ndarray | None = None) -> np.ndarray:
        """The per-block profile resampled to ``n_blocks`` blocks with the same mean (transfer)."""
        profile = np.asarray(self.block_sparsity, dtype=np.float64)
        if n_blocks == len(profile):
            return profile
        resampled = np.interp(np.linspace(0, 1, n_blocks), np.linspace(0, 1, len(profile)), profile)
        weights = np.ones(n_blocks) if weights is None else weights
        return project_to_mean(resampled, self.target_sparsity, weights, 0.0, 0.999)

    def masks(self, model: nn.Module, calibration: torch.Tensor | None = None,
              batch_size: int = 8) -> dict[str, torch.Tensor]:
        layers = get_adapter(model).prunable_layers(model)
        statistics = None
        if self.metric.needs_activations:
            if self._bound_to(model):
                statistics = self._bound[1]
            elif calibration is not None:
                statistics = collect_input_statistics(model, calibration, batch_size, layers)
            else:
                raise ValueError(
                    f"the metric {self.metric.formula()} needs activations of this model: pass "
                    "calibration=load_calibration(its_tokenizer, ...) to apply()")
        return metric_masks(self.metric, layers, self._sparsity_for(layers), statistics, self.nm)

    def _sparsity_for(self, layers) -> np.ndarray:
        sizes = np.zeros(max(layer.block_index for layer in layers) + 1)
        for layer in layers:
            sizes[layer.block_index] += layer.numel
        return self.block_sparsity_for(len(sizes), sizes)

    @torch.no_grad()
    def apply(self, model: nn.Module, calibration: torch.Tensor | None = None,
              batch_size: int = 8, sequential: bool = True) -> nn.Module:
        """Prune ``model`` **in place** following this plan; returns the model.

        With calibration tokens (given, or remembered from the search for its own model) and
        ``sequential=True``, blocks are pruned in order from inputs that went through the
        already-pruned blocks, as Wanda and SparseGPT do; the search itself scores candidates
        with one-shot dense statistics. ``sequential=False`` gives exactly :meth:`masks`. A plan
        with a weight ``update`` always runs sequentially and needs calibration tokens.
        """
        bound = self._bound_to(model)
        if calibration is None and bound is not None:
            calibration = bound[2]
        if self.update != "none" and calibration is None:
            raise ValueError(f"the plan's {self.update!r} weight update needs calibration tokens of this "
                             "model: pass calibration=load_calibration(its_tokenizer, ...) to apply()")
        if self.update == "none" and not (sequential and self.metric.needs_activations
                                          and calibration is not None):
            masks = self.masks(model, calibration, batch_size)
            apply_masks_(get_adapter(model).prunable_layers(model), masks)
            return model
        sparsity = self._sparsity_for(get_adapter(model).prunable_layers(model))
        for _index, layers, statistics in sequential_blocks(model, calibration, batch_size,
                                                             with_gram=self.update != "none", progress=False):
            masks = metric_masks(self.metric, layers, sparsity, statistics, self.nm)
            if self.update == "none":
                apply_masks_(layers, masks)
                continue
            factors = shared_factors(statistics)
            for layer in layers:
                reconstruct_(layer.weight, masks[layer.name], self.update, factor=factors[layer.name])
        return model

    def describe(self) -> str:
        pattern = f"{self.nm[0]}:{self.nm[1]}" if self.nm else f"target {self.target_sparsity:.3f}"
        profile = " ".join(f"{s:.2f}" for s in self.block_sparsity)
        update = "" if self.update == "none" else f"; {self.update} weight update"
        return f"metric {self.metric.formula()}; {pattern}{update}; per-block sparsity [{profile}]"

    def to_dict(self) -> dict:
        return {
            "format": "optishear-moo/plan-v1",
            "metric": self.metric.to_dict(),
            "formula": self.metric.formula(),
            "target_sparsity": self.target_sparsity,
            "nm": list(self.nm) if self.nm else None,
            "block_sparsity": [float(s) for s in self.block_sparsity],
            "update": self.update,
            "objectives": self.objectives,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "the plan") -> PruningPlan:
        """A plan from :meth:`to_dict` output; a ``ValueError`` naming ``source`` and the bad field."""
        if not isinstance(data, dict) or data.get("format") != "optishear-moo/plan-v1":
            raise ValueError(f"{source} is not an optishear-moo plan (no format 'optishear-moo/plan-v1')")

        def field(name, convert, default=...):
            if name not in data:
                if default is not ...:
                    return default
                raise ValueError(f"{source} has no field {name!r}")
            try:
                return convert(data[name])
            except (TypeError, ValueError, KeyError) as error:
                raise ValueError(f"{source}: field {name!r} is invalid ({error})") from None

        return cls(field("metric", lambda m: MetaMetric(**m)),
                   field("block_sparsity", lambda v: [float(s) for s in v]),
                   field("target_sparsity", float),
                   field("nm", lambda v: tuple(int(n) for n in v) if v else None, None),
                   field("objectives", lambda v: {str(k): float(x) for k, x in dict(v).items()}, {}),
                   field("update", check_update, "none"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"could not read the plan {str(path)!r} ({error})") from None
        return cls.from_dict(data, source=f"plan {str(path)!r}")
