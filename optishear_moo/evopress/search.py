"""EvoPress-style sparsity-level search in one call (API and CLI): build the level database, run
the pymoo search with multi-fidelity selection (checkpointed), and return the chosen per-layer
sparsities. The model comes back dense; :meth:`LevelChoice.apply` prunes it to the choice."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..activations import sequential_blocks
from ..evaluation.divergence import DenseOutputs, kl_to_dense
from ..models.adapters import get_adapter
from ..pruning.prune import METHODS, PruningConfig, prune_model, prune_weight_, shared_factors
from ..pruning.weights import DenseSnapshot
from ..search import front_arrays, run_search
from ..search.levels import StagedSurvival, check_stages, fidelity_stages, level_algorithm
from .database import SparsityLevelDatabase
from .problem import LevelSearchProblem

#: generations of :func:`search_levels` and ``optishear-moo levels`` (16 offspring each): at 70 %
#: on SmolLM2, 10 gave 0.81x and 40 gave 0.64x uniform SparseGPT's perplexity (README, Benchmarks)
GENERATIONS = 40


@dataclass
class LevelChoice:
    """Per-layer sparsity (``layer_sparsity``, layer name -> sparsity) and how it scores.

    ``sparsity``: parameter-weighted mean over the prunable layers; ``calibration_kl``: KL to the
    dense model on all calibration windows; ``front`` (sparsity range only): every Pareto point,
    sparsest first; ``database_inputs_at``: the level at which the database saw the blocks before
    each layer (None: dense inputs).
    """

    layer_sparsity: dict[str, float]
    levels: list[int]
    sparsity: float
    calibration_kl: float
    n_evaluations: int
    method: str
    update: str
    ladder: list[float]
    seconds: float = 0.0
    front: list[dict] = field(default_factory=list)
    database_inputs_at: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @torch.no_grad()
    def apply(self, model: nn.Module, database: SparsityLevelDatabase | None = None,
              calibration: torch.Tensor | None = None, batch_size: int = 8) -> nn.Module:
        """Prune ``model`` **in place** to this choice; returns the model.

        With ``database``: each layer gets the stored weights at its level (exactly what the search
        scored). With ``calibration`` instead: every layer is pruned again at its chosen sparsity
        with the database's method, block by block from the inputs of the already-pruned blocks, as
        SparseGPT prunes (far better for a database built from dense inputs; for one built at the
        target either can win: :func:`apply_better_` judges on held-out windows)."""
        if calibration is not None:
            needs_gram = self.method == "sparsegpt" or self.update != "none"
            for _index, layers, statistics in sequential_blocks(model, calibration, batch_size,
                                                                 with_gram=needs_gram, progress=False):
                factors = shared_factors(statistics) if needs_gram else {}
                for layer in layers:
                    prune_weight_(layer.weight, statistics[layer.name], self.layer_sparsity[layer.name],
                                  self.method, self.update, factor=factors.get(layer.name))
            return model
        if database is None:
            raise ValueError("apply needs the level database, or calibration tokens to prune again")
        for layer, level in zip(get_adapter(model).prunable_layers(model), self.levels):
            layer.weight.copy_(database.weight(layer.name, level))
        return model


@torch.no_grad()
def apply_better_(model: nn.Module, choice: LevelChoice, database: SparsityLevelDatabase,
                  calibration: torch.Tensor, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """Prune the dense ``model`` **in place** to ``choice`` the better of its two ways: the
    database's weights (what the search scored) or the levels pruned again block by block from
    ``calibration``, judged by KL to the dense model on ``windows`` (held-out ones: the search
    chose its levels on the calibration). Returns ``{"weights": "database" | "pruned again",
    "kl_database": .., "kl_pruned_again": ..}``."""
    dense = DenseOutputs.build(model, windows, batch_size)
    snapshot = DenseSnapshot.of(model, storage_device=torch.device("cpu"))
    choice.apply(model, database)
    kl_database = kl_to_dense(model, dense)
    snapshot.restore()
    choice.apply(model, calibration=calibration, batch_size=batch_size)
    kl_again = kl_to_dense(model, dense)
    if kl_database < kl_again:
        choice.apply(model, database)  # overwrites every prunable layer
    return {"weights": "database" if kl_database < kl_again else "pruned again",
            "kl_database": kl_database, "kl_pruned_again": kl_again}


#: the level-database methods :func:`choose_level_method` compares by default: SparseGPT is the
#: strongest uniform baseline on SmolLM2, Wanda on Qwen2.5-0.5B (README, Benchmarks)
LEVEL_METHOD_CANDIDATES = ("sparsegpt", "wanda")


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


def search_levels(model: nn.Module, calibration: torch.Tensor,
                  target_sparsity: float | tuple[float, float] = 0.5, method: str = "sparsegpt",
                  update: str = "none", step: float = 0.05, levels_each_side: int = 3,
                  pop_size: int = 1, n_offsprings: int = 16, n_gen: int = GENERATIONS, stages=None,
                  seed: int = 0, batch_size: int = 8,
                  database: SparsityLevelDatabase | None = None, database_dir: str | Path | None = None,
                  checkpoint_dir: str | Path | None = None, config: dict | None = None,
                  resume: bool = False, trust: bool = False, verbose: bool = False, workers=None,
                  ray_address: str | None = None, database_inputs: str = "pruned") -> LevelChoice:
    """EvoPress's search over ``model`` (left dense afterwards).

    ``target_sparsity``: one mean sparsity (kept exactly), or ``(low, high)`` for a size-vs-quality
    front (NSGA-II; the sparsest point is chosen). The database holds every layer pruned with
    ``method`` (+ ``update``) at sparsities ``step`` apart around the target (``levels_each_side``
    more on each side), each block pruned from the outputs of the blocks before it pruned at the
    target (``database_inputs="pruned"``) or from dense inputs (``"dense"``, as EvoPress).
    ``stages`` (one target only; default :func:`fidelity_stages`: survivors
    halve while the windows scored double) select the survivors of each generation.
    """
    started = time.perf_counter()
    if n_gen < 1:
        raise ValueError(f"the number of generations must be at least 1, got {n_gen}")
    database = database or SparsityLevelDatabase.for_target(
        model, calibration, target_sparsity, method, update, step, levels_each_side, database_inputs,
        directory=database_dir, batch_size=batch_size, progress=verbose)
    problem = LevelSearchProblem(model, calibration, target_sparsity, database, batch_size=batch_size,
                                 progress=verbose, workers=workers, ray_address=ray_address)
    survival = None
    if not problem.multi_objective:
        stages = check_stages(stages if stages is not None else fidelity_stages(len(calibration), pop_size),
                              pop_size)
        first = stages[0].eval_samples
        problem.eval_fidelity = 1.0 if first is None else min(first, len(calibration)) / len(calibration)
        survival = StagedSurvival(stages, score_name="kl")
    algorithm = level_algorithm(problem, pop_size, n_offsprings, survival)
    try:
        result = run_search(problem, algorithm, ("n_gen", n_gen), seed=seed,
                            checkpoint_dir=checkpoint_dir, config=config, resume=resume, trust=trust,
                            verbose=verbose)
        n_eval = int(result.algorithm.evaluator.n_eval)
        if problem.multi_objective:
            X, F = front_arrays(result)
            points = sorted(({"levels": problem.levels(x).tolist(), "sparsity": 1 - float(f[1]),
                              "calibration_kl": problem.kl(x)} for x, f in zip(X, F)),
                            key=lambda point: -point["sparsity"])
            best = problem.levels(points[0]["levels"])
        else:
            points = []
            best = problem.levels(result.algorithm.pop[0].X)  # ranked by the last (full) stage
        kl = problem.kl(best)
        return LevelChoice(problem.layer_sparsity(best), best.tolist(), database.mean_sparsity(best), kl,
                           n_eval, database.method, database.update, database.ladder,
                           time.perf_counter() - started, points, database.inputs_at)
    finally:
        problem.restore_dense()

