"""DarwinLM as pymoo parts: the structured-pruning problem, budget-keeping sampling and
level-switch mutation, and training-aware selection as a pymoo ``Survival``.

Decision vector: ``[attention_0, mlp_0, attention_1, mlp_1, ...]``, the level of every unit
(see :mod:`.database`). Size is measured on the blocks' projection weights
(embeddings, norms and the LM head are not pruned): ``compression = dense / kept``.

With one ``target_compression`` the budget is held exactly: sampling starts from the most
uniform allocation that meets the target and only applies level switches (one unit up, another
unit of the same kind down), which never change the parameter count. With a
``(low, high)`` range, a second objective (share of block weights kept) gives the size-vs-quality
front, and the mutation may also move single levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.sampling import Sampling
from pymoo.core.survival import Survival
from pymoo.core.variable import Integer
from pymoo.operators.selection.rnd import RandomSelection

from ..models.sliced import UNITS
from ..search.problem import ModelProblem, problem_fingerprint
from .database import LevelDatabase, kept_parameters, uniform_levels
from .fitness import StructuredEvaluator


@dataclass(frozen=True)
class SelectionStage:
    """One stage of training-aware selection: every candidate still in the race is fine-tuned on
    ``finetune_tokens`` tokens, scored on ``eval_samples`` calibration samples (all if None),
    and the best ``survivors`` go on."""

    finetune_tokens: int
    survivors: int
    eval_samples: int | None = None


def check_stages(stages, pop_size: int) -> tuple[SelectionStage, ...]:
    stages = tuple(stages)
    survivors = [stage.survivors for stage in stages]
    if not stages or survivors != sorted(survivors, reverse=True) or survivors[-1] != pop_size:
        raise ValueError(f"selection stages must keep non-increasing numbers of survivors ending at "
                         f"the population size {pop_size}; got {survivors}")
    if any(stage.finetune_tokens < 0 for stage in stages):
        raise ValueError("finetune_tokens must be >= 0")
    return stages


def check_compression(value) -> float:
    if not isinstance(value, (int, float)) or not value > 1:
        raise ValueError(f"compression must be a number > 1 (dense / kept weights), got {value!r}")
    return float(value)


class StructuredPruningProblem(ModelProblem):
    """Levels of every attention and MLP unit; fitness = KL to the dense model (one-shot).

    ``training``: ``(n, seq_len)`` token windows used by training-aware selection (defaults to
    the calibration windows). The working ``model`` is sliced in place while the problem is used;
    ``restore_dense()`` gives it back dense. Constraints hold the size: with one target, the share
    of block weights kept may not exceed that of the uniform allocation (the budget-keeping
    operators below never leave it); with a range, the share stays inside it. Candidates may be
    integer vectors or dicts of pymoo ``Integer`` variables ``attention_i``/``mlp_i``; other keyword
    arguments go to ``pymoo.core.problem.Problem``.
    """

    def __init__(self, model, calibration: torch.Tensor, target_compression,
                 database: LevelDatabase | None = None, training: torch.Tensor | None = None,
                 mlp_levels: int | None = None, batch_size: int = 8,
                 finetune_learning_rate: float = 1e-4, progress: bool = False, **problem_kwargs):
        self.multi_objective = isinstance(target_compression, (tuple, list))
        targets = target_compression if self.multi_objective else (target_compression,)
        targets = sorted(check_compression(t) for t in targets)
        self.compression_range = (targets[0], targets[-1])
        self.model = model
        self.database = database or LevelDatabase.build(model, calibration, mlp_levels,
                                                        batch_size=batch_size, progress=progress)
        self.evaluator = StructuredEvaluator(model, self.database, calibration, batch_size, progress)
        self.training = calibration if training is None else training
        self.finetune_learning_rate = finetune_learning_rate
        self.dense_parameters = kept_parameters(self.database, np.zeros((self.database.n_blocks, 2), int))
        self.tops = np.array([self.database.n_levels[unit] for unit in UNITS])
        self.eval_samples: int | None = None
        n_blocks = self.database.n_blocks
        variables = {f"{unit}_{block}": Integer(bounds=(0, int(top)))
                     for block in range(n_blocks) for unit, top in zip(UNITS, self.tops)}
        fingerprint = problem_fingerprint(type(self).__name__, model, calibration, self.compression_range,
                                          self.database.n_levels, batch_size)
        super().__init__(n_var=2 * n_blocks, n_obj=2 if self.multi_objective else 1,
                         n_ieq_constr=2 if self.multi_objective else 1, xl=0,
                         xu=np.tile(self.tops, n_blocks), vtype=int, vars=variables, fingerprint=fingerprint,
                         exclude_from_serialization=["model", "database", "evaluator", "training"],
                         **problem_kwargs)
        self.budget_share = self.kept_share(self.uniform_levels(self.compression_range[0]))

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("kl", "kept_share") if self.multi_objective else ("kl",)

    def levels(self, x) -> np.ndarray:
        """``(n_blocks, 2)`` levels (attention, mlp) of a vector or dict of variables."""
        return np.rint(np.asarray(self.as_vector(x), dtype=float)).astype(int).reshape(-1, 2)

    decode = levels

    def kept_share(self, x) -> float:
        """Share of the blocks' projection weights that ``x`` keeps (1 / compression)."""
        return kept_parameters(self.database, self.levels(x)) / self.dense_parameters

    def uniform_levels(self, compression: float) -> np.ndarray:
        """The most uniform allocation for ``compression`` (see :func:`.database.uniform_levels`)."""
        return uniform_levels(self.database, check_compression(compression)).reshape(-1)

    def _evaluate_vectors(self, X, out, *args, **kwargs):
        X = np.rint(np.asarray(X, dtype=float)).astype(int)  # real-valued algorithms give reals
        F = np.empty((len(X), self.n_obj))
        shares = np.array([self.kept_share(x) for x in X])
        for row, x in enumerate(X):
            F[row, 0] = self.evaluator.evaluate(self.levels(x), self.eval_samples)
        if self.multi_objective:
            F[:, 1] = shares
            low, high = 1 / self.compression_range[1], 1 / self.compression_range[0]
            out["G"] = np.column_stack([low - shares, shares - high])
        else:
            out["G"] = (shares - self.budget_share - 1e-12)[:, None]
        out["F"] = F

    def finetuned_kl(self, x, finetune_tokens: int, eval_samples: int | None = None) -> float:
        """KL after fine-tuning the candidate on its first ``finetune_tokens`` training tokens."""
        n_windows = max(1, round(finetune_tokens / self.training.shape[1])) if finetune_tokens else 0
        if n_windows > len(self.training):
            raise ValueError(f"a stage asks for {finetune_tokens} fine-tuning tokens but the training "
                             f"set holds {self.training.numel()}: pass more training windows")
        if not n_windows:
            return self.evaluator.evaluate(self.levels(x), eval_samples)
        return self.evaluator.finetune_and_evaluate(self.levels(x), self.training[:n_windows],
                                                    self.finetune_learning_rate, n_samples=eval_samples)

    def restore_dense(self):
        return self.evaluator.restore_dense()


