"""DarwinLM's whole pipeline in one function: :func:`search_darwinlm` builds the structured level
database, runs the level search (one-shot or training-aware selection, checkpointed), and returns
a :class:`DarwinLMResult` whose ``apply`` slices a model to the levels found."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..data.config import CalibrationSet
from ..search import SearchResult, SearchRun, front_arrays, run_search, unique_points
from .config import DarwinLMConfig
from .database import StructuredLevelDatabase
from .fitness import check_scoring, refuse_finetunes_when_streamed
from .problem import StructuredPruningProblem, darwinlm_algorithm
from .slicing import apply_levels_


@dataclass
class DarwinLMResult(SearchResult):
    """The chosen levels and how they score.

    Attributes:
        levels: ``(n_blocks, 2)`` levels (attention, mlp).
        compression: Block-weight compression they give (dense / kept).
        calibration_kl: One-shot KL to the dense model on the calibration windows.
        n_evaluations: Candidates evaluated.
        finetuned_kl: KL after the last stage's fine-tune (training-aware selection).
        front: Every Pareto point, most compressed first (``levels``, ``compression``,
            ``kept_share``, ``kl``); the chosen point alone with one target.
        seconds: Wall time of the whole pipeline.
        database: The structured level database (not serialised).
        scored_tokens: Calibration tokens the search pushed through candidates to score them
            (one-shot scores and stage scores; in this process, not on Ray workers).
        finetune_tokens: Tokens the stage fine-tunes of training-aware selection trained on.
    """

    structural = True
    size_name = "kept_share"
    title = "DarwinLM structured pruning"

    levels: list[list[int]]
    compression: float
    calibration_kl: float
    n_evaluations: int
    finetuned_kl: float | None = None
    front: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    database: StructuredLevelDatabase | None = field(default=None, repr=False)
    scored_tokens: int = 0
    finetune_tokens: int = 0

    def chosen_point(self) -> dict:
        return {"levels": self.levels, "compression": self.compression, "kept_share": 1 / self.compression,
                "kl": self.calibration_kl}

    def apply(self, model: nn.Module, point=None) -> nn.Module:
        """Slice ``model``'s blocks **in place** to the chosen levels (or ``point``'s): physically
        smaller, saves and reloads with ``load_model``; returns the model."""
        if self.database is None:
            raise ValueError("this result holds no level database to slice the model with")
        return apply_levels_(model, self.database, self.point(point)["levels"])

    def description(self, point=None) -> dict:
        point = self.point(point)
        return {"method": "darwinlm", "compression": point["compression"], "levels": point["levels"]}

    def report(self) -> dict:
        return {"levels": self.levels, "compression": self.compression, "calibration_kl": self.calibration_kl,
                "n_evaluations": self.n_evaluations, "finetuned_kl": self.finetuned_kl, "front": self.front,
                "search_seconds": self.seconds, "scored_tokens": self.scored_tokens,
                "finetune_tokens": self.finetune_tokens}


def search_darwinlm(model: nn.Module, calibration, config: DarwinLMConfig | None = None,
                    run: SearchRun | None = None) -> DarwinLMResult:
    """DarwinLM: levels of every attention head group and MLP channel block of ``model``.

    The pipeline: the structured level database (greedy structured OBS removal with least-squares
    re-fit, from the pruning windows); a (1+λ) level search from the most uniform allocation with
    budget-keeping level switches; with training-aware selection each stage fine-tunes the
    offspring still in the race on the training windows before scoring them (survivors halve as
    the fine-tunes grow). The model is left dense; ``result.apply(model)`` slices it.

    One-shot scores come from one walk over the blocks per generation (``config.scoring``
    ``auto``), so a model loaded with ``offload`` is read one block at a time:
    with ``offload="disk"``, one-shot selection runs within the memory of a block, and the level
    database keeps only the re-fitted output projections.

    Args:
        model: The dense model (Llama-family attention and gated MLP).
        calibration: A :class:`~optishear_moo.data.CalibrationSet` (search windows score
            candidates, pruning windows build the database, training windows feed the stage
            fine-tunes), or one ``(n_samples, seq_len)`` tensor for every role.
        config: The search's settings (:class:`DarwinLMConfig`; default: its defaults).
        run: Checkpoint directory, resume, seed, workers, progress (:class:`SearchRun`).
    """
    config = config or DarwinLMConfig()
    run = run or SearchRun()
    calibration = CalibrationSet.of(calibration)
    config.check_model(model.config)
    check_scoring(config.scoring, model)
    if config.selection == "training-aware":
        refuse_finetunes_when_streamed(model)
    started = time.perf_counter()
    database = StructuredLevelDatabase.build(model, calibration.pruning, config.mlp_levels,
                                             batch_size=config.batch_size, directory=config.database_dir,
                                             progress=run.progress)
    stages = config.stages()
    problem = StructuredPruningProblem(model, calibration.search, config.target_compression, database,
                                       calibration.training, batch_size=config.batch_size,
                                       finetune_learning_rate=config.learning_rate, progress=run.progress,
                                       scoring=config.scoring, workers=run.workers,
                                       ray_address=run.ray_address)
    algorithm = darwinlm_algorithm(problem, config.pop_size, config.n_offsprings, stages)
    try:
        result = run_search(problem, algorithm, ("n_gen", config.n_gen), run, settings=config.to_dict(),
                            driver="darwinlm")
        X, F = front_arrays(result)
        n_eval = int(result.algorithm.evaluator.n_eval)
        spent = {"scored_tokens": problem.evaluator.scored_tokens,
                 "finetune_tokens": problem.evaluator.finetune_tokens}
        if problem.multi_objective:
            order = np.argsort(F[:, 1], kind="stable")
            front = unique_points([{"levels": problem.levels(X[k]).tolist(), "compression": 1 / F[k, 1],
                                    "kept_share": float(F[k, 1]), "kl": float(F[k, 0])} for k in order],
                                  "levels")
            best = front[0]
            return DarwinLMResult(best["levels"], best["compression"], best["kl"], n_eval, front=front,
                                  seconds=time.perf_counter() - started, database=database, **spent)
        if stages:  # the survival ranked the population by the score after fine-tuning
            best = result.algorithm.pop[0]
            x, kl, finetuned = best.X, float(best.F[0]), best.data.get("finetuned_kl")
        else:
            x, kl, finetuned = X[0], float(F[0, 0]), None
        levels, compression = problem.levels(x).tolist(), 1 / problem.kept_share(x)
        point = {"levels": levels, "compression": compression, "kept_share": 1 / compression, "kl": kl}
        return DarwinLMResult(levels, compression, kl, n_eval, finetuned, [point],
                              time.perf_counter() - started, database, **spent)
    finally:
        problem.restore_dense()
