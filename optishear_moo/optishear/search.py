"""OptiShear's whole pipeline in one function: :func:`search_optishear` builds the problem, runs a
pymoo algorithm warm-started with the baselines (checkpointed), re-scores the front, chooses its
plan on held-out windows, and returns an :class:`OptiShearResult`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.config import CalibrationSet
from ..outputs import write_atomically
from ..search import (
    FidelitySchedule,
    SearchResult,
    SearchRun,
    budget,
    front_arrays,
    make_algorithm,
    reevaluate_at_full_fidelity,
    run_search,
)
from .config import OptiShearConfig
from .plan import PruningPlan
from .problem import OptiShearProblem


@dataclass
class OptiShearResult(SearchResult):
    """The front of an OptiShear search, best first objective first.

    Attributes:
        objectives: The objectives, in the order of each point's values.
        front: One ``{"objectives", "plan", "X", "density"}`` entry per Pareto point (with
            ``"validation_kl"`` when validation windows were given).
        chosen: The plan of the entry with the lowest validation KL, else of the first entry (bound
            to the search's statistics for the search's model).
        n_evaluations: Candidates evaluated.
        seconds: Wall time of the search.
        baselines: Objective values of the baseline plans (uniform Wanda, magnitude, OWL-Wanda),
            with two or more objectives.
        chosen_by: How ``chosen`` was picked.
        baseline_plans: The baselines' plans (``PruningPlan.to_dict()``), for comparisons.
        calibration: The windows ``apply`` prunes from (the pruning windows).
    """

    title = "OptiShear search"

    objectives: tuple[str, ...]
    front: list[dict]
    chosen: PruningPlan
    n_evaluations: int
    seconds: float
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    chosen_by: str = "first objective on the calibration windows"
    baseline_plans: dict[str, dict] = field(default_factory=dict)
    calibration: torch.Tensor | None = field(default=None, repr=False)
    _baseline_points: dict | None = field(default=None, init=False, repr=False)

    @property
    def quality_name(self) -> str:
        return self.objectives[0]

    def chosen_point(self) -> dict:
        return {"plan": self.chosen.to_dict(), "density": 1 - self.chosen.target_sparsity}

    def baseline_points(self) -> dict[str, dict]:
        """Label -> point of every baseline plan (one per target across a size range)."""
        if self._baseline_points is None:  # made once: scores added to them (zero-shot) stay
            self._baseline_points = {}
            for label, plans in self.baseline_plans.items():
                values = self.baselines.get(label, {})
                if isinstance(plans, dict):
                    plans, values = [plans], [values]
                for plan, value in zip(plans, values):
                    name = label if len(plans) == 1 else f"{label} at sparsity {plan['target_sparsity']:.2f}"
                    self._baseline_points[name] = {"plan": plan, "density": 1 - plan["target_sparsity"],
                                                   **value}
        return self._baseline_points

    def plot_axes(self) -> list[str]:
        """The first two objectives (the front lies in objective space)."""
        return list(self.objectives[:2])

    def baseline_curves(self) -> dict[str, list]:
        """Label -> the baseline's objective values (a curve across a size range)."""
        axes = self.plot_axes()
        curves = {}
        for label, values in self.baselines.items():
            values = [values] if isinstance(values, dict) else values
            curves[label] = [[value[axis] for axis in axes] for value in values]
        return curves

    def plan(self, point=None) -> PruningPlan:
        """The plan of the chosen point, of ``front[point]`` or of a point dict."""
        if point is None:
            return self.chosen
        return PruningPlan.from_dict(self.point(point)["plan"])

    def apply(self, model: nn.Module, point=None) -> nn.Module:
        """Prune ``model`` **in place** with the chosen plan (or ``point``'s), block by block from
        the pruning windows; returns the model."""
        return self.plan(point).apply(model, self.calibration)

    def description(self, point=None) -> dict:
        plan = self.plan(point)
        return {"method": "optishear", "target_sparsity": plan.target_sparsity,
                "nm": f"{plan.nm[0]}:{plan.nm[1]}" if plan.nm else None, "plan": plan.to_dict()}

    def report(self) -> dict:
        scored = {label: point["zero_shot"] for label, point in self.baseline_points().items()
                  if "zero_shot" in point}
        return {"objectives": list(self.objectives), "front": self.front,
                "chosen_plan": self.chosen.to_dict(), "chosen_by": self.chosen_by,
                "n_evaluations": self.n_evaluations, "search_seconds": self.seconds,
                "baselines": self.baselines, **({"baselines_zero_shot": scored} if scored else {})}

    def save(self, directory: str | Path, title: str | None = None, history=None) -> None:
        """``front.json``, ``front.csv``, ``best_plan.json`` and, with two or more objectives, the
        Pareto plot with the baselines and every evaluated candidate (``evaluations.jsonl``)."""
        directory = Path(directory)
        log = directory / "evaluations.jsonl"
        if history is None and log.is_file() and not log.is_symlink():
            records = map(json.loads, log.read_text().splitlines())
            history = [record["F"] for record in records if "F" in record]
        super().save(directory, title, np.array(history) if history else None)
        objectives = list(self.objectives)
        header = ",".join(objectives + ["formula", "mean_block_sparsity"])
        rows = [",".join([f"{p['objectives'][o]:.6g}" for o in objectives]
                         + [f"\"{p['plan']['formula']}\"", f"{np.mean(p['plan']['block_sparsity']):.4f}"])
                for p in self.front]
        write_atomically(directory / "front.csv", "\n".join([header, *rows]) + "\n")
        write_atomically(directory / "best_plan.json", json.dumps(self.chosen.to_dict(), indent=2))


