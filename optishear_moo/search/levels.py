"""Level searches as pymoo parts (DarwinLM, EvoPress): each gene is the level of one unit (a
layer's sparsity step, a block's removed heads...), read from a precomputed database.

A level problem declares ``level_groups`` (lists of gene indices whose level steps move the same
number of weights, so raising one and lowering another keeps the size exactly), ``group_weights``
(how often each group is picked: in proportion to the weights one step moves), integer bounds
``xl = 0`` and ``xu`` (top levels), ``size_range`` (one target, or a range with
``multi_objective``), ``uniform_x(target)`` (the most uniform allocation for a size target) and,
for staged selection, ``stage_score(x, stage)``.

* :class:`BudgetSampling` – the uniform allocation, and copies moved by random level switches.
* :class:`LevelSwitchMutation` – ``min(U{1..3}, U{1..3})`` switches (DarwinLM, EvoPress); with a
  size range some offspring move one level instead.
* :class:`CopyParent` – no recombination.
* :class:`SelectionStage`, :func:`halving_stages` and :class:`StagedSurvival` – staged selection:
  parents and offspring are re-scored stage by stage (more calibration windows, or a longer
  fine-tune, for fewer survivors): EvoPress's multi-fidelity and DarwinLM's training-aware
  selection are the same scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.sampling import Sampling
from pymoo.core.survival import Survival

from ..errors import SettingError, param


def level_switch(x: np.ndarray, problem, rng) -> bool:
    """Raise one gene's level and lower another of the same group by one (size unchanged)."""
    group = problem.level_groups[rng.choice(len(problem.level_groups), p=problem.group_weights)]
    tops = np.asarray(problem.xu)[group]
    up = group[x[group] < tops]
    down = group[x[group] > 0]
    if not len(up) or not len(down) or (len(up) == 1 and len(down) == 1 and up[0] == down[0]):
        return False
    i = rng.choice(up)
    j = rng.choice(down[down != i])
    x[i] += 1
    x[j] -= 1
    return True


def level_step(x: np.ndarray, problem, rng) -> None:
    """Move one gene (of a group picked by weight) one level up or down (changes the size)."""
    group = problem.level_groups[rng.choice(len(problem.level_groups), p=problem.group_weights)]
    gene = rng.choice(group)
    x[gene] = np.clip(x[gene] + rng.choice([-1, 1]), 0, np.asarray(problem.xu)[gene])


