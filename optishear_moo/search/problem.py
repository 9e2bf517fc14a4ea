"""What every pruning problem of this package shares as a pymoo ``Problem``.

* **The model is never serialised.** Attributes named in ``exclude_from_serialization`` (the
  model, evaluators, dense caches) are dropped by pickling, ``copy.deepcopy`` and pymoo's
  ``save_history``. A copy that comes back (pymoo's ``dill`` checkpoint pattern, a deep copy)
  has no model: evaluating it raises a ``ValueError`` that says to set ``algorithm.problem`` to
  the problem you built.
* **Two forms of the same decision vector.** ``xl``/``xu`` describe an integer-coded real
  vector that every pymoo algorithm can drive; ``vars`` describes the same genes as pymoo
  ``Real``/``Integer``/``Choice``/``Binary`` variables for ``MixedVariableGA`` and NSGA-II's
  mixed-variable operators. ``_evaluate`` accepts both (dict candidates are turned into vectors
  with :meth:`ModelProblem.vector_from_variables`), and so do the problems' ``decode``.
* **Parallel evaluation.** ``workers=N`` (and ``ray_address=...``) evaluates each population on
  a :class:`~optishear_moo.search.pool.RayPool` of N replicas of the problem, each built from the
  arguments the problem records explicitly (``replica``); results come back in order and equal
  local ones.
* **Checkpoints.** While a checkpointed search runs, ``problem.log`` (an
  :class:`~optishear_moo.search.checkpoint.EvaluationLog`) records every evaluation and stage
  score, or answers them when a resumed search replays its log.
* Other ``Problem`` keyword arguments (``callback``, ``replace_nan_values_by``, ``strict``...)
  pass through to pymoo.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from pymoo.core.problem import Problem

from ..models.identity import weights_fingerprint


def problem_fingerprint(kind: str, model, calibration: torch.Tensor | None, *settings) -> str:
    """Identifies a problem by its class, its model (config and a hash of its weights), its
    calibration tokens and its settings."""
    digest = hashlib.sha256(kind.encode())
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if hasattr(config, "to_json_string") else repr(config)).encode())
    digest.update(weights_fingerprint(model).encode())
    if calibration is not None:
        digest.update(calibration.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr(settings).encode())
    return digest.hexdigest()


class ModelProblem(Problem):
    """Base of the problems that prune a model (see the module docstring).

    Subclasses call ``super().__init__(..., replica={...}, fingerprint=...,
    exclude_from_serialization=[...])`` – ``replica`` holds the keyword arguments that build the
    same problem again (on a worker) – and implement :meth:`_evaluate_vectors` (``X``: ``(n,
    n_var)`` vectors), :meth:`vector_from_variables` and, for staged selection, ``stage_score``.
    """

    def __init__(self, *, replica: dict, fingerprint: str, exclude_from_serialization, workers=None,
                 ray_address: str | None = None, **kwargs):
        if kwargs.get("elementwise"):
            raise ValueError(f"{type(self).__name__} evaluates whole populations at once (elementwise=True "
                             "is not supported); spread evaluation over workers with workers=N instead")
        super().__init__(exclude_from_serialization=list(exclude_from_serialization), **kwargs)
        self.replica = dict(replica)
        self.fingerprint = fingerprint
        self.log = None
        self.on_candidate = None  # called after every candidate scored (a progress display)
        self.on_block = None  # called as a population's walk over the blocks goes on: (index, n_blocks)
        self.pool = None
        if workers is not None and not isinstance(workers, int):
            self.pool = workers  # a RayPool built by the caller
        elif workers is not None:
            from .pool import RayPool

            self.pool = RayPool(self, workers, ray_address)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.update(pool=None, replica=None, log=None, on_candidate=None, on_block=None)  # never serialised
        return state

    @property
    def detached(self) -> bool:
        return any(getattr(self, name, None) is None for name in self.exclude_from_serialization or ())

    def _check_attached(self) -> None:
        if self.detached:
            raise ValueError(
                f"this {type(self).__name__} is a copy without its model (models are never serialised): "
                "set algorithm.problem to the problem you built with the model before running on")

    # evaluation -----------------------------------------------------------------------------
    def as_vectors(self, X) -> np.ndarray:
        """``X`` as ``(n, n_var)`` vectors; mixed-variable candidates (dicts) are converted."""
        if isinstance(X, dict):
            return self.vector_from_variables(X)[None]
        X = np.asarray(X)
        if X.dtype == object:
            return np.array([self.vector_from_variables(x) for x in X.reshape(-1)])
        return np.atleast_2d(X)

    def as_vector(self, x) -> np.ndarray:
        """One candidate (vector or dict of variables) as a vector."""
        if isinstance(x, dict) or np.asarray(x).dtype == object:
            return self.as_vectors(x)[0]
        return np.asarray(x)

    def vector_from_variables(self, values: dict) -> np.ndarray:
        """The vector form of one mixed-variable candidate (``{name: value}`` over ``vars``)."""
        return np.array([values[name] for name in self.vars], dtype=float)

    def describe(self, x) -> dict:
        """What one candidate is, as JSON-able values (a front point's fields besides its objectives)."""
        return {"X": np.asarray(self.as_vector(x), dtype=float).tolist()}

    def _evaluate(self, X, out, *args, **kwargs):
        X = self.as_vectors(X)
        if self.log is not None and self.log.replaying:
            out.update(self.log.replay_evaluations(X, self.n_obj, self.n_ieq_constr))
            return
        self._check_attached()
        if self.pool is None:
            self._evaluate_vectors(X, out, *args, **kwargs)
        else:
            groups = self.evaluation_groups(X)
            results = self.pool.map("evaluate", [X[group] for group in groups])
            for key in ("F", "G"):
                if key in results[0]:
                    out[key] = _in_order(groups, [result[key] for result in results], len(X))
        if self.log is not None:
            self.log.record_evaluations(X, out)

    def candidate_done(self) -> None:
        """Problems call this after each candidate they score: it drives the progress display."""
        if self.on_candidate is not None:
            self.on_candidate()

    def block_done(self, index: int, n_blocks: int) -> None:
        """Problems pass this as a walk's ``on_block``: it drives the progress display."""
        if self.on_block is not None:
            self.on_block(index, n_blocks)

    def evaluation_groups(self, X: np.ndarray) -> list:
        """How a population is handed to workers: index groups evaluated together (a problem may
        keep candidates that share expensive work in one group)."""
        return self.pool.groups(len(X))

    def stage_scores(self, X, stage) -> list[float]:
        """``stage_score`` of every candidate (on the workers when there are some)."""
        X = self.as_vectors(X)
        if self.log is not None and self.log.replaying:
            return self.log.replay_stage(X, stage)
        self._check_attached()
        if self.pool is None:
            scores = self.local_stage_scores(X, stage)
        else:
            groups = self.pool.groups(len(X))
            parts = self.pool.map("stage_scores", [X[group] for group in groups], stage)
            scores = _in_order(groups, parts, len(X)).tolist()
        if self.log is not None:
            self.log.record_stage(X, stage, scores)
        return scores

    def local_stage_scores(self, X: np.ndarray, stage) -> list[float]:
        """``stage_score`` of every candidate here (a problem may score them together)."""
        scores = []
        for x in X:
            scores.append(self.stage_score(x, stage))
            self.candidate_done()
        return scores

    def _evaluate_vectors(self, X: np.ndarray, out: dict, *args, **kwargs) -> None:
        raise NotImplementedError


def _in_order(groups: list, parts: list, n: int) -> np.ndarray:
    """The workers' per-group results (``parts[i]`` for the rows ``groups[i]``) as one array in the
    population's order."""
    first = np.asarray(parts[0])
    values = np.empty((n, *first.shape[1:]))
    for group, part in zip(groups, parts):
        values[group] = part
    return values
