"""Interruptible searches: ``pymoo.optimize.minimize`` with a checkpoint after every generation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.problem import Problem
from pymoo.core.result import Result
from pymoo.core.termination import Termination
from pymoo.termination import get_termination
from pymoo.termination.max_gen import MaximumGenerationTermination

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, truncate_evaluations

logger = logging.getLogger(__name__)


def termination_from_tuple(termination) -> Termination:
    return get_termination(*termination) if isinstance(termination, tuple) else termination


def generations_reached(termination, generation: int) -> bool:
    """Whether a generation-count ``termination`` asks for no more than ``generation`` generations."""
    return isinstance(termination, MaximumGenerationTermination) and termination.n_max_gen <= generation


def check_same_shape(stored: Problem, problem: Problem, directory, state: dict) -> None:
    """A ``CheckpointError`` unless the checkpoint's problem has the same numbers of variables,
    objectives and constraints as ``problem``."""
    def shape(p):
        return (getattr(p, "n_var", None), getattr(p, "n_obj", None), getattr(p, "n_ieq_constr", 0),
                getattr(p, "n_eq_constr", 0))

    if shape(stored) != shape(problem):
        origin = state.get("written_by", "optishear-moo 0.1")
        raise CheckpointError(
            f"the checkpoint in {directory} (written by {origin}) is of "
            f"a problem with {shape(stored)[0]} variables, {shape(stored)[1]} objectives and "
            f"{shape(stored)[2] + shape(stored)[3]} constraints, this problem has {shape(problem)[0]}, "
            f"{shape(problem)[1]} and {shape(problem)[2] + shape(problem)[3]}: start a new search")


def run_search(problem: Problem, algorithm: Algorithm, termination=None, seed: int | None = None,
               checkpoint_dir: str | Path | None = None, config: dict | None = None,
               resume: bool = False, trust: bool = False, **setup_kwargs) -> Result:
    """Like ``pymoo.optimize.minimize``, plus a checkpoint after every generation.

    With ``resume=True``, ``algorithm`` is ignored and the run continues from
    ``checkpoint_dir`` with ``problem`` (built exactly as for the first run) attached; a
    checkpoint this user did not write is refused unless ``trust=True`` (see
    :mod:`.checkpoint`). Resuming a run that already reached its termination (or the given
    ``termination``) runs nothing and changes no file: the result is the checkpoint's.
    """
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume needs the checkpoint directory")
        algorithm, state = load_checkpoint(checkpoint_dir, trust)
        check_same_shape(algorithm.problem, problem, checkpoint_dir, state)
        algorithm.problem = problem
        if termination is not None:  # e.g. more generations than the first run asked for
            termination = termination_from_tuple(termination)
            if not generations_reached(termination, state["generation"]):
                algorithm.termination = termination
        if not algorithm.has_next():
            logger.info("the search in %s had finished (%d generations, %d evaluations): nothing to run",
                        checkpoint_dir, state["generation"], state["n_eval"])
            result = algorithm.result()
            result.problem, result.algorithm = problem, algorithm
            return result
        if "callback" in setup_kwargs:
            algorithm.callback = setup_kwargs["callback"]
        truncate_evaluations(Path(checkpoint_dir), state["generation"])
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