def search_optishear(model: nn.Module, calibration, config: OptiShearConfig | None = None,
                     run: SearchRun | None = None) -> OptiShearResult:
    """OptiShear: search a pruning metric and per-block sparsity (and update) for ``model``.

    The pipeline: :class:`OptiShearProblem` on the search windows; an algorithm from
    :func:`~optishear_moo.search.make_algorithm` whose first population holds the baselines
    (uniform Wanda, magnitude, OWL-Wanda, RIA); ``config.n_gen`` generations or ``config.n_evals``
    scored candidates (the first generations at low fidelity if asked, the front re-scored on all
    windows); the front's plan with the lowest KL on the validation windows (else the first
    objective's best) is chosen. The model is left dense; ``result.apply(model)`` prunes it from
    the pruning windows.

    Args:
        model: The dense model.
        calibration: A :class:`~optishear_moo.data.CalibrationSet` (search, pruning and validation
            windows), or one ``(n_samples, seq_len)`` tensor for every role.
        config: The search's settings (:class:`OptiShearConfig`; default: its defaults).
        run: Checkpoint directory, resume, seed, workers, progress (:class:`SearchRun`).
    """
    config = config or OptiShearConfig()
    run = run or SearchRun()
    calibration = CalibrationSet.of(calibration)
    started = time.perf_counter()
    problem = OptiShearProblem(model, calibration.search, config.target_sparsity, config.objectives,
                               config.layerwise, config.nm, batch_size=config.batch_size,
                               reconstruction_tokens=config.reconstruction_tokens, progress=run.progress,
                               update=config.update, search_update=config.search_update,
                               workers=run.workers, ray_address=run.ray_address)
    schedule = None
    if config.low_fidelity < 1:
        schedule = FidelitySchedule(config.low_fidelity, config.low_fidelity_gens)
    algorithm = make_algorithm(config.algorithm, problem, config.pop_size, run.seed)
    result = run_search(problem, algorithm, budget(config.n_gen, config.n_evals), run,
                        settings=config.to_dict(), callback=schedule, driver="optishear")
    if schedule is not None:
        reevaluate_at_full_fidelity(problem, result)
    X, F = front_arrays(result)
    order, seen = [], set()
    for k in np.argsort(F[:, 0], kind="stable"):  # genes coded by floors: several vectors, one plan
        key = json.dumps(problem.describe(X[k]), sort_keys=True)
        if key not in seen:
            seen.add(key)
            order.append(k)
    held_out = (problem.validation_kl(X[order], calibration.validation)
                if calibration.validation is not None else None)
    front = []
    for rank, k in enumerate(order):
        plan = problem.decode(X[k])
        plan.objectives = dict(zip(problem.objectives, map(float, F[k])))
        front.append({"objectives": plan.objectives, **plan.objectives, "plan": plan.to_dict(),
                      "density": 1 - plan.target_sparsity, "X": X[k].tolist()})
        if held_out is not None:
            front[-1]["validation_kl"] = float(held_out[rank])
    score = held_out if held_out is not None else np.arange(len(front))
    if problem.space.searches_size:  # the smallest model of the front, as every method chooses
        best = min(range(len(front)), key=lambda k: (front[k]["density"], score[k]))
        chosen_by = "the smallest model of the front"
    else:
        best = int(np.argmin(score))
        chosen_by = ("KL on held-out validation windows" if held_out is not None
                     else "first objective on the calibration windows")
    chosen = problem.decode(X[order[best]])
    chosen.objectives = front[best]["objectives"]
    baselines, baseline_plans = {}, {}
    if problem.n_obj >= 2:  # at the target, or as curves across a size range
        for target in problem.baseline_targets():
            for label, x in problem.baseline_vectors(target).items():
                scored = problem.evaluate(x[None], return_values_of=["F"])[0]
                values = dict(zip(problem.objectives, map(float, scored)))
                plan = problem.decode(x).to_dict()
                if problem.space.searches_size:
                    baselines.setdefault(label, []).append(values)
                    baseline_plans.setdefault(label, []).append(plan)
                else:
                    baselines[label], baseline_plans[label] = values, plan
    return OptiShearResult(problem.objectives, front, chosen, int(result.algorithm.evaluator.n_eval),
                           time.perf_counter() - started, baselines, chosen_by, baseline_plans,
                           calibration.pruning)
