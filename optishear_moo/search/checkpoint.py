"""Checkpoints of pymoo searches that are data, not programs: resumed by replaying the search.

A checkpointed search writes two files into its directory after every generation:

* ``evaluations.jsonl`` – every evaluation in the order the algorithm asked for it, one JSON
  object per candidate: ``{"generation", "X", "F", "G"}``, and every score of a staged
  selection (multi-fidelity or training-aware survival): ``{"generation", "stage", "X",
  "score"}``.
* ``state.json`` – the format, the writer's version, the driver, the algorithm's class, the
  settings the run was made with, the problem's fingerprint (its class, settings, calibration
  tokens and a hash of the model's weights), the generations and evaluations done, how many
  records and bytes of ``evaluations.jsonl`` belong to them, whether the run had finished, the
  driver's own state (e.g. EvoPress's choice of database method) and the current front
  (``X``/``F`` of the algorithm's optimum, for readers).

Resuming builds the algorithm again from its settings, seeds it the same way, and runs the
finished generations again with every evaluation answered from ``evaluations.jsonl`` instead of
the model: pymoo is deterministic given its seed and the values it receives, so the algorithm
arrives in exactly the state it had – population, random generator, archives, survival state –
for any pymoo algorithm, and the run goes on from there. Each replayed candidate must equal the
recorded one, so a changed setting that slipped through is caught instead of silently giving
another search.

Nothing is unpickled and nothing read can run code: ``state.json`` and the log are parsed as
JSON and every field is checked (types, shapes, counts); a damaged or altered file is refused
with a message naming it. Settings are compared with the caller's, never copied from the file.
Writes never follow links (see :mod:`optishear_moo.outputs`), and the directory is locked
against a second run while one writes there.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from pathlib import Path

import numpy as np

from ..errors import SettingError, param
from ..outputs import DirectoryLock, append_durably, read_untrusted, remove, truncate, write_atomically

CHECKPOINT_FORMAT = "optishear-moo/checkpoint-v3"
STATE = "state.json"
LOG = "evaluations.jsonl"
STATE_LIMIT = 64 << 20  # bytes: a state.json this program writes is far smaller
BUDGETS = ("n_gen", "n_evals")  # the settings a resumed search may raise: it then runs on


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file and what to do."""


def _stage_key(stage) -> dict | str:
    return dataclasses.asdict(stage) if dataclasses.is_dataclass(stage) else repr(stage)


def _numbers(values, what: str, length: int | None = None) -> list[float]:
    if not isinstance(values, list) or (length is not None and len(values) != length):
        raise CheckpointError(f"{what} is not a list of {length} numbers")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{what} holds {value!r}, which is no number")
    return values


def _json(value) -> list:
    return np.asarray(value, dtype=float).tolist()


