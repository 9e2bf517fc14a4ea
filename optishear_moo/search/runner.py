"""Interruptible searches: ``pymoo.optimize.minimize`` with a data checkpoint after every
generation (see :mod:`.checkpoint`), a progress bar, and the front written as it grows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.result import Result
from pymoo.termination.max_gen import MaximumGenerationTermination
from pymoo.util.display.display import Display

from .checkpoint import Checkpoint, CheckpointError, EvaluationLog
from .run import SearchRun

logger = logging.getLogger(__name__)


def budget(n_gen: int, n_evals: int | None = None) -> tuple[str, int]:
    """pymoo's termination for a search's budget: ``n_evals`` scored candidates when set (the
    search stops after the generation in which its count reaches it, so it scores at least that
    many; offspring pymoo drops as duplicates are not scored and do not count), else ``n_gen``
    generations."""
    return ("n_eval", n_evals) if n_evals else ("n_gen", n_gen)


def run_search(problem, algorithm: Algorithm, termination=None, run: SearchRun | None = None, *,
               checkpoint: Checkpoint | None = None, settings: dict | None = None, callback=None,
               driver: str = "run_search") -> Result:
    """Like ``pymoo.optimize.minimize(problem, algorithm, termination, seed=run.seed)``, plus a
    checkpoint after every generation when ``run.directory`` is set.

    With ``run.resume`` the search continues from its checkpoint: ``algorithm`` must be built as
    for the first run (the drivers do this from their config); it replays the saved generations
    from the evaluation log (no model work) and goes on. Resuming a run that already reached its
    termination runs nothing and changes no file. ``problem`` must be one of this package's
    problems (:class:`~optishear_moo.search.problem.ModelProblem`) to be checkpointed.

    Args:
        problem: The pymoo problem.
        algorithm: A fresh pymoo algorithm (not set up yet).
        termination: A pymoo termination or tuple such as ``("n_gen", 10)``.
        run: Directory, resume, seed and progress (:class:`SearchRun`).
        checkpoint: An open :class:`Checkpoint` (drivers open it first to keep their own state
            in it); by default one is opened in ``run.directory``.
        settings: Settings a resumed run must share (with ``run.settings``), compared on resume.
        callback: A pymoo ``Callback`` called after every generation (replayed ones too).
        driver: The name stored with the checkpoint, so another driver refuses it.
    """
    run = run or SearchRun()
    owned = checkpoint is None and run.directory is not None
    if owned:
        checkpoint = Checkpoint(run.directory, driver, {**run.settings, **(settings or {})}, run.resume)
    try:
        setup = {"seed": run.seed, "callback": callback}
        if termination is not None:
            setup["termination"] = termination
        algorithm.setup(problem, **{k: v for k, v in setup.items() if v is not None})
        if checkpoint is None:
            with SearchProgress(problem, algorithm, run.progress) as progress:
                while algorithm.has_next():
                    algorithm.next()
                    progress.generation_done()
        else:
            _checkpointed(problem, algorithm, checkpoint, run.progress)
    finally:
        if owned:
            checkpoint.close()
    result = algorithm.result()
    result.problem, result.algorithm = problem, algorithm
    return result


def _checkpointed(problem, algorithm: Algorithm, checkpoint: Checkpoint, progress: bool) -> None:
    if not hasattr(problem, "log"):
        raise ValueError(f"{type(problem).__name__} cannot be checkpointed: only this package's problems "
                         "record their evaluations; run it without a checkpoint directory")
    checkpoint.check_problem(problem.fingerprint, type(algorithm).__name__)
    log = EvaluationLog(checkpoint.records(problem.n_var))
    problem.log = log
    try:
        if checkpoint.generation:
            _replay(algorithm, log, checkpoint.generation, checkpoint.directory)
            logger.info("resumed at generation %d (%d evaluations replayed)", checkpoint.generation,
                        algorithm.evaluator.n_eval)
        with SearchProgress(problem, algorithm, progress) as bar:
            while algorithm.has_next():
                log.generation = algorithm.n_iter or 1
                algorithm.next()
                checkpoint.save(algorithm, log, problem.fingerprint, front=_front(algorithm))
                write_front(checkpoint.directory, problem, algorithm)
                bar.generation_done()
    finally:
        problem.log = None


def _replay(algorithm: Algorithm, log: EvaluationLog, generations: int, directory) -> None:
    """Run ``generations`` generations with every evaluation answered from ``log``."""
    display, algorithm.display = algorithm.display, Display(None)
    try:
        while (algorithm.n_iter or 1) <= generations:
            if not algorithm.has_next():
                raise CheckpointError(f"the run in {directory} did {generations} generations, more than this "
                                      "termination allows: resume with at least as many")
            log.generation = algorithm.n_iter or 1
            algorithm.next()
    finally:
        algorithm.display = display
    if log.replaying:
        raise CheckpointError(f"the checkpoint in {directory} holds evaluations its generations never asked "
                              "for: start a new run")


def _front(algorithm: Algorithm) -> dict:
    opt = algorithm.opt
    if opt is None or not len(opt):
        return {}
    return {"X": np.asarray(opt.get("X"), dtype=float).tolist() if opt.get("X").dtype != object else [],
            "F": np.asarray(opt.get("F"), dtype=float).tolist()}


class SearchProgress:
    """A bar over the generations on standard error: the block a population's walk has
    reached, candidates scored in the generation under way, evaluations so far, the best value of
    the first objective, and the time left (tqdm's estimate from the generations done). Does
    nothing when ``enabled`` is false."""

    def __init__(self, problem, algorithm: Algorithm, enabled: bool = True):
        self.problem, self.algorithm, self.enabled = problem, algorithm, enabled
        self.bar, self.scored, self.walking = None, 0, ""

    def __enter__(self) -> SearchProgress:
        if self.enabled:
            from tqdm.auto import tqdm

            termination = self.algorithm.termination
            total = termination.n_max_gen if isinstance(termination, MaximumGenerationTermination) else None
            done = (self.algorithm.n_iter or 1) - 1
            self.bar = tqdm(total=total, initial=done, desc="generations", unit="gen", dynamic_ncols=True)
            if hasattr(self.problem, "on_candidate"):
                self.problem.on_candidate, self.problem.on_block = self.candidate_done, self.block_done
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
            self.problem.on_candidate = self.problem.on_block = None

    def _status(self) -> str:
        parts = [f"{self.scored} scored this generation", f"{self.algorithm.evaluator.n_eval} evaluations"]
        if self.walking:
            parts.insert(0, self.walking)
        opt = self.algorithm.opt
        if opt is not None and len(opt):
            names = getattr(self.problem, "objectives", ("objective",))
            parts.append(f"best {names[0]} {np.min(opt.get('F')[:, 0]):.4g}")
        return ", ".join(parts)

    def candidate_done(self) -> None:
        self.scored, self.walking = self.scored + 1, ""
        self.bar.set_postfix_str(self._status())

    def block_done(self, index: int, n_blocks: int) -> None:
        self.walking = f"block {index + 1}/{n_blocks}"
        self.bar.set_postfix_str(self._status())

    def generation_done(self) -> None:
        if self.bar is not None:
            self.scored = 0
            self.bar.set_postfix_str(self._status(), refresh=False)
            self.bar.update(1)


def write_front(directory: str | Path, problem, algorithm: Algorithm) -> list[dict]:
    """``front.json`` – the algorithm's current optimum, one point per distinct candidate (its
    objectives and what it is, ``problem.describe``) – and with two or more objectives the Pareto
    plot, rewritten after every generation so the front can be watched as it grows."""
    from ..outputs import write_atomically
    from .plotting import plot_pareto

    opt = algorithm.opt
    if opt is None or not len(opt):
        return []
    names = list(getattr(problem, "objectives", [f"f{k}" for k in range(problem.n_obj)]))
    points, seen = [], set()
    for x, f in sorted(zip(opt.get("X"), opt.get("F")), key=lambda pair: tuple(pair[1])):
        described = problem.describe(x)
        key = json.dumps(described, sort_keys=True)
        if key in seen:  # genes coded by floors: several vectors can be one candidate
            continue
        seen.add(key)
        values = dict(zip(names, map(float, f)))
        points.append({"objectives": values, **values, **described, "generation": int(algorithm.n_iter) - 1})
    directory = Path(directory)
    write_atomically(directory / "front.json", json.dumps(points, indent=1))
    if problem.n_obj >= 2 and len(points) >= 2:
        plot_pareto(np.array([[p[name] for name in names] for p in points]), names, directory / "pareto",
                    title=f"front after generation {points[0]['generation']}")
    return points


def front_arrays(result: Result) -> tuple[np.ndarray, np.ndarray]:
    """``(X, F)`` of the result's optimum as 2-D arrays (single-objective results included), its
    feasible rows only: some algorithms (RVEA) keep infeasible members, with placeholder
    objectives, in their optimum."""
    if result.X is None:
        raise ValueError("the search found no feasible candidate: widen the size range or run more "
                         "generations")
    X = np.atleast_2d(result.X)
    F = np.asarray(result.F, dtype=float).reshape(len(X), -1)
    if result.CV is not None:
        feasible = np.asarray(result.CV, dtype=float).reshape(len(X), -1).max(axis=1) <= 0
        if not feasible.any():
            raise ValueError("the search found no feasible candidate: widen the size range or run more "
                             "generations")
        X, F = X[feasible], F[feasible]
    return X, F
