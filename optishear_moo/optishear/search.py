"""OptiShear in one call (API and CLI): build the problem, run a pymoo algorithm with checkpoints,
re-score the front, and return its plans; :meth:`OptiShearResult.save` writes them to disk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pymoo.core.result import Result

from ..search import (
    FidelitySchedule,
    front_arrays,
    make_algorithm,
    plot_pareto,
    reevaluate_at_full_fidelity,
    run_search,
)
from .plan import PruningPlan
from .problem import OptiShearProblem


@dataclass
class OptiShearResult:
    """The front of an OptiShear search, best first objective first.

    ``front``: one ``{"objectives", "plan", "X"}`` entry per Pareto point (with
    ``"validation_kl"`` when validation windows were given); ``chosen``: the plan of the entry
    with the lowest validation KL, else of the first entry (bound to the search's statistics, so
    ``chosen.apply(model)`` needs no calibration); ``baselines``: objective values of the
    baseline plans (uniform Wanda, magnitude, OWL-Wanda) for reference, with two or more
    objectives.
    """

    objectives: tuple[str, ...]
    front: list[dict]
    chosen: PruningPlan
    n_evaluations: int
    seconds: float
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    result: Result | None = field(default=None, repr=False)
    chosen_by: str = "first objective on the calibration windows"

    def to_dict(self) -> dict:
        return {"objectives": list(self.objectives), "front": self.front,
                "chosen_plan": self.chosen.to_dict(), "chosen_by": self.chosen_by,
                "n_evaluations": self.n_evaluations,
                "search_seconds": self.seconds, "baselines": self.baselines}

    def save(self, directory: str | Path, title: str | None = None) -> None:
        """``front.json``, ``front.csv``, ``best_plan.json`` and (two or more objectives)
        ``pareto.png``/``.svg`` with the baselines and every evaluated candidate of
        ``directory/evaluations.jsonl`` drawn in."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        objectives = list(self.objectives)
        (directory / "front.json").write_text(json.dumps(self.front, indent=2))
        header = ",".join(objectives + ["formula", "mean_block_sparsity"])
        rows = [",".join([f"{p['objectives'][o]:.6g}" for o in objectives]
                         + [f"\"{p['plan']['formula']}\"", f"{np.mean(p['plan']['block_sparsity']):.4f}"])
                for p in self.front]
        (directory / "front.csv").write_text("\n".join([header, *rows]) + "\n")
        self.chosen.save(directory / "best_plan.json")
        if len(objectives) < 2:
            return
        log = directory / "evaluations.jsonl"
        history = ([json.loads(line)["F"] for line in log.read_text().splitlines() if line]
                   if log.exists() else [])
        F = np.array([[p["objectives"][o] for o in objectives] for p in self.front])
        baselines = {label: [values[o] for o in objectives] for label, values in self.baselines.items()}
        plot_pareto(F, objectives, directory / "pareto", baselines=baselines,
                    history=np.array(history) if history else None, title=title)


def search_optishear(model: torch.nn.Module, calibration: torch.Tensor,
                     target_sparsity: float | tuple[float, float] = 0.5,
                     objectives=("kl", "reconstruction"), layerwise: str = "continuous",
                     nm: str | tuple[int, int] | None = None, algorithm: str = "nsga2",
                     pop_size: int = 16, n_gen: int = 10, seed: int = 0, batch_size: int = 8,
                     low_fidelity: float = 1.0, low_fidelity_gens: int = 3,
                     update: str = "none", search_update: bool = False,
                     validation: torch.Tensor | None = None,
                     problem: OptiShearProblem | None = None, workers=None,
                     ray_address: str | None = None,
                     checkpoint_dir: str | Path | None = None, config: dict | None = None,
                     resume: bool = False, trust: bool = False, verbose: bool = False) -> OptiShearResult:
    """OptiShear search over ``model`` (left dense afterwards).

    Builds :class:`OptiShearProblem` (or uses ``problem``), an ``algorithm`` from
    :func:`~optishear_moo.search.make_algorithm` (warm-started with the baselines), and runs it
    for ``n_gen`` generations; ``low_fidelity < 1`` scores the first ``low_fidelity_gens``
    generations on that share of the calibration samples and re-scores the final front on all.
    ``update``/``search_update``: a fixed weight update for every candidate, or the update as a
    gene (see :class:`OptiShearProblem`). With ``validation`` windows (other text than the
    calibration), the front's plan with the lowest KL on them is chosen. ``workers`` (a number,
    or a :class:`~optishear_moo.search.pool.RayPool`) evaluates populations on Ray workers.
    With ``checkpoint_dir`` the run is saved after every generation; ``resume=True`` continues it
    (``trust=True`` accepts a checkpoint this user did not write; see :mod:`optishear_moo.search`).
    """
    started = time.perf_counter()
    if n_gen < 1:
        raise ValueError(f"the number of generations must be at least 1, got {n_gen}")
    problem = problem or OptiShearProblem(model, calibration, target_sparsity, objectives, layerwise, nm,
                                          batch_size=batch_size, progress=verbose, update=update,
                                          search_update=search_update, workers=workers,
                                          ray_address=ray_address)
    schedule = {"callback": FidelitySchedule(low_fidelity, low_fidelity_gens)} if low_fidelity < 1 else {}
    result = run_search(problem, make_algorithm(algorithm, problem, pop_size, seed), ("n_gen", n_gen),
                        seed=seed, checkpoint_dir=checkpoint_dir, config=config, resume=resume,
                        trust=trust, verbose=verbose, **schedule)
    if schedule:
        reevaluate_at_full_fidelity(problem, result)
    X, F = front_arrays(result)
    order = np.argsort(F[:, 0], kind="stable")
    held_out = problem.validation_kl(X[order], validation) if validation is not None else None
    front = []
    for rank, k in enumerate(order):
        plan = problem.decode(X[k])
        plan.objectives = dict(zip(problem.objectives, map(float, F[k])))
        front.append({"objectives": plan.objectives, "plan": plan.to_dict(), "X": X[k].tolist()})
        if held_out is not None:
            front[-1]["validation_kl"] = float(held_out[rank])
    best = int(np.argmin(held_out)) if held_out is not None else 0
    chosen = problem.decode(X[order[best]])
    chosen.objectives = front[best]["objectives"]
    baselines = {}
    if problem.n_obj >= 2:
        for label, x in problem.baseline_vectors().items():
            values = problem.evaluate(np.array([x]), return_values_of=["F"])[0]
            baselines[label] = dict(zip(problem.objectives, map(float, values)))
    chosen_by = ("KL on held-out validation windows" if held_out is not None
                 else "first objective on the calibration windows")
    return OptiShearResult(problem.objectives, front, chosen, int(result.algorithm.evaluator.n_eval),
                           time.perf_counter() - started, baselines, result, chosen_by)