class EvaluationLog:
    """What a checkpointed search evaluated, in order: recorded while it runs, replayed on resume.

    A problem holding a log (``problem.log``) hands every evaluation and stage score to it:
    :meth:`record_evaluations` / :meth:`record_stage` while the search runs live, and takes them
    from :meth:`replay_evaluations` / :meth:`replay_stage` while a resumed search replays.
    """

    def __init__(self, records: list[dict] | None = None):
        self.generation = 1
        self.pending: list[str] = []
        self._replay = deque(records or [])

    @property
    def replaying(self) -> bool:
        return bool(self._replay)

    def record_evaluations(self, X, out: dict) -> None:
        F = np.asarray(out["F"], dtype=float).reshape(len(X), -1)
        G = out.get("G")
        G = np.zeros((len(X), 0)) if G is None else np.asarray(G, dtype=float).reshape(len(X), -1)
        for x, f, g in zip(X, F, G):
            self.pending.append(json.dumps({"generation": self.generation, "X": _json(x), "F": _json(f),
                                            "G": _json(g)}))

    def record_stage(self, X, stage, scores) -> None:
        for x, score in zip(X, scores):
            self.pending.append(json.dumps({"generation": self.generation, "stage": _stage_key(stage),
                                            "X": _json(x), "score": float(score)}))

    def _next(self, x, kind: str) -> dict:
        if not self._replay:
            raise CheckpointError("the checkpoint's log ended before the replay did: it does not belong to "
                                  "these settings; start a new run")
        record = self._replay.popleft()
        if ("stage" in record) != (kind == "stage") or record["generation"] != self.generation or not (
                np.array_equal(np.asarray(record["X"], dtype=float), np.asarray(x, dtype=float))):
            raise CheckpointError(f"the search did not replay its checkpoint (generation {self.generation} "
                                  "asked for another candidate than the log holds): it was run with other "
                                  "settings or another version; start a new run")
        return record

    def replay_evaluations(self, X, n_obj: int, n_constr: int) -> dict:
        records = [self._next(x, "evaluation") for x in X]
        F = np.array([_numbers(r["F"], "an objective vector", n_obj) for r in records], dtype=float)
        G = np.array([_numbers(r["G"], "a constraint vector", n_constr) for r in records], dtype=float)
        return {"F": F, "G": G.reshape(len(X), n_constr)} if n_constr else {"F": F}

    def replay_stage(self, X, stage) -> list[float]:
        records = [self._next(x, "stage") for x in X]
        if any(record["stage"] != _stage_key(stage) for record in records):
            raise CheckpointError("the search did not replay its checkpoint (a selection stage differs): "
                                  "start a new run")
        return [float(record["score"]) for record in records]


class Checkpoint:
    """The checkpoint of one search in ``directory`` (see the module docstring).

    Opening it takes the directory's lock (released by :meth:`close`), and with ``resume`` reads
    and checks what is there: the driver and every setting in ``settings`` must equal the saved
    ones (the keys in ``extensible`` may grow, e.g. the number of generations), and
    :meth:`check_problem` compares the problem's fingerprint. Without ``resume`` a previous
    checkpoint there is removed.
    """

    def __init__(self, directory: str | Path, driver: str, settings: dict | None = None,
                 resume: bool = False):
        self.directory = Path(directory)
        self.driver, self.settings, self.resume = driver, dict(settings or {}), resume
        self.lock = DirectoryLock(self.directory).acquire()
        try:
            self.state = self._open()
        except BaseException:
            self.lock.release()
            raise
        self.driver_state: dict = dict(self.state.get("driver_state", {})) if self.state else {}

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def generation(self) -> int:
        return self.state["generation"] if self.state else 0

    def _open(self) -> dict | None:
        if not self.resume:
            for name in (STATE, LOG):
                remove(self.directory / name)
            return None
        state = read_state(self.directory)
        if state["driver"] != self.driver:
            raise CheckpointError(f"the checkpoint in {self.directory} is of a {state['driver']} run, not "
                                  f"{self.driver}: resume it with that command, or start a new run")
        compare_settings(state["settings"], self.settings, self.directory)
        return state

    def check_problem(self, fingerprint: str, algorithm: str) -> None:
        """The resumed problem and algorithm must be those the checkpoint was written with."""
        if not self.state:
            return
        if self.state["algorithm"] != algorithm:
            raise CheckpointError(f"the checkpoint in {self.directory} was written by "
                                  f"{self.state['algorithm']}, not {algorithm}: resume it with the same "
                                  f"algorithm")
        if self.state["fingerprint"] != fingerprint:
            raise CheckpointError(f"the checkpoint in {self.directory} was written for another model, other "
                                  "calibration windows or other problem settings: resume with the same "
                                  "ones, or start a new run")

    def records(self, n_var: int) -> list[dict]:
        """The saved records to replay (checked), after cutting the log to the saved generations."""
        if not self.state:
            return []
        path = self.directory / LOG
        size = self.state["log_bytes"]
        data = read_untrusted(path, limit=max(size, 1) * 4 + (1 << 20)) if size else b""
        if len(data) < size:
            raise CheckpointError(f"{path} is shorter than its checkpoint says ({len(data)} of {size} "
                                  f"bytes): start a new run")
        lines = data[:size].decode("utf-8", errors="replace").splitlines()
        records = [_record(line, number, path, n_var) for number, line in enumerate(lines, 1)]
        if len(records) != self.state["records"]:
            raise CheckpointError(f"{path} holds {len(records)} records where its checkpoint says "
                                  f"{self.state['records']}: start a new run")
        if len(data) > size:
            truncate(path, size)  # a generation interrupted after its records were appended
        return records

    def save(self, algorithm, log: EvaluationLog, fingerprint: str, front: dict | None = None) -> None:
        """Append the generation's records, then write ``state.json`` (both flushed to disk)."""
        from .._version import __version__

        path = self.directory / LOG
        records = (self.state or {}).get("records", 0) + len(log.pending)
        size = append_durably(path, "".join(line + "\n" for line in log.pending)) if log.pending else (
            (self.state or {}).get("log_bytes", 0))
        log.pending.clear()
        self.state = {"format": CHECKPOINT_FORMAT, "written_by": f"optishear-moo {__version__}",
                      "driver": self.driver, "algorithm": type(algorithm).__name__, "settings": self.settings,
                      "fingerprint": fingerprint, "generation": int(algorithm.n_iter) - 1,
                      "n_eval": int(algorithm.evaluator.n_eval), "records": records, "log_bytes": size,
                      "finished": not algorithm.has_next(), "seed": algorithm.seed,
                      "driver_state": self.driver_state, "front": front or {}}
        write_atomically(self.directory / STATE, json.dumps(self.state, indent=1))


