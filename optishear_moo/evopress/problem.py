"""EvoPress's sparsity-level search as a pymoo problem (a level problem of
:mod:`optishear_moo.search.levels`).

Decision vector: one level (an index of the database's sparsity ladder) per prunable layer. A
level switch raises one layer's sparsity by a step and lowers another's of the same role (q_proj
with q_proj...) – layers of one role have one shape across blocks, so the parameter-weighted mean
sparsity is kept exactly. With one ``target_sparsity`` the objective is the calibration KL to the
dense model and one constraint holds the mean on the target; with ``(low, high)`` a second
objective, the share of weights kept (``density``), gives the size-vs-quality front.

A population is scored in one walk over the decoder blocks
(:class:`~optishear_moo.evaluation.population.BlockwiseEvaluator`): per block, each distinct
prefix of level tuples runs once, its layers copied in from the database; the model is left
dense. ``stitch`` writes one candidate's levels into the model (``restore_dense()`` undoes it).
"""

from __future__ import annotations

import numpy as np
import torch
from pymoo.core.variable import Integer
from torch import nn

from ..evaluation.divergence import DenseOutputs
from ..evaluation.population import BlockwiseEvaluator
from ..models.adapters import get_adapter
from ..pruning.masks import check_sparsity_target
from ..pruning.weights import DenseSnapshot
from ..search.problem import ModelProblem, problem_fingerprint
from .database import SparsityLevelDatabase

SPARSITY_TOLERANCE = 1e-6