def _switch(levels: np.ndarray, tops: np.ndarray, weights: np.ndarray, rng) -> bool:
    """Raise one unit's level and lower another unit of the same kind by one (budget unchanged)."""
    column = rng.choice(2, p=weights)
    up = np.flatnonzero(levels[:, column] < tops[column])
    down = np.flatnonzero(levels[:, column] > 0)
    if not len(up) or not len(down) or (len(up) == 1 and len(down) == 1 and up[0] == down[0]):
        return False
    i = rng.choice(up)
    j = rng.choice(down[down != i])
    levels[i, column] += 1
    levels[j, column] -= 1
    return True


def _step_weights(problem) -> np.ndarray:
    """Pick attention or MLP in proportion to the weights one level step moves (DarwinLM)."""
    database = problem.database
    steps = np.array([database.unit_parameters(unit) / database.n_levels[unit] for unit in UNITS])
    return steps / steps.sum()


class BudgetSampling(Sampling):
    """The uniform allocation for the target, plus copies moved by random level switches
    (same budget). For a compression range each sample gets a random target in the range."""

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        low, high = problem.compression_range
        weights = _step_weights(problem)
        X = []
        for k in range(n_samples):
            target = low if low == high else random_state.uniform(low, high)
            levels = problem.levels(problem.uniform_levels(target)).copy()
            for _ in range(0 if k == 0 else random_state.integers(1, len(levels) + 1)):
                _switch(levels, problem.tops, weights, random_state)
            X.append(levels.reshape(-1))
        return np.array(X)


