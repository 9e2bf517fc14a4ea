"""Interruptible searches: a pymoo run with a checkpoint after every generation.

Checkpoint directory layout (format ``optishear-moo/checkpoint-v1``):

* ``algorithm.pkl`` – the pymoo algorithm after the last finished generation: population,
  archive/optimum, history (with ``save_history``), termination state and the NumPy random
  generator state. The problem inside it has its model and dense caches removed
  (``exclude_from_serialization``), and the user's pymoo ``Callback`` is left out (pass it
  again on resume); :func:`run_search` with ``resume=True`` attaches a freshly built problem.
  The file is read by :class:`SafeUnpickler`, which only rebuilds NumPy arrays, the NumPy
  random generator, a few pure NumPy reductions, *classes* defined by pymoo or optishear_moo
  and pymoo's numerical functions (algorithms, operators, utilities; not its plotting); it
  refuses every other global, so a tampered file cannot name ``os.system``, ``eval`` or any
  I/O function to run.
* ``state.json`` – generation count, evaluations, seed and the caller's configuration.
* ``evaluations.jsonl`` – one line per evaluated candidate: generation, X, F, G.

A run resumed from a checkpoint continues exactly as the uninterrupted run would have, with no
evaluation lost or repeated.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.core.result import Result
from pymoo.core.termination import Termination
from pymoo.termination import get_termination

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "optishear-moo/checkpoint-v1"

_ALLOWED_FUNCTIONS = {
    ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("numpy", "dtype"),
    # pure reductions that pymoo objects keep as attributes (e.g. constraint aggregation)
    ("numpy", "sum"), ("numpy", "max"), ("numpy", "min"), ("numpy", "mean"),
    ("numpy", "ndarray"),
    # our picklable delegate of pymoo's GA tournament comparison
    ("optishear_moo.problems.selection", "compare_by_cv_then_fitness"),
}
_PYMOO_NUMERICAL_FUNCTIONS = ("pymoo.algorithms.", "pymoo.operators.", "pymoo.util.", "pymoo.functions.",
                              "pymoo.core.", "pymoo.termination.", "pymoo.constraints.")
_ALLOWED_BUILTINS = {"object", "set", "frozenset", "slice", "range", "complex", "tuple", "list",
                     "dict", "int", "float", "bool", "str", "bytes", "bytearray"}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler restricted to data: see the module docstring for what it accepts."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_FUNCTIONS or (module == "builtins" and name in _ALLOWED_BUILTINS):
            return super().find_class(module, name)
        if module.split(".")[0] in ("pymoo", "optishear_moo") or module.startswith("numpy.dtypes"):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
            if module.startswith(_PYMOO_NUMERICAL_FUNCTIONS) and callable(obj):
                return obj  # e.g. the crowding-distance function a survival keeps
        if module.startswith("numpy.random") and name in ("PCG64", "Generator", "MT19937", "SeedSequence"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which is not allowed")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def save_checkpoint(algorithm: Algorithm, directory: str | Path, config: dict | None = None) -> None:
    """Write ``algorithm`` (after a finished generation) to ``directory`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generation = int(algorithm.n_iter) - 1  # pymoo counts the generation under way
    off = algorithm.off
    if off is not None and len(off):
        lines = [json.dumps({"generation": generation, "X": row_x.tolist(), "F": row_f.tolist(),
                             "G": row_g.tolist()})
                 for row_x, row_f, row_g in zip(off.get("X"), off.get("F"), off.get("G"))]
        with open(directory / "evaluations.jsonl", "a") as handle:
            handle.write("\n".join(lines) + "\n")
    callback, algorithm.callback = algorithm.callback, Callback()  # user code is not checkpointed
    try:
        data = pickle.dumps(algorithm, protocol=5)
    finally:
        algorithm.callback = callback
    _write_atomically(directory / "algorithm.pkl", data)
    state = {"format": CHECKPOINT_FORMAT, "generation": generation,
             "n_eval": int(algorithm.evaluator.n_eval), "seed": algorithm.seed, "config": config or {}}
    _write_atomically(directory / "state.json", json.dumps(state, indent=2).encode())


def load_checkpoint(directory: str | Path) -> tuple[Algorithm, dict]:
    """``(algorithm, state)`` from a checkpoint directory; the algorithm's problem is detached."""
    directory = Path(directory)
    state_path = directory / "state.json"
    if not state_path.is_file():
        raise ValueError(f"{directory} holds no checkpoint (no state.json): start a new search instead")
    state = json.loads(state_path.read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{state_path} is not an {CHECKPOINT_FORMAT} checkpoint")
    algorithm = SafeUnpickler(io.BytesIO((directory / "algorithm.pkl").read_bytes())).load()
    return algorithm, state


def _truncate_evaluations(directory: Path, generation: int) -> None:
    """Drop evaluation lines of a generation that had not been checkpointed when interrupted."""
    path = directory / "evaluations.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["generation"] <= generation]
        _write_atomically(path, ("\n".join(kept) + "\n" if kept else "").encode())


def termination_from_tuple(termination) -> Termination:
    return get_termination(*termination) if isinstance(termination, tuple) else termination


def run_search(problem: Problem, algorithm: Algorithm, termination=None, seed: int | None = None,
               checkpoint_dir: str | Path | None = None, config: dict | None = None,
               resume: bool = False, **setup_kwargs) -> Result:
    """Like ``pymoo.optimize.minimize``, plus a checkpoint after every generation.

    With ``resume=True``, ``algorithm`` is ignored and the run continues from
    ``checkpoint_dir`` with ``problem`` (built exactly as for the first run) attached.
    """
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume needs the checkpoint directory")
        algorithm, state = load_checkpoint(checkpoint_dir)
        algorithm.problem = problem
        if termination is not None:  # e.g. more generations than the first run asked for
            algorithm.termination = termination_from_tuple(termination)
        if "callback" in setup_kwargs:
            algorithm.callback = setup_kwargs["callback"]
        _truncate_evaluations(Path(checkpoint_dir), state["generation"])
        logger.info("resuming at generation %d (%d evaluations done)", state["generation"],
                    state["n_eval"])
    else:
        if termination is not None:
            setup_kwargs["termination"] = termination
        algorithm.setup(problem, seed=seed, **setup_kwargs)
        if checkpoint_dir is not None:
            (Path(checkpoint_dir) / "evaluations.jsonl").unlink(missing_ok=True)
    while algorithm.has_next():
        algorithm.next()
        if checkpoint_dir is not None:
            save_checkpoint(algorithm, checkpoint_dir, config)
    result = algorithm.result()
    result.problem, result.algorithm = problem, algorithm
    return result


def front_arrays(result: Result) -> tuple[np.ndarray, np.ndarray]:
    """``(X, F)`` of the result's optimum as 2-D arrays (single-objective results included)."""
    X = np.atleast_2d(result.X)
    F = np.asarray(result.F, dtype=float).reshape(len(X), -1)
    return X, F


class FidelitySchedule(Callback):
    """Cheaper early generations: the problem's forward objectives use ``low`` of the
    calibration samples until ``until_generation`` generations are done, then all of them.

    Scores from the two fidelities are compared during selection, so re-score the final front
    with :func:`reevaluate_at_full_fidelity`. Like any callback it is not checkpointed: pass it
    again when resuming.
    """

    def __init__(self, low: float = 0.25, until_generation: int = 3):
        super().__init__()
        if not 0 < low <= 1:
            raise ValueError(f"low fidelity must be in (0, 1], got {low}")
        self.low, self.until_generation = low, until_generation

    def notify(self, algorithm: Algorithm) -> None:
        # called at the end of generation n_iter, before pymoo counts on to the next one
        low = algorithm.n_iter + 1 <= self.until_generation
        algorithm.problem.fidelity = self.low if low else 1.0

    def initialize(self, algorithm: Algorithm) -> None:
        algorithm.problem.fidelity = self.low if self.until_generation > 0 else 1.0


def reevaluate_at_full_fidelity(problem: Problem, result: Result) -> np.ndarray:
    """The result's optimum re-scored on all calibration samples (sets ``result.F`` too)."""
    problem.fidelity = 1.0
    X, _ = front_arrays(result)
    F = problem.evaluate(X, return_values_of=["F"])
    result.F = F if np.ndim(result.F) == 2 else F[:, 0]
    return F


MULTI_OBJECTIVE_ALGORITHMS = ("nsga2", "nsga3", "agemoea", "smsemoa")
SINGLE_OBJECTIVE_ALGORITHMS = ("ga", "de", "cmaes")


def check_algorithm(name: str, n_obj: int) -> str:
    """The lower-cased algorithm name, if it exists and suits ``n_obj`` objectives."""
    name = name.lower()
    if name not in MULTI_OBJECTIVE_ALGORITHMS + SINGLE_OBJECTIVE_ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}: use one of "
                         f"{', '.join(MULTI_OBJECTIVE_ALGORITHMS + SINGLE_OBJECTIVE_ALGORITHMS)}")
    if name in SINGLE_OBJECTIVE_ALGORITHMS and n_obj != 1:
        raise ValueError(f"{name} is single-objective but {n_obj} objectives were chosen: "
                         f"use one of {', '.join(MULTI_OBJECTIVE_ALGORITHMS)} or one objective")
    if name in MULTI_OBJECTIVE_ALGORITHMS and n_obj < 2 and name != "nsga2":
        raise ValueError(f"{name} needs at least two objectives")
    return name


def make_algorithm(name: str, problem: Problem, pop_size: int = 16, seed: int = 0) -> Algorithm:
    """A pymoo algorithm by name, configured for ``problem``: reference directions for NSGA-III,
    the discrete-sparsity repair where the problem needs one, and an initial population that
    holds the baselines (``problem.initial_population``) so the search starts from them."""
    name = check_algorithm(name, problem.n_obj)
    n_obj = problem.n_obj
    if pop_size < 2:
        raise ValueError(f"population size must be at least 2, got {pop_size}")
    discrete = getattr(getattr(problem, "space", None), "layerwise", "") == "discrete"
    kwargs = {"repair": problem.repair} if discrete else {}
    if hasattr(problem, "initial_population") and name != "cmaes":
        kwargs["sampling"] = problem.initial_population(pop_size, seed)
    if name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(pop_size=pop_size, **kwargs)
    if name == "nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.util.ref_dirs import get_reference_directions

        ref_dirs = (get_reference_directions("das-dennis", 2, n_partitions=pop_size - 1) if n_obj == 2
                    else get_reference_directions("energy", n_obj, pop_size, seed=1))
        return NSGA3(ref_dirs=ref_dirs, pop_size=pop_size, **kwargs)
    if name == "agemoea":
        from pymoo.algorithms.moo.age import AGEMOEA

        return AGEMOEA(pop_size=pop_size, **kwargs)
    if name == "smsemoa":
        from pymoo.algorithms.moo.sms import SMSEMOA

        return SMSEMOA(pop_size=pop_size, **kwargs)
    if name == "ga":
        from pymoo.algorithms.soo.nonconvex.ga import GA

        from .problems.selection import ga_tournament_selection

        return GA(pop_size=pop_size, selection=ga_tournament_selection(), **kwargs)
    if name == "de":
        from pymoo.algorithms.soo.nonconvex.de import DE

        return DE(pop_size=pop_size, **kwargs)
    if name == "cmaes":
        from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

        return CMAES(popsize=pop_size)
    raise AssertionError(name)


def write_search_outputs(problem, result: Result, directory: str | Path, tokenizer=None,
                         evaluate_perplexity=None) -> dict:
    """Write the front (JSON + CSV), the chosen plan, the Pareto plot and the chosen pruned model.

    The chosen point is the front's best on the first objective. ``evaluate_perplexity`` (a
    callable returning a :class:`PerplexityResult` of the model as it is) adds dense and pruned
    held-out perplexity. The model is left dense.
    """
    from .plotting import plot_pareto
    from .pruning.weights import DenseSnapshot, sparsity_report

    directory = Path(directory)
    X, F = front_arrays(result)
    objectives = list(problem.objectives)
    front = []
    for x, f in zip(X, F):
        plan = problem.decode(x)
        plan.objectives = dict(zip(objectives, map(float, f)))
        front.append({"objectives": plan.objectives, "plan": plan.to_dict(), "X": x.tolist()})
    order = np.argsort(F[:, 0], kind="stable")
    front = [front[i] for i in order]
    (directory / "front.json").write_text(json.dumps(front, indent=2))
    header = ",".join(objectives + ["formula", "mean_block_sparsity"])
    rows = [",".join([f"{p['objectives'][o]:.6g}" for o in objectives]
                     + [f"\"{p['plan']['formula']}\"", f"{np.mean(p['plan']['block_sparsity']):.4f}"])
            for p in front]
    (directory / "front.csv").write_text("\n".join([header, *rows]) + "\n")
    chosen = problem.decode(X[order[0]])
    chosen.objectives = front[0]["objectives"]
    chosen.save(directory / "best_plan.json")

    report = {"objectives": objectives, "front": front, "chosen_plan": chosen.to_dict(),
              "n_evaluations": int(result.algorithm.evaluator.n_eval) if result.algorithm else None}
    if len(objectives) >= 2:
        baselines = {label: problem.evaluate(np.array([x]), return_values_of=["F"])[0]
                     for label, x in problem.baseline_vectors().items()}
        report["baselines"] = {label: dict(zip(objectives, map(float, f)))
                               for label, f in baselines.items()}
        history = []
        log = directory / "evaluations.jsonl"
        if log.exists():
            history = [json.loads(line)["F"] for line in log.read_text().splitlines() if line]
        plot_pareto(F, objectives, directory / "pareto", baselines=baselines,
                    history=np.array(history) if history else None,
                    title=f"OptiShear search, target sparsity {problem.space.target_sparsity}")

    model = problem.model
    snapshot = DenseSnapshot.of(model)
    if evaluate_perplexity is not None:
        report["dense_ppl"] = evaluate_perplexity().perplexity
    try:
        chosen.apply(model)
        if evaluate_perplexity is not None:
            report["pruned_ppl"] = evaluate_perplexity().perplexity
        sparsity = sparsity_report(model)
        report.update({"sparsity": sparsity.total, "per_layer_sparsity": sparsity.per_layer})
        model.save_pretrained(directory / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(directory / "model")
    finally:
        snapshot.restore()
    return report
