"""OptiShear's meta pruning metric: a searchable family that contains magnitude, Wanda and RIA.

    score = [α_W(|W|) · τ_W(|W|)] ⊙ [α_X(X) · τ_X(√X)] ** p

``X`` is the per-input-channel mean of ``x²`` over calibration tokens (so ``√X`` is Wanda's
activation norm up to a constant), broadcast along the input columns of ``W``
(``(out_features, in_features)``). ``α`` is a normaliser, ``τ`` a transform, ``p`` an exponent
on the activation side. Differences from the authors' AdaPrune space: ``log`` is ``log(1 + a)``
and ``exp`` is ``exp(a - max a)`` (both guarded against -inf/overflow and rank-equivalent
within a row); the ``relative`` normaliser is RIA's ``1/row-sum + 1/column-sum``; ``p`` is added
so that magnitude (``p = 0``) and RIA (``p = 0.5``) are points of the space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..activations import InputStatistics
from ..pruning.masks import build_mask, nm_mask, row_mask_by_selection, row_mask_from_ranks, row_ranks

NORMALISERS = ("one", "row_sum", "column_sum", "relative", "total_sum", "mean", "frobenius")
TRANSFORMS = ("identity", "sqrt", "square", "exp", "log", "sigmoid", "softmax")
EXPONENTS = (0.0, 0.25, 0.5, 1.0, 2.0)

_TINY = torch.finfo(torch.float32).tiny


def _matrix_normaliser(name: str, a: torch.Tensor) -> torch.Tensor | float:
    """α for a ``(out, in)`` non-negative matrix; broadcastable against ``a``."""
    if name == "one":
        return 1.0
    if name == "row_sum":
        return 1.0 / a.sum(dim=1, keepdim=True).clamp_min(_TINY)
    if name == "column_sum":
        return 1.0 / a.sum(dim=0, keepdim=True).clamp_min(_TINY)
    if name == "relative":
        return _matrix_normaliser("row_sum", a) + _matrix_normaliser("column_sum", a)
    if name == "total_sum":
        return 1.0 / a.sum().clamp_min(_TINY)
    if name == "mean":
        return 1.0 / a.mean().clamp_min(_TINY)
    if name == "frobenius":
        return 1.0 / a.norm().clamp_min(_TINY)
    raise ValueError(f"unknown normaliser {name!r}: use one of {', '.join(NORMALISERS)}")


def _vector_normaliser(name: str, v: torch.Tensor, n_rows: int) -> torch.Tensor | float:
    """α of the ``(n_rows, in)`` matrix whose rows all equal ``v``, computed on ``v`` alone."""
    if name == "one":
        return 1.0
    total = v.sum().clamp_min(_TINY)
    if name == "row_sum":
        return 1.0 / total
    if name == "column_sum":
        return 1.0 / (n_rows * v).clamp_min(_TINY)
    if name == "relative":
        return 1.0 / total + 1.0 / (n_rows * v).clamp_min(_TINY)
    if name == "total_sum":
        return 1.0 / (n_rows * total)
    if name == "mean":
        return 1.0 / v.mean().clamp_min(_TINY)
    if name == "frobenius":
        return 1.0 / (n_rows**0.5 * v.norm()).clamp_min(_TINY)
    raise ValueError(f"unknown normaliser {name!r}: use one of {', '.join(NORMALISERS)}")


def _transform(name: str, a: torch.Tensor) -> torch.Tensor:
    """τ of a non-negative tensor; softmax runs along the last dimension (rows of ``W``)."""
    if name == "identity":
        return a
    if name == "sqrt":
        return a.sqrt()
    if name == "square":
        return a.square()
    if name == "exp":
        return torch.exp(a - a.max())
    if name == "log":
        return torch.log1p(a)
    if name == "sigmoid":
        return torch.sigmoid(a)
    if name == "softmax":
        return torch.softmax(a, dim=-1)
    raise ValueError(f"unknown transform {name!r}: use one of {', '.join(TRANSFORMS)}")


@dataclass(frozen=True)
class MetaMetric:
    """One point of the meta-metric space (see the module docstring)."""

    weight_normaliser: str = "one"
    weight_transform: str = "identity"
    activation_normaliser: str = "one"
    activation_transform: str = "identity"
    activation_exponent: float = 1.0

    def __post_init__(self):
        for name in (self.weight_normaliser, self.activation_normaliser):
            if name not in NORMALISERS:
                raise ValueError(f"unknown normaliser {name!r}: use one of {', '.join(NORMALISERS)}")
        for name in (self.weight_transform, self.activation_transform):
            if name not in TRANSFORMS:
                raise ValueError(f"unknown transform {name!r}: use one of {', '.join(TRANSFORMS)}")
        if self.activation_exponent < 0:
            raise ValueError("activation_exponent must be non-negative")

    @classmethod
    def magnitude(cls) -> MetaMetric:
        return cls(activation_exponent=0.0)

    @classmethod
    def wanda(cls) -> MetaMetric:
        return cls()

    @classmethod
    def ria(cls) -> MetaMetric:
        return cls(weight_normaliser="relative", activation_exponent=0.5)

    @property
    def needs_activations(self) -> bool:
        return self.activation_exponent != 0

    def score(self, weight: torch.Tensor, statistics: InputStatistics | None,
              magnitude: torch.Tensor | None = None) -> torch.Tensor:
        """Scores shaped like ``weight`` (``(out, in)``), float32; higher = more important.
        ``magnitude``: ``|weight|`` in float32 when the caller holds it (left unchanged)."""
        magnitude = weight.detach().abs().float() if magnitude is None else magnitude
        scores = _matrix_normaliser(self.weight_normaliser, magnitude) * _transform(
            self.weight_transform, magnitude)
        if self.needs_activations:
            if statistics is None:
                raise ValueError(f"the metric {self.formula()} needs activation statistics")
            x = statistics.mean_sq
            side = _vector_normaliser(self.activation_normaliser, x, weight.shape[0]) * _transform(
                self.activation_transform, x.sqrt())
            scores = scores * side.pow(self.activation_exponent).unsqueeze(0)
        return torch.nan_to_num_(scores, nan=0.0, posinf=torch.finfo(torch.float32).max)

    def formula(self) -> str:
        def side(normaliser, transform, argument):
            term = f"{transform}({argument})" if transform != "identity" else argument
            return term if normaliser == "one" else f"α_{normaliser}({argument.strip('√')})·{term}"

        w = side(self.weight_normaliser, self.weight_transform, "|W|")
        if not self.needs_activations:
            return w
        x = side(self.activation_normaliser, self.activation_transform, "√X")
        power = "" if self.activation_exponent == 1 else f"^{self.activation_exponent:g}"
        return f"{w} ⊙ ({x}){power}" if power else f"{w} ⊙ {x}"

    def to_dict(self) -> dict:
        return asdict(self)


def metric_masks(
    metric: MetaMetric,
    layers,
    block_sparsity,
    statistics: dict[str, InputStatistics] | None,
    nm: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Row-wise (or N:M) keep-masks of every layer from ``metric`` at its block's sparsity."""
    masks = {}
    for layer in layers:
        stats = statistics.get(layer.name) if statistics is not None else None
        scores = metric.score(layer.weight, stats)
        masks[layer.name] = build_mask(scores, float(block_sparsity[layer.block_index]), nm)
    return masks


