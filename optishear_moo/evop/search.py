"""Choosing which blocks to remove, by any of the library's methods (one call for API and CLI).

``evop`` runs the pymoo search of :mod:`.problem` (checkpointed like every
search, warm-started with the cheap heuristics); ``shortgpt``, ``sleb`` and ``last`` are the
heuristic baselines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..search import front_arrays, run_search
from .blocks import check_n_remove, last_blocks, least_influential
from .fitness import BlockRemovalEvaluator, greedy_removal_order
from .problem import BlockRemovalProblem, block_removal_algorithm

BLOCK_METHODS = ("evop", "shortgpt", "sleb", "last")


@dataclass
class BlockChoice:
    """The blocks to remove and how they score on calibration data (``kl``, ``ppl``).

    ``front`` (multi-objective EvoP only): one entry per Pareto point, best quality first.
    """

    method: str
    removed_blocks: list[int]
    scores: dict[str, float]
    n_evaluations: int = 0
    front: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_blocks(model, calibration, n_remove: int | tuple[int, int], method: str = "evop",
                  objective: str = "kl", pop_size: int = 16, n_gen: int = 10, seed: int = 0,
                  batch_size: int = 8, evaluator: BlockRemovalEvaluator | None = None,
                  checkpoint_dir: str | Path | None = None, config: dict | None = None,
                  resume: bool = False, trust: bool = False, verbose: bool = False, workers=None,
                  ray_address: str | None = None) -> BlockChoice:
    """Which blocks of ``model`` to remove (the model is not modified; see ``remove_blocks_``).

    ``n_remove=(low, high)`` (``evop`` only) searches the size too: ``front`` holds the whole
    size-vs-quality front and ``removed_blocks`` its largest removal (pick another from ``front``).
    With ``checkpoint_dir`` the EvoP search is saved after every generation and ``resume=True``
    continues it (``trust=True`` accepts a checkpoint this user did not write).
    """
    if method not in BLOCK_METHODS:
        raise ValueError(f"unknown block-removal method {method!r}: "
                         f"choose one of {', '.join(BLOCK_METHODS)}")
    if isinstance(n_remove, (tuple, list)) and method != "evop":
        raise ValueError("a range of block counts needs method evop (the heuristics remove a fixed count)")
    evaluator = evaluator or BlockRemovalEvaluator(model, calibration, batch_size, progress=verbose)
    n_blocks = evaluator.n_blocks
    if method == "shortgpt":
        removed = least_influential(evaluator.block_influence(), n_remove)
    elif method == "last":
        removed = last_blocks(n_blocks, n_remove)
    elif method == "sleb":
        removed = sorted(greedy_removal_order(evaluator, n_remove, objective="ppl", progress=verbose))
    else:
        return _evop(model, calibration, n_remove, objective, pop_size, n_gen, seed, evaluator,
                     checkpoint_dir, config, resume, trust, verbose, workers, ray_address)
    check_n_remove(len(removed), n_blocks)
    return BlockChoice(method, removed, evaluator.evaluate(removed))


def _evop(model, calibration, n_remove, objective, pop_size, n_gen, seed, evaluator,
          checkpoint_dir, config, resume, trust, verbose, workers, ray_address) -> BlockChoice:
    problem = BlockRemovalProblem(model, calibration, n_remove, objective, evaluator=evaluator,
                                  workers=workers, ray_address=ray_address)
    low, high = problem.n_remove_range
    influence = evaluator.block_influence()
    initial = [last_blocks(problem.n_var, n) for n in {low, high}]
    initial += [least_influential(influence, n) for n in {low, high}]  # ShortGPT's choices
    algorithm = block_removal_algorithm(problem, pop_size, initial=initial, seed=seed)
    result = run_search(problem, algorithm, ("n_gen", n_gen), seed=seed,
                        checkpoint_dir=checkpoint_dir, config=config, resume=resume, trust=trust,
                        verbose=verbose)
    X, F = front_arrays(result)
    front = sorted(({"removed_blocks": problem.decode(x), **evaluator.evaluate(problem.decode(x))}
                    for x in X), key=lambda point: point[objective])
    chosen = max(front, key=lambda point: len(point["removed_blocks"])) if problem.multi_objective \
        else front[0]
    scores = {name: chosen[name] for name in ("kl", "ppl")}
    return BlockChoice("evop", chosen["removed_blocks"], scores,
                       int(result.algorithm.evaluator.n_eval), front if problem.multi_objective else [])
