"""Checkpoints of pymoo searches that cannot run code, written after every generation.

Directory layout (format ``optishear-moo/checkpoint-v2``):

* ``algorithm.pkl`` – the pymoo algorithm after the last finished generation: population,
  archive/optimum, history (with ``save_history``), termination state and the NumPy random
  generator state. The problem inside it has its model and dense caches removed
  (``exclude_from_serialization``) and the user's pymoo ``Callback`` is left out (pass it again
  on resume); :func:`~optishear_moo.search.run_search` with ``resume=True`` attaches a freshly
  built problem.
* ``state.json`` – generation count, evaluations, seed, whether the run had finished, the
  caller's configuration, and ``signature``: an HMAC-SHA256 of all of it and of
  ``algorithm.pkl`` under a secret key of the user (:func:`checkpoint_key`), kept outside every
  run directory.
* ``evaluations.jsonl`` – one line per evaluated candidate: generation, X, F, G.

Reading checks the signature first, so a checkpoint this user's optishear-moo did not write
(a tampered file, or a run directory from a colleague or another machine) is refused unless the
caller trusts it deliberately (``trust=True``, the CLI's ``--trust-checkpoint``); even then
``algorithm.pkl`` is read by :class:`~optishear_moo.search.safe_pickle.DataUnpickler`, which
rebuilds data and never runs code. Checkpoints of optishear-moo 0.1 (format v1, unsigned) load
only when trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import secrets
from pathlib import Path

from pymoo.core.algorithm import Algorithm
from pymoo.core.callback import Callback

from . import safe_pickle

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "optishear-moo/checkpoint-v2"
READABLE_FORMATS = (CHECKPOINT_FORMAT, "optishear-moo/checkpoint-v1")
KEY_ENVIRONMENT = "OPTISHEAR_MOO_CHECKPOINT_KEY"


class CheckpointError(ValueError):
    """A checkpoint that cannot be (or must not be) read; the message names the file and the fix."""


def checkpoint_key_path() -> Path:
    """Where this user's checkpoint key lives: ``$OPTISHEAR_MOO_CHECKPOINT_KEY``, else
    ``$XDG_CONFIG_HOME/optishear-moo/checkpoint.key`` (``~/.config/...``)."""
    if os.environ.get(KEY_ENVIRONMENT):
        return Path(os.environ[KEY_ENVIRONMENT]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "optishear-moo" / "checkpoint.key"


def checkpoint_key(create: bool = True) -> bytes | None:
    """This user's secret key for signing checkpoints (32 random bytes, file mode 0600); made on
    first use when ``create``."""
    path = checkpoint_key_path()
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _signature(key: bytes, state: dict, data: bytes) -> str:
    unsigned = {k: v for k, v in state.items() if k != "signature"}
    message = (CHECKPOINT_FORMAT.encode() + b"\0" + hashlib.sha256(data).digest()
               + json.dumps(unsigned, sort_keys=True).encode())
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomically(path: Path, data: bytes) -> None:
    _write_durably(_tmp(path), data)
    _tmp(path).replace(path)


def _finish_interrupted_save(directory: Path) -> None:
    """A save writes ``algorithm.pkl.tmp`` and ``state.json.tmp`` in full, then renames the first
    and the second. Interrupted before the first rename, the previous pair stands (the
    temporaries go); between the renames, the new state is put in place."""
    pkl, state = _tmp(directory / "algorithm.pkl"), _tmp(directory / "state.json")
    if pkl.exists():
        pkl.unlink()
        state.unlink(missing_ok=True)
    elif state.exists():
        state.replace(directory / "state.json")


def save_checkpoint(algorithm: Algorithm, directory: str | Path, config: dict | None = None) -> None:
    """Write ``algorithm`` (after a finished generation) to ``directory``, signed and atomically."""
    from .._version import __version__

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
        data = safe_pickle.dumps(algorithm)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise ValueError(f"{type(algorithm).__name__} cannot be checkpointed ({error}): run it without a "
                         "checkpoint directory") from None
    finally:
        algorithm.callback = callback
    state = {"format": CHECKPOINT_FORMAT, "written_by": f"optishear-moo {__version__}",
             "generation": generation, "n_eval": int(algorithm.evaluator.n_eval),
             "finished": not algorithm.has_next(), "seed": algorithm.seed, "config": config or {}}
    state["signature"] = _signature(checkpoint_key(), state, data)
    _write_durably(_tmp(directory / "algorithm.pkl"), data)  # both in full, then both renamed
    _write_durably(_tmp(directory / "state.json"), json.dumps(state, indent=2).encode())
    _tmp(directory / "algorithm.pkl").replace(directory / "algorithm.pkl")
    _tmp(directory / "state.json").replace(directory / "state.json")


def load_state(directory: str | Path) -> dict:
    """The ``state.json`` of a checkpoint directory (not yet authenticated)."""
    directory = Path(directory)
    _finish_interrupted_save(directory)
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} holds no checkpoint (no state.json): start a new search instead")
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}): start a new search") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"{path} is a checkpoint of format {found!r}, which this optishear-moo does "
                              f"not read (it reads {', '.join(READABLE_FORMATS)}): start a new search")
    for field, kind in (("generation", int), ("n_eval", int), ("config", dict)):
        if not isinstance(state.get(field), kind):
            raise CheckpointError(f"{path} has no valid {field!r}: start a new search")
    return state


def load_checkpoint(directory: str | Path, trust: bool = False) -> tuple[Algorithm, dict]:
    """``(algorithm, state)`` from a checkpoint directory; the algorithm's problem is detached.

    Refuses (:class:`CheckpointError`) a checkpoint whose signature does not match this user's
    key, unless ``trust=True``; what loads is data only either way.
    """
    directory = Path(directory)
    state = load_state(directory)
    path = directory / "algorithm.pkl"
    if not path.is_file():
        raise CheckpointError(f"{directory} has state.json but no algorithm.pkl: start a new search")
    data = path.read_bytes()
    if not trust:
        key = checkpoint_key(create=False)
        expected = _signature(key, state, data) if key is not None else None
        if state.get("format") != CHECKPOINT_FORMAT or not isinstance(state.get("signature"), str) or (
                expected is None or not hmac.compare_digest(expected, state["signature"])):
            origin = (f"written by {state.get('written_by', 'optishear-moo 0.1')} without a signature"
                      if "signature" not in state else "signed with another key or changed since")
            raise CheckpointError(
                f"the checkpoint in {directory} was not written by this user's optishear-moo ({origin}); "
                "resume a run directory from elsewhere only if you trust it, with --trust-checkpoint "
                "(Python: trust=True)")
    try:
        algorithm = safe_pickle.loads(data)
    except safe_pickle.Refused as error:
        raise CheckpointError(f"{path} was refused: {error}") from None
    except Exception as error:  # truncated or corrupt data surfaces as many types
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}: {error}): start a new "
                              "search") from None
    if not isinstance(algorithm, Algorithm):
        raise CheckpointError(f"{path} does not hold a pymoo algorithm")
    return algorithm, state


def truncate_evaluations(directory: Path, generation: int) -> None:
    """Drop evaluation lines of a generation that had not been checkpointed when interrupted."""
    path = directory / "evaluations.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["generation"] <= generation]
        _write_atomically(path, ("\n".join(kept) + "\n" if kept else "").encode())