class LevelSwitchMutation(Mutation):
    """DarwinLM's mutation: ``min(U{1..3}, U{1..3})`` level switches per offspring (budget kept).
    For a compression range, with probability ``resize_prob`` one unit moves one level instead."""

    def __init__(self, max_switches: int = 3, resize_prob: float = 0.3, **kwargs):
        super().__init__(prob=1.0, **kwargs)
        self.max_switches, self.resize_prob = max_switches, resize_prob

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        weights = _step_weights(problem)
        X = np.asarray(X, dtype=int).copy()
        for row in X:
            levels = row.reshape(-1, 2)
            if problem.multi_objective and random_state.random() < self.resize_prob:
                block, column = random_state.integers(len(levels)), random_state.choice(2, p=weights)
                step = random_state.choice([-1, 1])
                levels[block, column] = np.clip(levels[block, column] + step, 0, problem.tops[column])
                continue
            draws = random_state.integers(1, self.max_switches + 1, size=2)
            for _ in range(int(draws.min())):
                _switch(levels, problem.tops, weights, random_state)
        return X


class CopyParent(Crossover):
    """No recombination (DarwinLM evolves by mutation only): each offspring starts as a copy of
    one parent. (pymoo's ``NoCrossover`` hands back the parent objects themselves, so mutating
    the offspring would alter the parents.)"""

    def __init__(self, **kwargs):
        super().__init__(n_parents=1, n_offsprings=1, **kwargs)

    def _do(self, problem, X, *args, **kwargs):
        return X.copy()


class TrainingAwareSurvival(Survival):
    """DarwinLM's selection: parents and offspring go through ``stages``; in each, every
    remaining candidate is fine-tuned (temporarily) and re-scored, and the best go on.

    The survivors carry their last-stage score in ``ind.data["finetuned_kl"]``; ``F`` stays the
    one-shot KL so scores of different stages are never compared.
    """

    def __init__(self, stages):
        super().__init__(filter_infeasible=True)
        self.stages = tuple(stages)

    def _do(self, problem, pop, *args, n_survive=None, **kwargs):
        if len(pop) <= n_survive:  # the initial population: nothing to select yet
            return pop[np.argsort(pop.get("F")[:, 0], kind="stable")]
        check_stages(self.stages, n_survive)
        candidates = pop
        for stage in self.stages:
            scores = np.array([problem.finetuned_kl(ind.X, stage.finetune_tokens, stage.eval_samples)
                               for ind in candidates])
            order = np.argsort(scores, kind="stable")[: max(stage.survivors, n_survive)]
            candidates = candidates[order]
            for ind, score in zip(candidates, scores[order]):
                ind.data["finetuned_kl"] = float(score)
        return candidates[:n_survive]


def darwinlm_algorithm(problem: StructuredPruningProblem, pop_size: int = 1, n_offsprings: int = 16,
                       stages=None):
    """pymoo's GA (NSGA-II for a compression range) with DarwinLM's parts: budget sampling,
    level-switch mutation, no crossover, and, given ``stages``, training-aware survival."""
    operators = dict(sampling=BudgetSampling(), crossover=CopyParent(),
                     mutation=LevelSwitchMutation(), selection=RandomSelection(),
                     eliminate_duplicates=True, n_offsprings=n_offsprings)
    if problem.multi_objective:
        if stages:
            raise ValueError("training-aware selection needs one target compression (one objective)")
        return NSGA2(pop_size=pop_size, **operators)
    if stages:
        operators["survival"] = TrainingAwareSurvival(check_stages(stages, pop_size))
    return GA(pop_size=pop_size, **operators)