class BudgetSampling(Sampling):
    """The uniform allocation for the target, plus copies moved by random level switches (same
    size). For a size range each sample gets a random target in the range."""

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        low, high = problem.size_range
        X = []
        for k in range(n_samples):
            target = low if low == high else random_state.uniform(low, high)
            x = np.asarray(problem.uniform_x(target), dtype=int).copy()
            for _ in range(0 if k == 0 else random_state.integers(1, len(x) // 2 + 1)):
                level_switch(x, problem, random_state)
            X.append(x)
        return np.array(X)


class LevelSwitchMutation(Mutation):
    """``min(U{1..max}, U{1..max})`` level switches per offspring (size kept). For a size range,
    with probability ``resize_prob`` one gene moves one level instead."""

    def __init__(self, max_switches: int = 3, resize_prob: float = 0.3, **kwargs):
        super().__init__(prob=1.0, **kwargs)
        self.max_switches, self.resize_prob = max_switches, resize_prob

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = np.rint(np.asarray(X, dtype=float)).astype(int)
        for x in X:
            if problem.multi_objective and random_state.random() < self.resize_prob:
                level_step(x, problem, random_state)
                continue
            draws = random_state.integers(1, self.max_switches + 1, size=2)
            for _ in range(int(draws.min())):
                level_switch(x, problem, random_state)
        return X


class CopyParent(Crossover):
    """No recombination (DarwinLM and EvoPress evolve by mutation only): each offspring starts as a
    copy of one parent. (pymoo's ``NoCrossover`` hands back the parent objects themselves, so
    mutating the offspring would alter the parents.)"""

    def __init__(self, **kwargs):
        super().__init__(n_parents=1, n_offsprings=1, **kwargs)

    def _do(self, problem, X, *args, **kwargs):
        return X.copy()


@dataclass(frozen=True)
class SelectionStage:
    """One stage of staged selection: every candidate still in the race is fine-tuned on
    ``finetune_tokens`` tokens (DarwinLM's training-aware selection; 0: none), scored on the first
    ``eval_samples`` calibration windows (all when None), and the best ``survivors`` go on."""

    survivors: int
    eval_samples: int | None = None
    finetune_tokens: int = 0

    def fidelity(self, n_samples: int) -> float:
        """The share of ``n_samples`` calibration windows this stage scores on."""
        return 1.0 if self.eval_samples is None else min(self.eval_samples, n_samples) / n_samples


def halving_stages(pop_size: int = 1, n_stages: int | None = None, n_samples: int | None = None,
                   finetune_tokens=None) -> list[SelectionStage]:
    """Stages whose survivors halve down to ``pop_size``.

    Args:
        pop_size: Survivors of the last stage (the parents of the next generation).
        n_stages: Number of stages (default: one per ``finetune_tokens`` entry, else 3).
        n_samples: With it, the windows scored double from stage to stage up to all
            ``n_samples`` (EvoPress's multi-fidelity selection: 8 windows, 3 stages score 2, 4,
            then all 8).
        finetune_tokens: Fine-tuning tokens per stage, growing (DarwinLM's training-aware
            selection), e.g. ``[1024, 2048, 4096]``.
    """
    tokens = [int(t) for t in finetune_tokens] if finetune_tokens is not None else None
    if tokens is not None:
        if not tokens or any(t <= 0 for t in tokens):
            raise SettingError(f"{param('finetune_tokens')} per stage must be positive integers, got "
                               f"{finetune_tokens}")
        if tokens != sorted(tokens):
            raise SettingError(f"{param('finetune_tokens')} must grow from stage to stage, got {tokens}")
        if n_stages is not None and n_stages != len(tokens):
            raise SettingError(f"{param('n_stages')} is {n_stages} but {len(tokens)} "
                               f"{param('finetune_tokens')} were given")
    n_stages = len(tokens) if tokens is not None else (3 if n_stages is None else n_stages)
    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 1:
        raise SettingError(f"{param('n_stages')} must be at least 1, got {n_stages!r}")
    stages = []
    for k in range(n_stages):
        halvings = n_stages - 1 - k
        samples = max(1, n_samples // 2 ** halvings) if n_samples is not None and halvings else None
        stages.append(SelectionStage(pop_size * 2 ** halvings, samples, tokens[k] if tokens else 0))
    return stages


def check_stages(stages, pop_size: int) -> tuple:
    """Stages whose numbers of survivors do not grow and end at the population size."""
    stages = tuple(stages)
    survivors = [stage.survivors for stage in stages]
    if not stages or survivors != sorted(survivors, reverse=True) or survivors[-1] != pop_size:
        raise SettingError(f"selection stages must keep non-increasing numbers of survivors ending at "
                           f"the population size {param('pop_size')}={pop_size}; got {survivors}")
    if any(stage.finetune_tokens < 0 for stage in stages):
        raise SettingError("finetune_tokens of a selection stage must be >= 0")
    return stages


class StagedSurvival(Survival):
    """Multi-fidelity selection: parents and offspring go through ``stages``; in each, every
    remaining candidate is scored with ``problem.stage_score(x, stage)`` and the best
    ``stage.survivors`` go on. Survivors carry their last score in ``ind.data[score_name]``; ``F``
    stays the candidate's own objective, so scores of different stages are never compared.

    With ``elitist``, the parents (the algorithm's population before the offspring joined it, and
    every candidate already holding a score) skip the earlier stages and meet the offspring that
    survive them in the last: the best parent is only replaced by a candidate better on the last
    stage's score, so the search never ends worse than its first population there.
    """

    def __init__(self, stages, score_name: str = "stage_score", elitist: bool = False):
        super().__init__(filter_infeasible=True)
        self.stages, self.score_name, self.elitist = tuple(stages), score_name, elitist

    def _do(self, problem, pop, *args, n_survive=None, **kwargs):
        if len(pop) <= n_survive:  # the initial population: nothing to select yet
            if self.elitist:
                return self._ranked(problem, pop, self.stages[-1], n_survive)
            return pop[np.argsort(pop.get("F")[:, 0], kind="stable")]
        check_stages(self.stages, n_survive)
        candidates, parents = pop, []
        if self.elitist:
            current = getattr(kwargs.get("algorithm"), "pop", None)
            elder = {id(ind) for ind in (current if current is not None else [])}
            is_parent = [self.score_name in ind.data or id(ind) in elder for ind in pop]
            parents = [ind for ind, parent in zip(pop, is_parent) if parent]
            candidates = pop[[not parent for parent in is_parent]]
        for number, stage in enumerate(self.stages, 1):
            if number == len(self.stages) and parents:
                candidates = Population.merge(Population.create(*parents), candidates)
            candidates = self._ranked(problem, candidates, stage, max(stage.survivors, n_survive))
        return candidates[:n_survive]

    def _ranked(self, problem, candidates, stage, keep: int):
        """The best ``keep`` of ``candidates`` on ``stage``'s score, best first, each holding it."""
        if not len(candidates):
            return candidates
        X = np.array([ind.X for ind in candidates])
        scores = np.array(problem.stage_scores(X, stage) if hasattr(problem, "stage_scores")
                          else [problem.stage_score(x, stage) for x in X])
        order = np.argsort(scores, kind="stable")[:keep]
        candidates = candidates[order]
        for ind, score in zip(candidates, scores[order]):
            ind.data[self.score_name] = float(score)
        return candidates


def level_algorithm(problem, pop_size: int = 1, n_offsprings: int = 16, survival: Survival | None = None):
    """pymoo's GA (NSGA-II for a size range) with the level operators above and, given one,
    a staged ``survival`` (one size target only)."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.operators.selection.rnd import RandomSelection

    operators = dict(sampling=BudgetSampling(), crossover=CopyParent(), mutation=LevelSwitchMutation(),
                     selection=RandomSelection(), eliminate_duplicates=True, n_offsprings=n_offsprings)
    if problem.multi_objective:
        if survival is not None:
            raise ValueError("staged selection needs one size target (one objective)")
        return NSGA2(pop_size=pop_size, **operators)
    if survival is not None:
        operators["survival"] = survival
    return GA(pop_size=pop_size, **operators)