_STATE_FIELDS = {"format": str, "written_by": str, "driver": str, "algorithm": str, "settings": dict,
                 "fingerprint": str, "generation": int, "n_eval": int, "records": int, "log_bytes": int,
                 "finished": bool, "driver_state": dict}


def read_state(directory: str | Path) -> dict:
    """The checked ``state.json`` of a checkpoint directory."""
    directory = Path(directory)
    path = directory / STATE
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{directory} holds no checkpoint (no {STATE}): start a new run instead")
    try:
        state = json.loads(read_untrusted(path, STATE_LIMIT))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({' '.join(str(error).split())}): "
                              "start a new run") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"{path} is a checkpoint of format {found!r}, which this optishear-moo does "
                              f"not read (it reads {CHECKPOINT_FORMAT}): start a new run")
    for field, kind in _STATE_FIELDS.items():
        value = state.get(field)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise CheckpointError(f"{path} has no valid {field!r}: start a new run")
    return state


def _record(line: str, number: int, path: Path, n_var: int) -> dict:
    where = f"{path}, line {number}"
    try:
        record = json.loads(line)
    except ValueError:
        raise CheckpointError(f"{where} is not a record this program wrote: start a new run") from None
    if not isinstance(record, dict) or not isinstance(record.get("generation"), int):
        raise CheckpointError(f"{where} is not a record this program wrote: start a new run")
    try:
        _numbers(record.get("X"), "its candidate", n_var)
        if "stage" in record:
            score = record.get("score")
            if not isinstance(record["stage"], (dict, str)) or isinstance(score, bool) or not isinstance(
                    score, (int, float)):
                raise CheckpointError("its stage score is malformed")
        else:
            _numbers(record.get("F"), "its objectives")
            _numbers(record.get("G"), "its constraints")
    except CheckpointError as error:
        raise CheckpointError(f"{where}: {error}; start a new run") from None
    return record


def compare_settings(saved: dict, current: dict, directory, extensible=BUDGETS) -> None:
    """A :class:`~optishear_moo.errors.SettingError` naming the first setting whose value differs
    from the checkpoint's (a key of ``extensible`` may only grow)."""
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name), current.get(name)
        if name in extensible and isinstance(old, int) and isinstance(new, int):
            if new < old:
                raise SettingError(f"the run in {directory} already did {param(name)} {old}; resume with "
                                   f"{param(name)} {old} or more")
            continue
        if not _same(old, new):
            raise SettingError(f"{param(name)} is {new!r} here but the run in {directory} was made with "
                               f"{old!r}: resume with the same settings, or start a new run")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        return numbers and math.isclose(a, b, rel_tol=1e-12)
    return a == b
