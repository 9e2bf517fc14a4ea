"""EvoP's whole pipeline in one function: :func:`search_evop` chooses which decoder blocks to
remove – with the evolutionary search (warm-started with the cheap heuristics, checkpointed) or
one of the heuristic baselines – and returns an :class:`EvoPResult`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from torch import nn

from ..data.config import CalibrationSet
from ..search import SearchResult, SearchRun, budget, front_arrays, run_search, unique_points
from ..search.levels import check_stages, halving_stages
from .blocks import check_n_remove, last_blocks, least_influential, remove_blocks_
from .config import EvoPConfig
from .fitness import BlockRemovalEvaluator, greedy_removal_order
from .problem import BlockRemovalProblem, PassBudget, block_removal_algorithm


@dataclass
class EvoPResult(SearchResult):
    """The blocks to remove and how they score on the calibration windows.

    Attributes:
        method: The method that chose them.
        removed_blocks: Indices of the blocks to remove.
        scores: ``kl`` and ``ppl`` of the model without them, on the calibration windows.
        n_evaluations: Passes over the calibration windows spent choosing: each candidate
            evaluated (SLEB's greedy steps, the search's, and those of the heuristics it started
            from) and ShortGPT's block-influence pass count one, a candidate scored on a share of
            the windows (``n_stages``) that share, the total rounded up; the dense pass all share
            does not.
        front: Every Pareto point, best quality first (``removed_blocks``, ``kl``, ``ppl``,
            ``blocks_kept``); the chosen point alone with one count.
        n_blocks: Blocks of the dense model.
        seconds: Wall time.
    """

    structural = True
    size_name = "blocks_kept"
    title = "EvoP block removal"

    method: str
    removed_blocks: list[int]
    scores: dict[str, float]
    n_evaluations: int = 0
    front: list[dict] = field(default_factory=list)
    n_blocks: int = 0
    seconds: float = 0.0
    objective: str = "kl"

    @property
    def quality_name(self) -> str:
        return self.objective

    def chosen_point(self) -> dict:
        return {"removed_blocks": self.removed_blocks, **self.scores,
                "blocks_kept": self.n_blocks - len(self.removed_blocks)}

    def density_of(self, point: dict) -> float:
        return point["blocks_kept"] / self.n_blocks

    def apply(self, model: nn.Module, point=None) -> nn.Module:
        """Remove the chosen blocks (or ``point``'s) from ``model`` **in place**; returns it."""
        return remove_blocks_(model, self.point(point)["removed_blocks"])

    def description(self, point=None) -> dict:
        return {"method": self.method, "removed_blocks": self.point(point)["removed_blocks"]}

    def report(self) -> dict:
        return {"method": self.method, "removed_blocks": self.removed_blocks, "scores": self.scores,
                "n_evaluations": self.n_evaluations, "front": self.front, "n_blocks": self.n_blocks,
                "search_seconds": self.seconds}


def search_evop(model: nn.Module, calibration, config: EvoPConfig | None = None,
                run: SearchRun | None = None) -> EvoPResult:
    """EvoP: which decoder blocks of ``model`` to remove (the model is not modified).

    The pipeline: the dense hidden states of every block are cached once
    (:class:`BlockRemovalEvaluator`); ``evop`` runs a GA (NSGA-II for a count range) with
    count-preserving operators whose first population holds the ``config.warm_start``
    heuristics' choices (ShortGPT's and the last blocks' by default; SLEB's greedy ones on
    request), so that, elitist, it never ends worse on its objective than they do; the heuristics
    choose directly.

    Args:
        model: The dense model.
        calibration: A :class:`~optishear_moo.data.CalibrationSet` (its search windows score
            candidates) or one ``(n_samples, seq_len)`` tensor.
        config: The search's settings (:class:`EvoPConfig`; default: its defaults).
        run: Checkpoint directory, resume, seed, workers, progress (:class:`SearchRun`).
    """
    config = config or EvoPConfig()
    run = run or SearchRun()
    windows = CalibrationSet.of(calibration).search
    config.check_model(model.config)
    started = time.perf_counter()
    evaluator = BlockRemovalEvaluator(model, windows, config.batch_size, progress=run.progress)
    n_blocks = evaluator.n_blocks
    if config.method != "evop":
        removed = _heuristic_choices(config.method, evaluator, [config.n_remove], run.progress)[0]
        check_n_remove(len(removed), n_blocks)
        spent = evaluator.n_evaluations
        scores = evaluator.evaluate(removed)
        point = {"removed_blocks": removed, **scores, "blocks_kept": n_blocks - len(removed)}
        return EvoPResult(config.method, removed, scores, spent, [point], n_blocks,
                          time.perf_counter() - started, config.objective)
    stages = None
    if config.n_stages > 1:
        stages = check_stages(halving_stages(1, config.n_stages, n_samples=evaluator.n_windows), 1)
    fidelity = 1.0 if stages is None else stages[0].fidelity(evaluator.n_windows)
    problem = BlockRemovalProblem(model, windows, config.n_remove, config.objective, evaluator=evaluator,
                                  workers=run.workers, ray_address=run.ray_address, fidelity=fidelity)
    low, high = problem.n_remove_range
    counts = sorted({low, high})
    initial = [removed for method in config.warm_start
               for removed in _heuristic_choices(method, evaluator, counts, run.progress)]
    warm_evaluations = evaluator.n_evaluations
    algorithm = block_removal_algorithm(problem, config.pop_size, initial=initial, seed=run.seed,
                                        kind=config.algorithm, stages=stages)
    termination = budget(config.n_gen, config.n_evals)
    if stages is not None and config.n_evals:
        termination = PassBudget(config.n_evals)
    result = run_search(problem, algorithm, termination, run, settings=config.to_dict(), driver="evop")
    if stages is None:
        X, _ = front_arrays(result)
        spent = int(result.algorithm.evaluator.n_eval)
    else:  # ranked by the last stage (all windows); F holds the first stage's scores
        X = result.algorithm.pop[:1].get("X")
        spent = math.ceil(problem.n_passes - 1e-9)
    scored = ({"removed_blocks": problem.decode(x), **problem.scores([x])[0]} for x in X)
    front = unique_points(sorted(scored, key=lambda point: point[config.objective]), "removed_blocks")
    for point in front:
        point["blocks_kept"] = n_blocks - len(point["removed_blocks"])
    largest = max(front, key=lambda point: len(point["removed_blocks"]))
    chosen = largest if problem.multi_objective else front[0]
    scores = {name: chosen[name] for name in ("kl", "ppl")}
    return EvoPResult("evop", chosen["removed_blocks"], scores, warm_evaluations + spent,
                      front if problem.multi_objective else [chosen], n_blocks, time.perf_counter() - started,
                      config.objective)


def _heuristic_choices(method: str, evaluator: BlockRemovalEvaluator, counts: list[int],
                       progress: bool = False) -> list[list[int]]:
    """The blocks ``method`` (``shortgpt``, ``last`` or ``sleb``) removes at each count; SLEB's
    greedy order is walked once, to the largest count."""
    if method == "shortgpt":
        influence = evaluator.block_influence()
        return [least_influential(influence, n) for n in counts]
    if method == "last":
        return [last_blocks(evaluator.n_blocks, n) for n in counts]
    order = greedy_removal_order(evaluator, max(counts), "ppl", progress=progress)
    return [sorted(order[:n]) for n in counts]
