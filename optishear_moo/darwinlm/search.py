"""DarwinLM structured pruning in one call (API and CLI): build the level database, run the
pymoo search (one-shot or training-aware selection, checkpointed), and report the chosen
allocation. The model comes back dense; ``apply_levels_`` slices it to the choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..search import front_arrays, run_search
from .database import LevelDatabase
from .problem import (
    SelectionStage,
    StructuredPruningProblem,
    darwinlm_algorithm,
)


def halving_stages(finetune_tokens, pop_size: int = 1) -> list[SelectionStage]:
    """Training-aware stages on growing token budgets whose survivors halve down to
    ``pop_size``: ``[1024, 2048, 4096]`` with one parent gives 4, 2, 1 survivors."""
    tokens = [int(t) for t in finetune_tokens]
    if not tokens or any(t <= 0 for t in tokens):
        raise ValueError(f"finetune tokens per stage must be positive integers, got {finetune_tokens}")
    if tokens != sorted(tokens):
        raise ValueError(f"finetune tokens must grow from stage to stage, got {tokens}")
    return [SelectionStage(t, pop_size * 2 ** (len(tokens) - 1 - k)) for k, t in enumerate(tokens)]


@dataclass
class StructuredChoice:
    """The chosen levels (``(n_blocks, 2)``: attention, mlp) and how they score.

    ``front`` (compression range only): every Pareto point, most compressed first.
    """

    levels: list[list[int]]
    compression: float
    calibration_kl: float
    n_evaluations: int
    finetuned_kl: float | None = None
    front: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def search_structured(model, calibration, target_compression, training=None, stages=None,
                      pop_size: int = 1, n_offsprings: int = 16, n_gen: int = 10, seed: int = 0,
                      mlp_levels: int | None = None, batch_size: int = 8,
                      learning_rate: float = 1e-4, database: LevelDatabase | None = None,
                      checkpoint_dir: str | Path | None = None, config: dict | None = None,
                      resume: bool = False, trust: bool = False, verbose: bool = False, workers=None,
                      ray_address: str | None = None) -> StructuredChoice:
    """DarwinLM search over ``model`` (left dense afterwards).

    ``target_compression``: one ratio (dense / kept block weights), or ``(low, high)`` for a
    size-vs-quality front (NSGA-II; the most compressed point is chosen). ``stages`` (one
    target only): training-aware selection, e.g. :func:`halving_stages`; candidates are
    fine-tuned on ``training`` windows (default: the calibration windows).
    """
    problem = StructuredPruningProblem(model, calibration, target_compression, database, training,
                                       mlp_levels, batch_size, learning_rate, progress=verbose,
                                       workers=workers, ray_address=ray_address)
    algorithm = darwinlm_algorithm(problem, pop_size, n_offsprings, stages)
    try:
        result = run_search(problem, algorithm, ("n_gen", n_gen), seed=seed,
                            checkpoint_dir=checkpoint_dir, config=config, resume=resume, trust=trust,
                            verbose=verbose)
        X, F = front_arrays(result)
        n_eval = int(result.algorithm.evaluator.n_eval)
        if problem.multi_objective:
            order = np.argsort(F[:, 1], kind="stable")
            front = [{"levels": problem.levels(X[k]).tolist(), "compression": 1 / F[k, 1],
                      "calibration_kl": float(F[k, 0])} for k in order]
            best = front[0]
            return StructuredChoice(best["levels"], best["compression"], best["calibration_kl"],
                                    n_eval, front=front)
        if stages:  # the survival ranked the population by the score after fine-tuning
            best = result.algorithm.pop[0]
            x, kl, finetuned = best.X, float(best.F[0]), best.data.get("finetuned_kl")
        else:
            x, kl, finetuned = X[0], float(F[0, 0]), None
        return StructuredChoice(problem.levels(x).tolist(), 1 / problem.kept_share(x), kl, n_eval,
                                finetuned)
    finally:
        problem.restore_dense()