class RankedMetricMasks:
    """Masks of one metric at many per-block sparsities, from per-row score ranks computed once.

    Holds ``int16`` ranks of every prunable weight (2 bytes each: 270 MB for a 135M model) for the
    most recent metric only; a search that evaluates candidates grouped by metric computes the
    scores and their ordering once per group instead of once per candidate. Gives exactly the
    masks of :func:`metric_masks`.
    """

    def __init__(self, layers, statistics: dict[str, InputStatistics] | None,
                 nm: tuple[int, int] | None = None):
        self.layers, self.statistics, self.nm = layers, statistics, nm
        self._metric: MetaMetric | None = None
        self._cached: dict[str, torch.Tensor] = {}

    def masks(self, metric: MetaMetric, block_sparsity) -> dict[str, torch.Tensor]:
        if metric != self._metric:
            self._cached, self._metric = {}, None  # free the old ranks before building new ones
            for layer in self.layers:
                stats = self.statistics.get(layer.name) if self.statistics is not None else None
                scores = metric.score(layer.weight, stats)
                self._cached[layer.name] = nm_mask(scores, *self.nm) if self.nm else row_ranks(scores)
            self._metric = metric
        if self.nm:
            return dict(self._cached)
        return {layer.name: row_mask_from_ranks(self._cached[layer.name],
                                                float(block_sparsity[layer.block_index]))
                for layer in self.layers}


