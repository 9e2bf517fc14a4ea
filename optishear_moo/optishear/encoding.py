"""The OptiShear search space as a real vector, so that every pymoo algorithm can drive it.

Genes, in order (``n_var`` = 5 [+ 1] [+ 1] [+ n_blocks]):

===========  ===========================  =====================================================
gene         bounds                       decoded as
===========  ===========================  =====================================================
0            [0, 7)                       weight normaliser α_W: ``NORMALISERS[floor(x)]``
1            [0, 7)                       weight transform τ_W: ``TRANSFORMS[floor(x)]``
2            [0, 7)                       activation normaliser α_X
3            [0, 7)                       activation transform τ_X
4            [0, 5)                       activation exponent p: ``EXPONENTS[floor(x)]``
update       [0, 3)                       weight update ``UPDATES[floor(x)]`` (none, obs, lstsq),
                                          only when searching it (the joint space)
size         [low, high]                  target sparsity, only when searching size
blocks       [0, 3) (``discrete``)        block sparsity ``target + step·(floor(x) − 1)``
             [-1, 1] (``continuous``)     ``target + max_deviation·x``, then shifted and clipped
                                          to the bounds (and to target ± max_deviation) so
                                          the parameter-weighted mean is exactly the target
                                          (equality encoding)
===========  ===========================  =====================================================

Categorical genes are integer-coded reals: standard crossover and mutation (SBX, PM, DE, CMA-ES)
work on them unchanged. ``layerwise="uniform"`` (and N:M sparsity) has no block genes.
:meth:`SearchSpace.variables` gives the same genes as pymoo ``Choice``/``Real``/``Integer``
variables for mixed-variable algorithms.
The discrete encoding cannot always hit the target by itself: :class:`BalancedSparsityRepair`
balances it, and the problem reports any remaining discrepancy as an inequality constraint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymoo.core.repair import Repair
from pymoo.core.variable import Choice, Integer, Real

from ..pruning.masks import check_sparsity
from ..pruning.update import UPDATES, check_update
from .meta_metric import EXPONENTS, NORMALISERS, TRANSFORMS, MetaMetric
from .plan import project_to_mean

LAYERWISE = ("continuous", "discrete", "uniform")
_METRIC_GENES = ("weight_normaliser", "weight_transform", "activation_normaliser", "activation_transform",
                 "activation_exponent")
_OPTIONS = (NORMALISERS, TRANSFORMS, NORMALISERS, TRANSFORMS, EXPONENTS)
_CATEGORIES = tuple(len(options) for options in _OPTIONS)


def _index(x: float, n: int) -> int:
    return min(max(int(math.floor(x)), 0), n - 1)


@dataclass(frozen=True)
class SearchSpace:
    """Bounds, decoding and encoding of OptiShear's decision vector (see module docstring)."""

    block_sizes: tuple[float, ...]
    target_sparsity: float | tuple[float, float] = 0.5
    layerwise: str = "continuous"
    step: float = 0.05
    max_deviation: float = 0.1
    sparsity_bounds: tuple[float, float] = (0.0, 0.95)
    searches_metric: bool = True
    update: str = "none"
    searches_update: bool = False

    def __post_init__(self):
        check_update(self.update)
        if self.layerwise not in LAYERWISE:
            raise ValueError(f"unknown layerwise mode {self.layerwise!r}: use one of {', '.join(LAYERWISE)}")
        lower, upper = self.sparsity_bounds
        if not 0 <= lower < upper < 1:
            raise ValueError(f"sparsity_bounds must satisfy 0 <= low < high < 1, got {self.sparsity_bounds}")
        for target in self.target_range:
            check_sparsity(target)
            if not lower <= target <= upper:
                raise ValueError(
                    f"target sparsity {target} is outside sparsity_bounds {self.sparsity_bounds}")
        if self.layerwise == "discrete" and (
                self.target_range[0] - self.step < lower or self.target_range[1] + self.step > upper):
            raise ValueError("target ± step leaves sparsity_bounds: lower the step or widen the bounds")

    @property
    def target_range(self) -> tuple[float, float]:
        t = self.target_sparsity
        return (float(t[0]), float(t[1])) if isinstance(t, (tuple, list)) else (float(t), float(t))

    @property
    def searches_size(self) -> bool:
        return self.target_range[0] != self.target_range[1]

    @property
    def n_blocks(self) -> int:
        return len(self.block_sizes)

    @property
    def n_metric_genes(self) -> int:
        return len(_CATEGORIES) if self.searches_metric else 0

    @property
    def n_var(self) -> int:
        blocks = 0 if self.layerwise == "uniform" else self.n_blocks
        return self.size_index + int(self.searches_size) + blocks

    @property
    def size_index(self) -> int:
        """Index of the target-sparsity gene (when size is searched): after metric and update genes."""
        return self.n_metric_genes + int(self.searches_update)

    @property
    def block_slice(self) -> slice:
        return slice(self.size_index + int(self.searches_size), self.n_var)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        xl, xu = [], []
        if self.searches_metric:
            xl += [0.0] * len(_CATEGORIES)
            xu += [float(n) - 1e-9 for n in _CATEGORIES]
        if self.searches_update:
            xl.append(0.0)
            xu.append(len(UPDATES) - 1e-9)
        if self.searches_size:
            xl.append(self.target_range[0])
            xu.append(self.target_range[1])
        if self.layerwise == "discrete":
            xl += [0.0] * self.n_blocks
            xu += [3.0 - 1e-9] * self.n_blocks
        elif self.layerwise == "continuous":
            xl += [-1.0] * self.n_blocks
            xu += [1.0] * self.n_blocks
        return np.array(xl), np.array(xu)

    def decode(self, x: np.ndarray, default_metric: MetaMetric | None = None
               ) -> tuple[MetaMetric, np.ndarray, float]:
        """``(metric, per-block sparsity, target sparsity)`` of one decision vector."""
        x = np.asarray(x, dtype=np.float64)
        if self.searches_metric:
            i = [_index(x[k], n) for k, n in enumerate(_CATEGORIES)]
            metric = MetaMetric(NORMALISERS[i[0]], TRANSFORMS[i[1]], NORMALISERS[i[2]],
                                TRANSFORMS[i[3]], EXPONENTS[i[4]])
        else:
            metric = default_metric or MetaMetric.wanda()
        target = float(x[self.size_index]) if self.searches_size else self.target_range[0]
        genes = x[self.block_slice]
        if self.layerwise == "uniform":
            sparsity = np.full(self.n_blocks, target)
        elif self.layerwise == "discrete":
            offsets = np.array([_index(g, 3) - 1 for g in genes])
            sparsity = target + self.step * offsets
        else:
            lower = max(self.sparsity_bounds[0], target - self.max_deviation)
            upper = min(self.sparsity_bounds[1], target + self.max_deviation)
            sparsity = project_to_mean(target + self.max_deviation * genes, target,
                                       np.asarray(self.block_sizes), lower, upper)
        return metric, sparsity, target

    def decode_update(self, x: np.ndarray) -> str:
        """The weight update (``"none"``, ``"obs"``, ``"lstsq"``) of one decision vector."""
        if not self.searches_update:
            return self.update
        return UPDATES[_index(float(np.asarray(x, dtype=np.float64)[self.n_metric_genes]), len(UPDATES))]

    def encode(self, metric: MetaMetric | None = None, block_sparsity=None,
               target: float | None = None, update: str | None = None) -> np.ndarray:
        """A decision vector that decodes to ``metric``, ``block_sparsity`` (uniform by default) and
        ``update`` (the space's default by default)."""
        target = self.target_range[0] if target is None else float(target)
        x = []
        if self.searches_metric:
            metric = metric or MetaMetric.wanda()
            choices = [NORMALISERS.index(metric.weight_normaliser), TRANSFORMS.index(metric.weight_transform),
                       NORMALISERS.index(metric.activation_normaliser),
                       TRANSFORMS.index(metric.activation_transform),
                       EXPONENTS.index(metric.activation_exponent)]
            x += [c + 0.5 for c in choices]
        if self.searches_update:
            x.append(UPDATES.index(check_update(update or self.update)) + 0.5)
        if self.searches_size:
            x.append(target)
        if self.layerwise != "uniform":
            sparsity = (np.full(self.n_blocks, target) if block_sparsity is None
                        else np.asarray(block_sparsity))
            if self.layerwise == "discrete":
                x += list(np.clip(np.round((sparsity - target) / self.step), -1, 1) + 1.5)
            else:
                x += list(np.clip((sparsity - target) / self.max_deviation, -1, 1))
        return np.array(x, dtype=np.float64)

    def variables(self) -> dict:
        """The same genes as pymoo variables (for ``MixedVariableGA`` and mixed-variable NSGA-II):
        ``Choice`` of the metric's parts, ``Real`` target and continuous block genes, ``Integer``
        block offsets in ``{-1, 0, 1}`` (discrete)."""
        variables = {}
        if self.searches_metric:
            for name, options in zip(_METRIC_GENES, _OPTIONS):
                variables[name] = Choice(options=list(options))
        if self.searches_update:
            variables["update"] = Choice(options=list(UPDATES))
        if self.searches_size:
            variables["target_sparsity"] = Real(bounds=self.target_range)
        for block in range(self.n_blocks if self.layerwise != "uniform" else 0):
            variables[f"block_{block}"] = (Integer(bounds=(-1, 1)) if self.layerwise == "discrete"
                                           else Real(bounds=(-1.0, 1.0)))
        return variables

    def vector(self, values: dict) -> np.ndarray:
        """The decision vector of mixed-variable ``values`` (see :meth:`variables`)."""
        x = []
        if self.searches_metric:
            x += [list(options).index(values[name]) + 0.5 for name, options in zip(_METRIC_GENES, _OPTIONS)]
        if self.searches_update:
            x.append(UPDATES.index(values["update"]) + 0.5)
        if self.searches_size:
            x.append(float(values["target_sparsity"]))
        for block in range(self.n_blocks if self.layerwise != "uniform" else 0):
            value = float(values[f"block_{block}"])
            x.append(value + 1.5 if self.layerwise == "discrete" else value)
        return np.array(x, dtype=np.float64)

    def sparsity_discrepancy(self, block_sparsity: np.ndarray, target: float) -> float:
        """|parameter-weighted mean block sparsity − target|."""
        return abs(float(np.average(block_sparsity, weights=self.block_sizes)) - target)


