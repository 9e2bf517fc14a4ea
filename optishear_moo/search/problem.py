"""What every pruning problem of this package shares as a pymoo ``Problem``.

* **The model is never serialised.** Attributes named in ``exclude_from_serialization`` (the
  model, evaluators, dense caches) are dropped by pickling, ``copy.deepcopy`` and pymoo's
  ``save_history``. A copy that comes back (pymoo's ``dill`` checkpoint pattern, a deep copy)
  re-attaches them from the live problem built from the same model and calibration, if there is
  one; otherwise evaluating it raises a ``ValueError`` that says how to attach it.
* **Two forms of the same decision vector.** ``xl``/``xu`` describe an integer-coded real
  vector that every pymoo algorithm can drive; ``vars`` describes the same genes as pymoo
  ``Real``/``Integer``/``Choice``/``Binary`` variables for ``MixedVariableGA`` and NSGA-II's
  mixed-variable operators. ``_evaluate`` accepts both (dict candidates are turned into vectors
  with :meth:`ModelProblem.vector_from_variables`), and so do the problems' ``decode``.
* **Parallel evaluation.** ``workers=N`` (and ``ray_address=...``) evaluates each population on
  a :class:`~optishear_moo.search.pool.RayPool` of N replicas of the problem, built from the
  arguments the problem was constructed with; results come back in order and equal local ones.
* Other ``Problem`` keyword arguments (``callback``, ``replace_nan_values_by``, ``strict``...)
  pass through to pymoo.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import torch
from pymoo.core.problem import Problem

_LIVE: weakref.WeakValueDictionary[str, ModelProblem] = weakref.WeakValueDictionary()


def problem_fingerprint(kind: str, model, calibration: torch.Tensor | None, *settings) -> str:
    """Identifies a problem by its class, model config, calibration tokens and settings."""
    digest = hashlib.sha256(kind.encode())
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if hasattr(config, "to_json_string") else repr(config)).encode())
    if calibration is not None:
        digest.update(calibration.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr(settings).encode())
    return digest.hexdigest()


class ModelProblem(Problem):
    """Base of the problems that prune a model (see the module docstring).

    Subclasses call ``super().__init__(..., exclude_from_serialization=[...], fingerprint=...)``
    and implement :meth:`_evaluate_vectors` (``X``: ``(n, n_var)`` vectors) and
    :meth:`vector_from_variables`.
    """

    def __init_subclass__(cls, **kwargs):
        """Record how each problem is constructed (class, arguments), so workers can build replicas."""
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        def recording_init(self, *args, **kwargs):
            if not hasattr(self, "construction"):
                self.construction = (type(self), args, kwargs)
            init(self, *args, **kwargs)

        recording_init.__doc__, recording_init.__wrapped__ = init.__doc__, init
        cls.__init__ = recording_init

    def __init__(self, *, fingerprint: str, exclude_from_serialization, workers=None,
                 ray_address: str | None = None, **kwargs):
        if kwargs.get("elementwise"):
            raise ValueError(f"{type(self).__name__} evaluates whole populations at once (elementwise=True "
                             "is not supported); spread evaluation over workers with workers=N instead")
        super().__init__(exclude_from_serialization=list(exclude_from_serialization), **kwargs)
        self.fingerprint = fingerprint
        _LIVE[fingerprint] = self
        self.pool = None
        if workers is not None and not isinstance(workers, int):
            self.pool = workers  # a RayPool built by the caller
        elif workers is not None:
            from .pool import RayPool

            self.pool = RayPool(self, workers, ray_address)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["pool"] = None  # workers and the construction arguments (the model) are never serialised
        state["construction"] = None
        return state

    # serialisation ---------------------------------------------------------------------------
    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reattach()

    @property
    def detached(self) -> bool:
        return any(getattr(self, name, None) is None for name in self.exclude_from_serialization or ())

    def reattach(self, live: ModelProblem | None = None) -> bool:
        """Take the excluded attributes (model, caches) from ``live`` (default: the live problem
        with the same fingerprint); returns whether the problem is attached afterwards."""
        live = live if live is not None else _LIVE.get(getattr(self, "fingerprint", None))
        if self.detached and live is not None and live is not self and not live.detached:
            for name in self.exclude_from_serialization:
                self.__dict__[name] = getattr(live, name)
        return not self.detached

    def _check_attached(self) -> None:
        if self.detached and not self.reattach():
            raise ValueError(
                f"this {type(self).__name__} was restored from a checkpoint or copy without its model "
                "(models are never serialised): build the problem again with the same model and calibration "
                "before loading the checkpoint (it then re-attaches itself), or set algorithm.problem to "
                "the problem you built")

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

    def _evaluate(self, X, out, *args, **kwargs):
        self._check_attached()
        X = self.as_vectors(X)
        if getattr(self, "pool", None) is None:
            self._evaluate_vectors(X, out, *args, **kwargs)
            return
        groups = self.evaluation_groups(X)
        results = self.pool.map("evaluate", [X[group] for group in groups])
        for key in ("F", "G"):
            if key in results[0]:
                out[key] = _in_order(groups, [result[key] for result in results], len(X))

    def evaluation_groups(self, X: np.ndarray) -> list:
        """How a population is handed to workers: index groups evaluated together (a problem may
        keep candidates that share expensive work in one group)."""
        return self.pool.groups(len(X))

    def stage_scores(self, X, stage) -> list[float]:
        """``stage_score`` of every candidate (on the workers when there are some)."""
        X = self.as_vectors(X)
        if getattr(self, "pool", None) is None:
            return [self.stage_score(x, stage) for x in X]
        groups = self.pool.groups(len(X))
        scores = self.pool.map("stage_scores", [X[group] for group in groups], stage)
        return _in_order(groups, scores, len(X)).tolist()

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