SELECTIONS = (2, 12)
"""The most sparsities of a block one metric's masks are thresholded at by selection (elsewhere,
on the CPU) before a sort of every row pays: on the CPU one selection (numpy's introselect) costs
about a twentieth of a sort, on a GPU ``topk`` costs about half of one."""


class BlockMetricMasks:
    """Masks of the layers of one block at a time, for any metric and sparsity (a block-major
    evaluation forms many candidates' variants of one block, then moves on). A metric asked for at
    many sparsities of a block has its score ranks computed once for the block; one announced
    (:meth:`expect`) at up to :data:`SELECTIONS` of them has each mask thresholded by a selection
    per row, cheaper than sorting every row. Gives exactly the masks of :func:`metric_masks`, from
    the layers' weights as they are when asked (dense). Scores or ranks are kept for one metric at a
    time, and only when it is asked for at more than one sparsity of the block (a walk forms one
    metric's variants back to back): for a large block, one float32 copy of it. The block's float32
    weight magnitudes are kept while the walk is on it (every metric starts from them)."""

    def __init__(self, statistics: dict[str, InputStatistics] | None, nm: tuple[int, int] | None = None):
        self.statistics, self.nm = statistics, nm
        self._current, self._ranks, self._scores = None, {}, {}  # (block, metric) cached
        self._block, self._magnitudes = None, {}  # the block's layers' |W| (float32)
        self._sparsities: dict[tuple[int, MetaMetric], int] = {}

    def expect(self, variants) -> None:
        """Announce a walk's variants (per candidate, ``(metric, sparsity, ...)`` per block)."""
        seen: dict[tuple[int, MetaMetric], set] = {}
        for candidate in variants:
            for index, (metric, sparsity, *_rest) in enumerate(candidate):
                seen.setdefault((index, metric), set()).add(sparsity)
        self._sparsities = {key: len(values) for key, values in seen.items()}
        self._current, self._ranks, self._scores = None, {}, {}  # a new walk reads the weights again
        self._block, self._magnitudes = None, {}

    def _layer_scores(self, metric: MetaMetric, layer) -> torch.Tensor:
        stats = self.statistics.get(layer.name) if self.statistics is not None else None
        stats = stats.to(layer.weight.device) if stats is not None else None
        if layer.block_index != self._block:
            self._block, self._magnitudes = layer.block_index, {}
        if layer.name not in self._magnitudes:
            self._magnitudes[layer.name] = layer.weight.detach().abs().float()
        return metric.score(layer.weight, stats, self._magnitudes[layer.name])

    def masks(self, metric: MetaMetric, layers, sparsity: float) -> list[torch.Tensor]:
        if not layers:
            return []
        index = layers[0].block_index
        if (index, metric) != self._current:
            self._current, self._ranks, self._scores = (index, metric), {}, {}
        asked = self._sparsities.get((index, metric), 3)
        select = not self.nm and asked <= SELECTIONS[layers[0].weight.device.type == "cpu"]
        masks = []
        for layer in layers:
            key = (metric, layer.name)
            if select:  # scores kept for the metric's other sparsity, if there is one
                scores = self._scores.get(key)
                if scores is None:
                    scores = self._layer_scores(metric, layer)
                    if asked > 1:
                        self._scores[key] = scores
                masks.append(row_mask_by_selection(scores, sparsity))
                continue
            if key not in self._ranks:
                scores = self._layer_scores(metric, layer)
                self._ranks[key] = nm_mask(scores, *self.nm) if self.nm else row_ranks(scores)
            masks.append(self._ranks[key] if self.nm else row_mask_from_ranks(self._ranks[key], sparsity))
        return masks
