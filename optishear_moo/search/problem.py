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

    def __init__(self, *, fingerprint: str, exclude_from_serialization, **kwargs):
        if kwargs.get("elementwise"):
            raise ValueError(f"{type(self).__name__} evaluates whole populations at once (elementwise=True "
                             "is not supported); spread evaluation over workers with workers=N instead")
        super().__init__(exclude_from_serialization=list(exclude_from_serialization), **kwargs)
        self.fingerprint = fingerprint
        _LIVE[fingerprint] = self

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
        self._evaluate_vectors(self.as_vectors(X), out, *args, **kwargs)

    def _evaluate_vectors(self, X: np.ndarray, out: dict, *args, **kwargs) -> None:
        raise NotImplementedError
