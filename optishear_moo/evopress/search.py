"""EvoPress's whole pipeline in one function: :func:`search_evopress` chooses the database's
pruning method, builds the level database, runs the level search with multi-fidelity selection
(checkpointed), and chooses how the final model gets its weights on held-out windows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..activations import sequential_blocks
from ..data.config import CalibrationSet
from ..evaluation.divergence import DenseOutputs, kl_to_dense
from ..models.adapters import get_adapter
from ..outputs import database_directory
from ..pruning.prune import METHODS, PruningConfig, prune_model, prune_weight_, shared_factors
from ..pruning.update import UPDATES
from ..pruning.weights import DenseSnapshot
from ..search import SearchResult, SearchRun, front_arrays, run_search, unique_points
from ..search.checkpoint import Checkpoint, CheckpointError
from ..search.levels import StagedSurvival, check_stages, halving_stages, level_algorithm
from .config import LEVEL_METHOD_CANDIDATES, EvoPressConfig
from .database import SparsityLevelDatabase
from .problem import LevelSearchProblem

WEIGHTS = ("database", "pruned again")
"""How a model gets the levels found: the database's stored weights (exactly what the search
scored), or every layer pruned again at its level, block by block from the pruning windows."""


@dataclass
class EvoPressResult(SearchResult):
    """Per-layer sparsity levels and how they score.

    Attributes:
        layer_sparsity: Layer name -> chosen sparsity.
        levels: Chosen ladder index per prunable layer.
        sparsity: Parameter-weighted mean sparsity of the prunable layers.
        calibration_kl: KL to the dense model on all search windows.
        n_evaluations: Candidates evaluated.
        method, update: How the database pruned each level.
        ladder: The database's sparsities.
        seconds: Wall time of the whole pipeline.
        database_seconds: Of which building the level database (and choosing its method).
        front: Every Pareto point, sparsest first (``levels``, ``sparsity``, ``density``, ``kl``);
            the chosen point alone with one target.
        database_inputs_at: The level at which the database saw the blocks before each layer
            (None: dense inputs).
        method_choice: With ``method="auto"``, the candidates' KLs and the choice.
        final: How :meth:`apply` gives the model its weights (``"weights"``: ``"database"`` or
            ``"pruned again"``), and the held-out KL of each way when they were compared.
        database: The level database (not serialised).
        calibration: The pruning windows (not serialised).
    """

    title = "EvoPress sparsity levels"

    layer_sparsity: dict[str, float]
    levels: list[int]
    sparsity: float
    calibration_kl: float
    n_evaluations: int
    method: str
    update: str
    ladder: list[float]
    seconds: float = 0.0
    database_seconds: float = 0.0
    front: list[dict] = field(default_factory=list)
    database_inputs_at: float | None = None
    method_choice: dict | None = None
    final: dict = field(default_factory=lambda: {"weights": "database"})
    database: SparsityLevelDatabase | None = field(default=None, repr=False)
    calibration: torch.Tensor | None = field(default=None, repr=False)

    def chosen_point(self) -> dict:
        return {"levels": self.levels, "sparsity": self.sparsity, "density": 1 - self.sparsity,
                "kl": self.calibration_kl}

    @torch.no_grad()
    def apply(self, model: nn.Module, point=None, weights: str | None = None) -> nn.Module:
        """Prune ``model`` **in place** to the chosen levels (or ``point``'s); returns the model.

        ``weights`` (default: ``final["weights"]``): ``"database"`` copies the database's weights
        at each layer's level (exactly what the search scored); ``"pruned again"`` prunes every
        layer again at its sparsity with the database's method, block by block from the pruning
        windows, as SparseGPT prunes."""
        levels = [int(level) for level in self.point(point)["levels"]]
        weights = weights or self.final["weights"]
        layers = get_adapter(model).prunable_layers(model)
        if len(levels) != len(layers):
            raise ValueError(f"these levels are for {len(levels)} layers, the model has {len(layers)}")
        if weights == "database":
            if self.database is None:
                raise ValueError("this result holds no level database: apply with weights='pruned again'")
            for layer, level in zip(layers, levels):
                layer.weight.copy_(self.database.weight(layer.name, level))
            return model
        if weights != "pruned again":
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if self.calibration is None:
            raise ValueError("pruning again needs the pruning windows: this result holds none")
        sparsity = {layer.name: self.ladder[level] for layer, level in zip(layers, levels)}
        needs_gram = self.method == "sparsegpt" or self.update != "none"
        for _index, block_layers, statistics in sequential_blocks(model, self.calibration, progress=False,
                                                                  with_gram=needs_gram):
            factors = shared_factors(statistics) if needs_gram else {}
            for layer in block_layers:
                prune_weight_(layer.weight, statistics[layer.name], sparsity[layer.name], self.method,
                              self.update, factor=factors.get(layer.name))
        return model

    def description(self, point=None) -> dict:
        levels = [int(level) for level in self.point(point)["levels"]]
        return {"method": "evopress", "database_method": self.method, "update": self.update,
                "weights": self.final["weights"], "ladder": self.ladder, "levels": levels}

    def report(self) -> dict:
        return {"layer_sparsity": self.layer_sparsity, "levels": self.levels, "sparsity": self.sparsity,
                "calibration_kl": self.calibration_kl, "n_evaluations": self.n_evaluations,
                "method": self.method, "update": self.update, "ladder": self.ladder,
                "search_seconds": self.seconds, "database_seconds": self.database_seconds,
                "front": self.front,
                "database_inputs_at": self.database_inputs_at, "method_choice": self.method_choice,
                "final": self.final}


@torch.no_grad()
def compare_weights(model: nn.Module, result: EvoPressResult, windows: torch.Tensor,
                    batch_size: int = 8) -> dict:
    """KL to the dense ``model`` on ``windows`` (held-out ones: the search chose its levels on the
    calibration) of the result's two ways of giving the model its weights; the model is left
    dense. Returns ``{"weights": the better way, "kl_database": .., "kl_pruned_again": ..}``."""
    dense = DenseOutputs.build(model, windows, batch_size)
    snapshot = DenseSnapshot.of(model, storage_device=torch.device("cpu"))
    scores = {}
    for way in WEIGHTS:
        try:
            result.apply(model, weights=way)
            scores[way] = kl_to_dense(model, dense)
        finally:
            snapshot.restore()
    better = "database" if scores["database"] < scores["pruned again"] else "pruned again"
    return {"weights": better, "kl_database": scores["database"], "kl_pruned_again": scores["pruned again"]}


@torch.no_grad()
def choose_level_method(model: nn.Module, calibration: torch.Tensor,
                        target_sparsity: float | tuple[float, float], windows: torch.Tensor,
                        candidates=LEVEL_METHOD_CANDIDATES,
                        update: str = "none", batch_size: int = 8, progress: bool = False) -> dict:
    """The method a level database should prune with on this model: each candidate prunes ``model``
    uniformly at the target (a range's sparsest end) block by block from ``calibration`` – the point
    a database built at the target starts the search from – and the one with the lowest KL to the
    dense model on ``windows`` (held-out ones) wins. ``update`` goes with the candidates other than
    SparseGPT, which updates itself. The model comes back dense. Returns ``{"method": best,
    "update": its update, "kl": {candidate: kl}}``."""
    configs = level_method_configs(target_sparsity, candidates, update, batch_size)  # before any work
    dense = DenseOutputs.build(model, windows, batch_size)
    snapshot = DenseSnapshot.of(model, storage_device=torch.device("cpu"))
    scores = {}
    for method, config in configs.items():
        try:
            prune_model(model, calibration, config=config, progress=progress)
            scores[method] = kl_to_dense(model, dense)
        finally:
            snapshot.restore()
    best = min(scores, key=scores.get)
    return {"method": best, "update": configs[best].update, "kl": scores}


def level_method_configs(target_sparsity: float | tuple[float, float], candidates=LEVEL_METHOD_CANDIDATES,
                         update: str = "none", batch_size: int = 8) -> dict[str, PruningConfig]:
    """The uniform pruning of each candidate that :func:`choose_level_method` scores, at the target
    (a range's sparsest end); ``update`` goes with every candidate but SparseGPT, which updates
    itself. Raises on a bad method or update, so callers can check before loading a model."""
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        raise ValueError(f"choose_level_method needs candidate methods: some of {', '.join(METHODS)}")
    sparsity = max(target_sparsity) if isinstance(target_sparsity, (tuple, list)) else target_sparsity
    return {method: PruningConfig(method, sparsity, update="none" if method == "sparsegpt" else update,
                                  batch_size=batch_size) for method in candidates}


def _method_choice(model, calibration: CalibrationSet, config: EvoPressConfig, checkpoint, progress) -> dict:
    """``config.method="auto"``'s choice: kept in the checkpoint, so a resumed run never makes it
    again (and never trusts a malformed one)."""
    saved = checkpoint.driver_state.get("method_choice") if checkpoint is not None else None
    if saved is not None:
        if not (isinstance(saved, dict) and saved.get("method") in METHODS and saved.get("update") in UPDATES
                and isinstance(saved.get("kl"), dict)):
            raise CheckpointError(f"the method choice saved in {checkpoint.directory} is malformed: start a "
                                  "new run")
        return saved
    windows, scored = ("validation", calibration.validation) if calibration.validation is not None else (
        "calibration", calibration.search)
    choice = {**choose_level_method(model, calibration.pruning, config.target_sparsity, scored,
                                    update=config.update, batch_size=config.batch_size, progress=progress),
              "windows": windows, "window_shape": list(scored.shape)}
    if checkpoint is not None:
        checkpoint.driver_state["method_choice"] = choice
    return choice


def search_evopress(model: nn.Module, calibration, config: EvoPressConfig | None = None,
                    run: SearchRun | None = None) -> EvoPressResult:
    """EvoPress: search per-layer sparsity levels for ``model`` over a level database.

    The pipeline: with ``config.method="auto"`` SparseGPT and Wanda each prune the model uniformly
    at the target and the one with the lower KL on the validation windows (else the search
    windows) prunes the database; the database holds every layer at a ladder of sparsities around
    the target, pruned from the pruning windows; the level search (pymoo GA with level-switch
    mutation and multi-fidelity selection, NSGA-II for a range) runs on the search windows; with
    validation windows, the way the final model gets its weights (the database's, or pruned again
    block by block) is the one with the lower held-out KL, else the database's (pruned again for
    a dense-input database). The model is left dense; ``result.apply(model)`` prunes it.

    Args:
        model: The dense model.
        calibration: A :class:`~optishear_moo.data.CalibrationSet` (search, pruning and validation
            windows), or one ``(n_samples, seq_len)`` tensor for every role.
        config: The search's settings (:class:`EvoPressConfig`; default: its defaults).
        run: Checkpoint directory, resume, seed, workers, progress (:class:`SearchRun`).
    """
    config = config or EvoPressConfig()
    run = run or SearchRun()
    calibration = CalibrationSet.of(calibration)
    if config.database_dir is not None:  # before the method choice's and the database's passes
        database_directory(config.database_dir)
    started = time.perf_counter()
    checkpoint = (Checkpoint(run.directory, "evopress", {**run.settings, **config.to_dict()}, run.resume)
                  if run.directory is not None else None)
    try:
        method, update, method_choice = config.method, config.update, None
        if config.method == "auto":
            method_choice = _method_choice(model, calibration, config, checkpoint, run.progress)
            method, update = method_choice["method"], method_choice["update"]
        database = SparsityLevelDatabase.for_target(
            model, calibration.pruning, config.target_sparsity, method, update, config.step,
            config.levels_each_side, config.database_inputs, directory=config.database_dir,
            batch_size=config.batch_size, progress=run.progress)
        database_seconds = time.perf_counter() - started
        problem = LevelSearchProblem(model, calibration.search, config.target_sparsity, database,
                                     batch_size=config.batch_size, progress=run.progress, workers=run.workers,
                                     ray_address=run.ray_address)
        survival = None
        if not problem.multi_objective:
            n_samples = len(calibration.search)
            stages = check_stages(halving_stages(config.pop_size, config.n_stages, n_samples=n_samples),
                                  config.pop_size)
            problem.eval_fidelity = stages[0].fidelity(n_samples)
            survival = StagedSurvival(stages, score_name="kl")
        algorithm = level_algorithm(problem, config.pop_size, config.n_offsprings, survival)
        try:
            result = run_search(problem, algorithm, ("n_gen", config.n_gen), run, checkpoint=checkpoint)
            if problem.multi_objective:
                X, _ = front_arrays(result)
                points = unique_points(sorted(({"levels": problem.levels(x).tolist(),
                                                "sparsity": database.mean_sparsity(problem.levels(x)),
                                                "kl": problem.kl(x)} for x in X),
                                              key=lambda point: -point["sparsity"]), "levels")
                best = problem.levels(points[0]["levels"])
            else:
                best = problem.levels(result.algorithm.pop[0].X)  # ranked by the last (full) stage
                points = [{"levels": best.tolist(), "sparsity": database.mean_sparsity(best),
                           "kl": problem.kl(best)}]
            for point in points:
                point["density"] = 1 - point["sparsity"]
            n_evaluations = int(result.algorithm.evaluator.n_eval)
        finally:
            problem.restore_dense()
    finally:
        if checkpoint is not None:
            checkpoint.close()
    evopress = EvoPressResult(problem.layer_sparsity(best), best.tolist(), database.mean_sparsity(best),
                              points[0]["kl"], n_evaluations, database.method, database.update,
                              database.ladder, front=points, database_inputs_at=database.inputs_at,
                              method_choice=method_choice, database=database, calibration=calibration.pruning,
                              final={"weights": "pruned again" if database.inputs_at is None else "database"})
    if calibration.validation is not None:
        evopress.final = compare_weights(model, evopress, calibration.validation, config.batch_size)
    evopress.seconds, evopress.database_seconds = time.perf_counter() - started, database_seconds
    return evopress