class BalancedSparsityRepair(Repair):
    """Repair for ``layerwise="discrete"``: move blocks' ±step choices towards ``target`` until the
    parameter-weighted mean is as close to the target as single-step moves can bring it.

    Deterministic: the block whose gene lies nearest to the next option moves first."""

    def _do(self, problem, X, **kwargs):
        space: SearchSpace = problem.space
        if space.layerwise != "discrete":
            return X
        if np.asarray(X).dtype == object:  # mixed-variable candidates: repair their vector form
            repaired = self._do(problem, problem.as_vectors(X))
            candidates = [dict(x) for x in np.asarray(X).reshape(-1)]
            for values, row in zip(candidates, repaired):
                for block, gene in enumerate(row[space.block_slice]):
                    values[f"block_{block}"] = _index(gene, 3) - 1
            return np.array(candidates, dtype=object).reshape(np.shape(X))
        X = np.array(X, dtype=np.float64, copy=True)
        weights = np.asarray(space.block_sizes) / np.sum(space.block_sizes)
        for row in X:
            genes = row[space.block_slice]
            offsets = np.array([_index(g, 3) - 1 for g in genes], dtype=float)
            excess = float(weights @ offsets) * space.step  # mean − target
            while True:
                direction = -1 if excess > 0 else 1
                movable = np.flatnonzero(offsets != direction)  # can move by `direction`
                if not len(movable):
                    break
                distance = (genes[movable] - np.floor(genes[movable]))
                distance = (distance if direction < 0 else 1 - distance)
                block = movable[np.argmin(distance)]
                new_excess = excess + direction * weights[block] * space.step
                if abs(new_excess) >= abs(excess) - 1e-12:
                    break
                offsets[block] += direction
                genes[block] = offsets[block] + 1.5
                excess = new_excess
            row[space.block_slice] = genes
        return X
