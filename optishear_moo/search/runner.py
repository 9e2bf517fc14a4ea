"""Interruptible searches: ``pymoo.optimize.minimize`` with a data checkpoint after every
generation (see :mod:`.checkpoint`)."""

from __future__ import annotations

import logging

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.result import Result
from pymoo.util.display.display import Display

from .checkpoint import Checkpoint, CheckpointError, EvaluationLog
from .run import SearchRun

logger = logging.getLogger(__name__)


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
        setup = {"seed": run.seed, "verbose": run.progress, "callback": callback}
        if termination is not None:
            setup["termination"] = termination
        algorithm.setup(problem, **{k: v for k, v in setup.items() if v is not None})
        if checkpoint is None:
            while algorithm.has_next():
                algorithm.next()
        else:
            _checkpointed(problem, algorithm, checkpoint)
    finally:
        if owned:
            checkpoint.close()
    result = algorithm.result()
    result.problem, result.algorithm = problem, algorithm
    return result


def _checkpointed(problem, algorithm: Algorithm, checkpoint: Checkpoint) -> None:
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
        while algorithm.has_next():
            log.generation = algorithm.n_iter or 1
            algorithm.next()
            checkpoint.save(algorithm, log, problem.fingerprint, front=_front(algorithm))
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


def front_arrays(result: Result) -> tuple[np.ndarray, np.ndarray]:
    """``(X, F)`` of the result's optimum as 2-D arrays (single-objective results included)."""
    X = np.atleast_2d(result.X)
    F = np.asarray(result.F, dtype=float).reshape(len(X), -1)
    return X, F
