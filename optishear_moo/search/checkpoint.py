"""Safe checkpoints of pymoo searches, written after every generation by :func:`run_search`.

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

from pymoo.core.algorithm import Algorithm
from pymoo.core.callback import Callback

from .._moved import MOVED_MODULES

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
    ("optishear_moo.search.selection", "compare_by_cv_then_fitness"),
}
_PYMOO_NUMERICAL_FUNCTIONS = ("pymoo.algorithms.", "pymoo.operators.", "pymoo.util.", "pymoo.functions.",
                              "pymoo.core.", "pymoo.termination.", "pymoo.constraints.")
_ALLOWED_BUILTINS = {"object", "set", "frozenset", "slice", "range", "complex", "tuple", "list",
                     "dict", "int", "float", "bool", "str", "bytes", "bytearray"}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler restricted to data: see the module docstring for what it accepts."""

    def find_class(self, module: str, name: str):
        module = MOVED_MODULES.get(module, module)  # checkpoints written before the 0.2 layout
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


def truncate_evaluations(directory: Path, generation: int) -> None:
    """Drop evaluation lines of a generation that had not been checkpointed when interrupted."""
    path = directory / "evaluations.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["generation"] <= generation]
        _write_atomically(path, ("\n".join(kept) + "\n" if kept else "").encode())
