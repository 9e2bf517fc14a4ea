"""EvoP's block-removal search (EPPS) as a pymoo problem, with count-preserving operators.

Decision vector: one bool per decoder block, ``True`` = remove it. With ``n_remove=k`` exactly
``k`` blocks are removed and the one objective is the calibration ``kl`` (or ``ppl``); with
``n_remove=(lo, hi)`` the count may vary in that range and a second objective, the number of
blocks kept, gives a size-vs-quality Pareto front in one run.

The operators below keep the count in range by construction; :class:`BlockCountRepair` makes
any other binary operator (pymoo's bit-flip mutation, uniform crossover...) safe too.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.core.termination import Termination
from pymoo.core.variable import Binary
from pymoo.operators.selection.rnd import RandomSelection

from ..errors import SettingError, param
from ..search.levels import CopyParent, StagedSurvival
from ..search.problem import ModelProblem, problem_fingerprint
from .blocks import check_n_remove
from .fitness import BlockRemovalEvaluator, check_block_objective

INFEASIBLE = 1e10
"""Objective value of a candidate whose block count is outside ``n_remove`` (never evaluated)."""


class BlockRemovalProblem(ModelProblem):
    """Which decoder blocks to remove, scored on calibration data without modifying ``model``.

    Two inequality constraints keep the number of removed blocks in ``n_remove`` for algorithms
    that do not use the count-preserving operators below (a candidate outside the range is not
    evaluated: its objective is :data:`INFEASIBLE`). Candidates may be bool vectors or dicts of
    pymoo ``Binary`` variables ``block_i``.

    Args:
        model: The dense model (never modified).
        calibration: ``(n_samples, seq_len)`` token ids.
        n_remove: Blocks to remove (one objective), or ``(low, high)`` (a second objective, the
            blocks kept, gives the size-vs-quality front).
        objective: ``kl`` (mean KL to the dense model per token) or ``ppl`` (calibration
            perplexity, as in EvoP).
        batch_size: Calibration windows per forward pass.
        fidelity: Share of the calibration windows (the first ones) the objective ``F`` is
            scored on: a staged selection's first stage; later stages score more
            (:meth:`local_stage_scores`).
        evaluator: A prebuilt :class:`BlockRemovalEvaluator`, to share its dense reference.
        progress: Show progress while the dense reference is computed.
        workers: Evaluate on this many Ray workers, or on a ``RayPool``.
        ray_address: The Ray cluster to join.
        **problem_kwargs: Passed to ``pymoo.core.problem.Problem``.
    """

    score_cache_size = 65536
    """Scores kept for re-scoring before the cache is emptied."""

    def __init__(self, model, calibration, n_remove: int | tuple[int, int], objective: str = "kl",
                 batch_size: int = 8, evaluator: BlockRemovalEvaluator | None = None,
                 progress: bool = False, workers=None, ray_address: str | None = None, fidelity: float = 1.0,
                 **problem_kwargs):
        replica = dict(model=model, calibration=calibration, n_remove=n_remove, objective=objective,
                       batch_size=batch_size, fidelity=fidelity, **problem_kwargs)
        self.objective = check_block_objective(objective)
        if isinstance(fidelity, bool) or not isinstance(fidelity, (int, float)) or not 0 < fidelity <= 1:
            raise SettingError(f"{param('fidelity')} is a share of the calibration windows in (0, 1], got "
                               f"{fidelity!r}")
        self.fidelity = float(fidelity)
        self._scores: dict[tuple, dict] = {}  # (mask, windows) -> scores: re-scoring a candidate is free
        self._scored: set[tuple] = set()  # (mask, windows) counted in n_passes, replayed ones too
        self.n_passes = 0.0
        self.evaluator = evaluator or BlockRemovalEvaluator(model, calibration, batch_size,
                                                            progress=progress)
        self.model = model
        n_blocks = self.evaluator.n_blocks
        if isinstance(n_remove, (tuple, list)):
            low, high = (check_n_remove(n, n_blocks) for n in n_remove)
            if low >= high:
                raise SettingError(f"an {param('n_remove')} range (low, high) needs low < high, got "
                                   f"{tuple(n_remove)}")
        else:
            low = high = check_n_remove(n_remove, n_blocks)
        self.n_remove_range = (low, high)
        self.multi_objective = isinstance(n_remove, (tuple, list))
        self.objectives = (objective, "blocks_kept") if self.multi_objective else (objective,)
        fingerprint = problem_fingerprint(type(self).__name__, model, calibration, self.n_remove_range,
                                          self.objectives, batch_size,
                                          *(() if self.fidelity == 1 else (self.fidelity,)))
        super().__init__(n_var=n_blocks, n_obj=len(self.objectives), n_ieq_constr=2, xl=0, xu=1, vtype=bool,
                         vars={f"block_{i}": Binary() for i in range(n_blocks)}, replica=replica,
                         fingerprint=fingerprint, workers=workers, ray_address=ray_address,
                         exclude_from_serialization=["model", "evaluator"], **problem_kwargs)

    def decode(self, x) -> list[int]:
        """Indices of the blocks that ``x`` (a bool vector, a real vector read as ``x >= 0.5``, or a
        dict of variables) removes."""
        return np.flatnonzero(_removal_mask(self.as_vector(x))).tolist()

    def describe(self, x) -> dict:
        removed = self.decode(x)
        return {"removed_blocks": removed, "blocks_kept": self.n_var - len(removed)}

    def encode(self, removed) -> np.ndarray:
        x = np.zeros(self.n_var, dtype=bool)
        x[list(removed)] = True
        return x

    def evaluation_groups(self, X) -> list:
        """Lexicographic neighbours go to one worker, where they share prefixes in one walk."""
        order = sorted(range(len(X)), key=lambda r: tuple(_removal_mask(X[r])))
        size = len(self.pool.groups(len(X))[0])
        return [order[start:start + size] for start in range(0, len(order), size)]

    def _feasible(self, X) -> list[int]:
        counts = X.sum(axis=1)
        low, high = self.n_remove_range
        return [row for row in range(len(X)) if low <= counts[row] <= high]  # the others are infeasible

    def _windows(self, fidelity: float) -> int:
        return self.evaluator.reference.n_samples(fidelity)

    def _count_passes(self, X, fidelity: float) -> None:
        """Add to :attr:`n_passes` the feasible candidates of ``X`` not scored on these windows
        before (a replayed search counts what the live one did)."""
        X = _removal_mask(X)
        windows = self._windows(fidelity)
        for row in self._feasible(X):
            key = (X[row].tobytes(), windows)
            if key not in self._scored:
                self._scored.add(key)
                self.n_passes += windows / self.evaluator.n_windows

    def _evaluate(self, X, out, *args, **kwargs):
        self._count_passes(self.as_vectors(X), self.fidelity)
        super()._evaluate(X, out, *args, **kwargs)

    def stage_scores(self, X, stage) -> list[float]:
        self._count_passes(self.as_vectors(X), stage.fidelity(self.evaluator.n_windows))
        return super().stage_scores(X, stage)

    def scores(self, X, fidelity: float = 1.0) -> list[dict[str, float]]:
        """``kl`` and ``ppl`` of every candidate of ``X`` (each in the problem's count range) on the
        first ``fidelity`` share of the calibration windows; those not scored there before are
        scored together, in one walk."""
        self._check_attached()
        X = _removal_mask(self.as_vectors(X))
        windows = self._windows(fidelity)
        if len(self._scores) > self.score_cache_size:  # before the lookup: every key asked for is then held
            self._scores.clear()
        keys = [(row.tobytes(), windows) for row in X]
        missing = {key: row for key, row in zip(keys, X) if key not in self._scores}
        if missing:
            values = self.evaluator.evaluate_many([self.decode(row) for row in missing.values()],
                                                  self.block_done, fidelity)
            self._scores.update(zip(missing, values))
        return [self._scores[key] for key in keys]

    def local_stage_scores(self, X, stage) -> list[float]:
        """The objective on the first ``stage.eval_samples`` calibration windows (all when None)."""
        X = _removal_mask(self.as_vectors(X))
        values = np.full(len(X), INFEASIBLE)
        rows = self._feasible(X)
        scores = self.scores(X[rows], stage.fidelity(self.evaluator.n_windows)) if rows else []
        for row, candidate in zip(rows, scores):
            values[row] = candidate[self.objective]
        for _ in X:
            self.candidate_done()
        return values.tolist()

    def _evaluate_vectors(self, X, out, *args, **kwargs):
        X = _removal_mask(X)
        F = np.full((len(X), self.n_obj), INFEASIBLE)
        counts = X.sum(axis=1)
        low, high = self.n_remove_range
        rows = self._feasible(X)
        scores = self.scores(X[rows], self.fidelity) if rows else []
        for row, values in zip(rows, scores):
            F[row, 0] = values[self.objective]
        for _ in X:
            self.candidate_done()
        if self.multi_objective:
            F[:, 1] = self.n_var - counts
        out["F"] = F
        out["G"] = np.column_stack([low - counts, counts - high]).astype(float)


def _removal_mask(X) -> np.ndarray:
    """Bool decisions; real-valued algorithms (DE, CMA-ES, PSO...) give reals in [0, 1]."""
    X = np.asarray(X)
    return X if X.dtype == bool else X >= 0.5


def _count_range(problem) -> tuple[int, int]:
    return getattr(problem, "n_remove_range", (0, problem.n_var - 1))


class BlockRemovalSampling(Sampling):
    """Random removal sets whose size is uniform in the problem's ``n_remove_range``."""

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        low, high = _count_range(problem)
        X = np.zeros((n_samples, problem.n_var), dtype=bool)
        for row in X:
            count = random_state.integers(low, high + 1)
            row[random_state.choice(problem.n_var, count, replace=False)] = True
        return X


class CountPreservingCrossover(Crossover):
    """Two parents, two children: each child keeps the blocks both parents remove and fills up
    to its own parent's count from the blocks only one of them removes."""

    def __init__(self, **kwargs):
        super().__init__(n_parents=2, n_offsprings=2, **kwargs)

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        _, n_matings, n_var = X.shape
        children = np.zeros((2, n_matings, n_var), dtype=bool)
        for k in range(n_matings):
            a, b = X[0, k].astype(bool), X[1, k].astype(bool)
            both, either = a & b, np.flatnonzero(a ^ b)
            for child, parent in enumerate((a, b)):
                extra = random_state.choice(either, parent.sum() - both.sum(), replace=False)
                children[child, k] = both
                children[child, k, extra] = True
        return children


class BlockSwapMutation(Mutation):
    """Swap ``n_swaps`` removed blocks with kept ones (count unchanged); with ``max_swaps``, the
    smaller of two draws from 1..``max_swaps`` per candidate instead (mostly one, sometimes more,
    as EvoPress's mutation). With probability ``shift_prob`` a swap is a shift: a removed block
    gives its place to a kept neighbour (the blocks worth removing tend to sit together, so a run
    of them slides). When the problem allows a range of counts, with probability ``resize_prob``
    add or drop one block instead."""

    def __init__(self, n_swaps: int = 1, resize_prob: float = 0.3, max_swaps: int | None = None,
                 shift_prob: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n_swaps, self.resize_prob, self.max_swaps = n_swaps, resize_prob, max_swaps
        self.shift_prob = shift_prob

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        low, high = _count_range(problem)
        X = np.asarray(X, dtype=bool).copy()
        for row in X:
            count = int(row.sum())
            if low < high and random_state.random() < self.resize_prob:
                grow = count == low or (count < high and random_state.random() < 0.5)
                pool = np.flatnonzero(~row if grow else row)
                row[random_state.choice(pool)] = grow
                continue
            swaps = self.n_swaps
            if self.max_swaps:
                swaps = int(random_state.integers(1, self.max_swaps + 1, size=2).min())
            for _ in range(swaps):
                removed, kept = np.flatnonzero(row), np.flatnonzero(~row)
                if not (len(removed) and len(kept)):
                    continue
                if self.shift_prob and random_state.random() < self.shift_prob:
                    moves = [(block, block + step) for block in removed for step in (-1, 1)
                             if 0 <= block + step < len(row) and not row[block + step]]
                    if moves:
                        block, neighbour = moves[random_state.integers(len(moves))]
                        row[block], row[neighbour] = False, True
                        continue
                row[random_state.choice(removed)] = False
                row[random_state.choice(kept)] = True
        return X


class BlockCountRepair(Repair):
    """Brings every removal count into the problem's ``n_remove_range`` by removing or restoring
    random blocks, so any binary operator can be used."""

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        low, high = _count_range(problem)
        rng = random_state if random_state is not None else np.random.default_rng(0)
        X = np.asarray(X, dtype=bool).copy()
        for row in X:
            count = int(row.sum())
            if count > high:
                row[rng.choice(np.flatnonzero(row), count - high, replace=False)] = False
            elif count < low:
                row[rng.choice(np.flatnonzero(~row), low - count, replace=False)] = True
        return X


BLOCK_ALGORITHMS = ("ga", "1+lambda")


def check_block_algorithm(kind: str) -> str:
    if kind not in BLOCK_ALGORITHMS:
        raise SettingError(f"{param('algorithm')} {kind!r} is not a block-removal search: choose "
                           f"{' or '.join(BLOCK_ALGORITHMS)}")
    return kind


class PassBudget(Termination):
    """Stop after the generation in which the problem's passes over the calibration windows
    (:attr:`BlockRemovalProblem.n_passes`: a candidate scored on a share of the windows counts
    that share) reach ``passes``: a staged search's budget in the units a full evaluation spends."""

    def __init__(self, passes: float):
        super().__init__()
        self.passes = passes

    def _update(self, algorithm) -> float:
        return algorithm.problem.n_passes / self.passes


def block_removal_algorithm(problem: BlockRemovalProblem, pop_size: int = 16, n_swaps: int = 1,
                            initial=None, seed: int = 0, kind: str = "ga", stages=None):
    """GA (one objective) or NSGA-II (count range) with the count-preserving operators above; or,
    with ``kind="1+lambda"`` and one objective, EvoPress's (1 + λ) search: the best candidate so
    far is the only parent, ``pop_size`` offspring per generation, each by a few block swaps
    (mostly one), no crossover.

    ``initial``: removal sets (lists of block indices, e.g. the heuristics' choices) placed in
    the first population; random ones (seeded by ``seed``) fill the rest (for ``1+lambda``: one,
    when there is no ``initial``).

    ``stages`` (``1+lambda`` only; :func:`~optishear_moo.search.levels.halving_stages`):
    EvoPress's multi-fidelity selection. The offspring, scored on ``problem.fidelity`` of the
    windows, go through the stages, survivors halving while the windows scored grow; the parent
    meets the last stage's survivors on the last stage's windows (all of them: elitist there).
    The best candidate is then ``result.algorithm.pop[0]``, not ``result.opt`` (ranked by ``F``).
    """
    local = check_block_algorithm(kind) == "1+lambda" and not problem.multi_objective
    if stages is not None and not local:
        raise SettingError(f"staged selection needs {param('algorithm')} 1+lambda and one "
                           f"{param('n_remove')}")
    sampling = BlockRemovalSampling()
    filled = 0 if local and initial else 1 if local else pop_size
    if initial:
        warm = np.array([problem.encode(removed) for removed in initial], dtype=bool)
        rest = sampling(problem, max(filled - len(warm), 0), random_state=np.random.default_rng(seed))
        sampling = np.vstack([warm, rest.get("X")]) if len(rest) else warm
    if local:
        staged = {"survival": StagedSurvival(stages, problem.objective, elitist=True)} if stages else {}
        return GA(pop_size=1, n_offsprings=pop_size, sampling=sampling, selection=RandomSelection(),
                  crossover=CopyParent(), mutation=BlockSwapMutation(n_swaps, max_swaps=3, shift_prob=0.5),
                  repair=BlockCountRepair(), eliminate_duplicates=True, **staged)
    operators = dict(sampling=sampling, crossover=CountPreservingCrossover(),
                     mutation=BlockSwapMutation(n_swaps), repair=BlockCountRepair(),
                     eliminate_duplicates=True)
    if problem.multi_objective:
        return NSGA2(pop_size=pop_size, **operators)
    return GA(pop_size=pop_size, **operators)