class LevelSearchProblem(ModelProblem):
    """Per-layer sparsity levels of ``model`` read from a level database.

    Args:
        model: The dense model (the working model: layers are swapped in place; see
            :meth:`restore_dense`).
        calibration: ``(n_samples, seq_len)`` token ids that score candidates.
        target_sparsity: Mean sparsity (one objective, the KL; one constraint holds the mean), or
            ``(low, high)`` (objectives KL and density; two constraints hold the range).
        database: A :class:`SparsityLevelDatabase` of this model; built here when None, with
            ``method``/``update`` at a ladder of ``step`` around the target, each block pruned from
            the inputs of the blocks before it at the target (``database_inputs="pruned"``) or
            from dense inputs (``"dense"``, as EvoPress).
        method: The database's pruning method when it is built here.
        update: Weight update of a metric method's levels when built here.
        step: Sparsity between levels when built here.
        batch_size: Calibration windows per forward pass.
        progress: Show progress while the dense references (and database) are computed.
        database_inputs: See ``database``.
        workers: Evaluate on this many Ray workers, or on a ``RayPool``.
        ray_address: The Ray cluster to join.
        device: Where candidates' blocks run, one block at a time (the model's compute device
            when None, see :mod:`optishear_moo.models.placement`; the weights stay where they are).
        **problem_kwargs: Passed to ``pymoo.core.problem.Problem``.
    """

    score_cache_size = 65536
    """Scores kept for re-scoring before the cache is emptied."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor,
                 target_sparsity: float | tuple[float, float] = 0.5,
                 database: SparsityLevelDatabase | None = None, method: str = "sparsegpt",
                 update: str = "none", step: float = 0.05, batch_size: int = 8, progress: bool = False,
                 database_inputs: str = "pruned", workers=None, ray_address: str | None = None,
                 device: str | torch.device | None = None, **problem_kwargs):
        target_sparsity = check_sparsity_target(target_sparsity)
        database = database or SparsityLevelDatabase.for_target(
            model, calibration, target_sparsity, method, update, step, database_inputs=database_inputs,
            batch_size=batch_size, progress=progress)
        replica = dict(model=model, calibration=calibration, target_sparsity=target_sparsity,
                       database=database, batch_size=batch_size, device=device, **problem_kwargs)
        self.multi_objective = isinstance(target_sparsity, (tuple, list))
        targets = target_sparsity if self.multi_objective else (target_sparsity, target_sparsity)
        self.sparsity_range = (targets[0], targets[-1])
        self.database = database
        ladder = np.asarray(self.database.ladder)
        if self.sparsity_range[0] < ladder.min() - 1e-9 or self.sparsity_range[1] > ladder.max() + 1e-9:
            raise ValueError(f"target sparsity {target_sparsity} lies outside the database's ladder "
                             f"{ladder.min():.3f}..{ladder.max():.3f}: build it around the target")
        self.model = model
        self.layers = get_adapter(model).prunable_layers(model)
        if [layer.name for layer in self.layers] != self.database.names:
            raise ValueError("the level database was built for another model (its layers differ)")
        self._snapshot = None  # the dense weights, taken when stitch first changes the model
        self.reference = DenseOutputs.build(model, calibration, batch_size, progress)
        self.evaluator = BlockwiseEvaluator(model, self.reference, device)
        self.block_slices = [np.array([i for i, layer in enumerate(self.layers) if layer.block_index == b])
                             for b in range(self.evaluator.n_blocks)]
        self.current = np.full(len(self.layers), -1)  # the level each layer holds now (-1: dense)
        self.eval_fidelity = 1.0
        self._scores: dict[tuple, float] = {}  # (levels, fidelity) -> KL, so re-scoring is free
        roles = self.database.roles
        self.level_groups = [np.array([i for i, r in enumerate(roles) if r == role])
                             for role in dict.fromkeys(roles)]
        steps = np.array([self.database.numels[group[0]] for group in self.level_groups], dtype=float)
        self.group_weights = steps / steps.sum()
        n_var, top = len(self.layers), self.database.n_levels - 1
        fingerprint = problem_fingerprint(type(self).__name__, model, calibration, self.sparsity_range,
                                          self.database.ladder, self.database.method, self.database.update,
                                          self.database.inputs_at)
        super().__init__(n_var=n_var, n_obj=2 if self.multi_objective else 1,
                         n_ieq_constr=2 if self.multi_objective else 1, xl=0, xu=top, vtype=int,
                         vars={name: Integer(bounds=(0, top)) for name in self.database.names},
                         replica=replica, fingerprint=fingerprint, workers=workers, ray_address=ray_address,
                         exclude_from_serialization=["model", "database", "layers", "reference",
                                                     "evaluator", "_scores"],
                         **problem_kwargs)
        uniform = self.uniform_x(self.sparsity_range[0])
        self.group_totals = [int(uniform[group].sum()) for group in self.level_groups]

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("kl", "density") if self.multi_objective else ("kl",)

    @property
    def size_range(self) -> tuple[float, float]:
        return self.sparsity_range

    def levels(self, x) -> np.ndarray:
        """Per-layer ladder indices of a vector (or dict of variables): rounded, clipped to the
        ladder and, with one size target, brought onto the budget (:meth:`on_budget`)."""
        levels = np.clip(np.rint(np.asarray(self.as_vector(x), dtype=float)), 0, self.database.n_levels - 1)
        return levels.astype(int) if self.multi_objective else self.on_budget(levels.astype(int))

    def on_budget(self, levels: np.ndarray) -> np.ndarray:
        """``levels`` with each role group's level sum moved to the target's (the highest layer
        lowered, or the lowest raised, one step at a time): the mean sparsity is then the target
        exactly, whatever made the vector (pymoo's plain GA, DE, PSO, CMA-ES...). Level switches
        keep the sums, so the search's own operators never need it."""
        levels = levels.copy()
        for group, total in zip(self.level_groups, self.group_totals):
            excess = int(levels[group].sum()) - total
            while excess:
                step = 1 if excess > 0 else -1
                index = group[np.argmax(levels[group]) if step > 0 else np.argmin(levels[group])]
                levels[index] -= step
                excess -= step
        return levels

    decode = levels

    def describe(self, x) -> dict:
        levels = self.levels(x)
        sparsity = self.database.mean_sparsity(levels)
        return {"levels": levels.tolist(), "sparsity": sparsity, "density": 1 - sparsity}

    def layer_sparsity(self, x) -> dict[str, float]:
        return {name: self.database.ladder[level] for name, level in zip(self.database.names, self.levels(x))}

    def uniform_x(self, target: float) -> np.ndarray:
        """Every layer at the ladder level nearest ``target``; a target between two levels mixes
        them over whole role groups so the mean comes as close as the steps allow."""
        ladder = np.asarray(self.database.ladder)
        below = int(np.clip(np.searchsorted(ladder, target + 1e-9) - 1, 0, len(ladder) - 1))
        x = np.full(self.n_var, below)
        if below + 1 < len(ladder) and target > ladder[below] + 1e-9:
            share = (target - ladder[below]) / (ladder[below + 1] - ladder[below])
            for group in self.level_groups:  # raise a share of each role's layers one level
                x[group[: int(round(share * len(group)))]] += 1
        return x

    def __getstate__(self):
        return {**super().__getstate__(), "_snapshot": None}

    def stitch(self, levels: np.ndarray) -> None:
        """Copy into the working model the database weights of the layers whose level changed."""
        if self._snapshot is None:
            self._snapshot = DenseSnapshot(self.layers)
        for i in np.flatnonzero(levels != self.current):
            self.layers[i].weight.copy_(self.database.weight(self.layers[i].name, int(levels[i])))
        self.current = levels.copy()

    def kl(self, x, fidelity: float = 1.0) -> float:
        """KL to the dense model on the first ``fidelity`` share of the calibration windows."""
        return self.kls([x], fidelity)[0]

    def kls(self, X, fidelity: float = 1.0) -> list[float]:
        """:meth:`kl` of every candidate of ``X``; those not scored before at this fidelity are
        scored together, in one walk over the blocks."""
        self._check_attached()
        if len(self._scores) > self.score_cache_size:  # before the lookup: every key asked for is then held
            self._scores.clear()
        keys = [(self.levels(x).tobytes(), round(fidelity, 9)) for x in X]
        missing = {key: self.levels(x) for key, x in zip(keys, X) if key not in self._scores}
        if missing:
            variants = [[tuple(int(v) for v in levels[block]) for block in self.block_slices]
                        for levels in missing.values()]
            scores = self.evaluator.kl(variants, self._form, fidelity, self.block_done)
            self._scores.update(zip(missing, scores))
        return [self._scores[key] for key in keys]

    def _form(self, index: int, layers, levels: tuple) -> None:
        for layer, level in zip(layers, levels):
            layer.weight.copy_(self.database.weight(layer.name, level))

    def stage_score(self, x, stage) -> float:
        """KL on the first ``stage.eval_samples`` calibration windows (all when None)."""
        return self.local_stage_scores([x], stage)[0]

    def local_stage_scores(self, X, stage) -> list[float]:
        n_total = len(self.reference.calibration)
        scores = self.kls(X, stage.fidelity(n_total))
        for _ in scores:
            self.candidate_done()
        return scores

    def _evaluate_vectors(self, X, out, *args, **kwargs):
        X = np.array([self.levels(x) for x in X])
        F = np.empty((len(X), self.n_obj))
        sparsity = np.array([self.database.mean_sparsity(x) for x in X])
        F[:, 0] = self.kls(X, self.eval_fidelity)
        for _ in X:
            self.candidate_done()
        if self.multi_objective:
            F[:, 1] = 1 - sparsity
            low, high = self.sparsity_range
            out["G"] = np.column_stack([low - sparsity, sparsity - high])
        else:
            out["G"] = (np.abs(sparsity - self.sparsity_range[0]) - SPARSITY_TOLERANCE)[:, None]
        out["F"] = F

    def restore_dense(self) -> nn.Module:
        if self._snapshot is not None:
            self._snapshot.restore()
        self.current[:] = -1
        return self.model
