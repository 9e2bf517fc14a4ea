"""Weights streamed from the checkpoint on disk, for a model larger than host memory.

``load_model(directory, offload="disk")`` builds the model with its decoder blocks and its input
and output embeddings empty (on the ``meta`` device) and reads each of them from the checkpoint's
safetensors files when it is used, one module at a time:

* held for a turn (:func:`held`, what every block-by-block path of the package does through
  :func:`optishear_moo.activations.on_device`): read onto the compute device, dropped at the end
  of the turn; a module the caller changed in place (pruning it) is kept instead, in host memory,
  so no change is ever lost (such a model ends in host memory);
* called outside a turn (a full forward: perplexity, zero-shot): read into host memory for that
  call and dropped after it; an embedding table reads only the rows of the tokens it is given;
* sliced (:func:`parameter_rows`): the rows asked for, read alone (the LM head a vocabulary slice
  at a time, :func:`optishear_moo.evaluation.divergence.distances_by_vocab_slices`).

Host memory then holds the small modules (norms, rotary tables), the one streamed module in use
and what the caller computes. The files are read straight into the tensors' memory, with no
memory map whose pages would stay counted in the process's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

_RECORD = "_optishear_streamed"
_MODEL_RECORD = "_optishear_streams"


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_HEADER_LIMIT = 100 << 20


def _tensor_places(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]:
    """``{name: (dtype, shape, first byte, end byte)}`` of a safetensors file, from its header
    (an untrusted file: every entry is checked against the file's size)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise ValueError(f"{path} is not a safetensors file (bad header length): re-save the model")
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise ValueError(f"{path} has a damaged safetensors header: re-save the model") from error
    places = {}
    for name, entry in (header.items() if isinstance(header, dict) else ()):
        if name == "__metadata__":
            continue
        try:
            dtype, shape = _DTYPES[entry["dtype"]], tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} describes tensor {name!r} in a way this reader does not know "
                             f"({type(error).__name__}): re-save the model in a float dtype") from error
        numel = 1
        for n in shape:
            numel *= n
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= size - 8 - length or (
                end - begin != numel * dtype.itemsize):
            raise ValueError(f"{path}: tensor {name!r} does not fit the file: re-save the model")
        places[name] = (dtype, shape, 8 + length + begin, 8 + length + end)
    return places


def _read_into(handle, begin: int, buffer: memoryview, key: str) -> None:
    """Fill ``buffer`` from the open file ``handle`` at byte ``begin``."""
    handle.seek(begin)
    done = 0
    while done < len(buffer):
        count = handle.readinto(buffer[done:])
        if not count:
            raise ValueError(f"{handle.name} ends inside tensor {key!r}: re-save the model")
        done += count


class SafetensorsWeights:
    """Where each tensor of a safetensors checkpoint (one file or shards with an index) is, read
    one tensor at a time in ``dtype``: straight from the file into the tensor's memory, with no
    memory map that would keep the file's pages counted in the process's memory."""

    def __init__(self, directory: str | Path, dtype: torch.dtype):
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            mapping = json.loads(index.read_text()).get("weight_map")
            if not isinstance(mapping, dict):
                raise ValueError(f"{index} has no weight_map: re-save the model with save_pretrained")
            files = {str(key): directory / Path(str(name)).name for key, name in mapping.items()}
        elif (directory / "model.safetensors").is_file():
            single = directory / "model.safetensors"
            files = dict.fromkeys(_tensor_places(single), single)
        else:
            raise ValueError(f"{directory} holds no safetensors weights (model.safetensors or an index): "
                             "streaming from disk needs a directory written by save_pretrained")
        missing = sorted({str(path.name) for path in files.values() if not path.is_file()})
        if missing:
            raise ValueError(f"{directory} lacks the shards {', '.join(missing)}: re-download or re-save it")
        self.directory, self.dtype, self.files = directory, dtype, files
        self.places = {}
        for path in sorted(set(files.values())):
            self.places.update({key: (path, *place) for key, place in _tensor_places(path).items()
                                if files.get(key) == path})
        absent = sorted(set(files) - set(self.places))
        if absent:
            raise ValueError(f"{directory}: the index names tensors its shards lack "
                             f"({', '.join(absent[:3])}): re-save the model")

    def keys(self) -> set[str]:
        return set(self.files)

    def read(self, key: str, device: str | torch.device = "cpu", rows: tuple[int, int] | None = None
             ) -> torch.Tensor:
        """Tensor ``key`` on ``device``, in this checkpoint's ``dtype`` when it is a float; only its
        rows ``start:stop`` along the first dimension when ``rows=(start, stop)``."""
        path, dtype, shape, begin, end = self.places[key]
        if rows is not None:
            start, stop = rows
            if not shape or not 0 <= start <= stop <= shape[0]:
                raise ValueError(f"rows {start}:{stop} are outside tensor {key!r} shaped {shape}")
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            begin, end = begin + start * row_bytes, begin + stop * row_bytes
            shape = (stop - start, *shape[1:])
        device = torch.device(device)
        tensor = torch.empty(shape, dtype=dtype)  # (pinned buffers, reused, are for later)
        if end > begin:
            with open(path, "rb", buffering=0) as handle:
                _read_into(handle, begin, memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), key)
        wanted = self.dtype if tensor.is_floating_point() else tensor.dtype
        return tensor.to(device=device, dtype=wanted)

    def read_rows(self, key: str, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (sorted, distinct) of tensor ``key`` in host memory, each run of
        consecutive rows read at once."""
        index = index.tolist()
        runs, start = [], 0
        for i in range(1, len(index) + 1):
            if i == len(index) or index[i] != index[i - 1] + 1:
                runs.append(self.read(key, rows=(index[start], index[i - 1] + 1)))
                start = i
        return torch.cat(runs) if runs else self.read(key, rows=(0, 0))

    def sample(self, key: str, step: int, count: int) -> torch.Tensor:
        """The first ``count`` of every ``step``-th value of tensor ``key`` (flattened), in this
        checkpoint's ``dtype``, reading only those values."""
        path, dtype, shape, begin, end = self.places[key]
        size = dtype.itemsize
        positions = range(0, (end - begin) // size, step)[:count]
        with open(path, "rb", buffering=0) as handle:
            if positions and (positions[-1] + 1) * size <= 1 << 20:  # a short span: read it at once
                raw = bytearray((positions[-1] + 1) * size)
                _read_into(handle, begin, memoryview(raw), key)
                values = torch.frombuffer(raw, dtype=dtype)[::step]
            else:
                raw = bytearray(len(positions) * size)
                for i, position in enumerate(positions):
                    _read_into(handle, begin + position * size, memoryview(raw)[i * size:(i + 1) * size], key)
                values = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return values.to(dtype=self.dtype if values.is_floating_point() else values.dtype, copy=True)


class _Streamed:
    """What a streamed module needs: its parameters' places and the checkpoint keys they come from."""

    def __init__(self, weights: SafetensorsWeights, entries: list[tuple[nn.Module, str, str]]):
        self.weights, self.entries = weights, entries
        self.shapes = [module._parameters[name].shape for module, name, _ in entries]
        self.loaded: torch.device | None = None  # where the weights are while read in
        self.compact = False  # an embedding holding only the rows one call uses (load_rows)
        self.padding_idx: int | None = None  # the embedding's, set aside meanwhile
        self.holds = 0  # turns under way (held)
        self.resident = False  # changed while held: an ordinary module from then on

    def load(self, device: torch.device) -> None:
        for module, name, key in self.entries:
            module._parameters[name] = nn.Parameter(self.weights.read(key, device), requires_grad=False)
        self.loaded = device

    def drop(self) -> None:
        for (module, name, _), shape in zip(self.entries, self.shapes):
            old = module._parameters[name]
            module._parameters[name] = nn.Parameter(torch.empty(shape, dtype=old.dtype, device="meta"),
                                                    requires_grad=False)
        if self.compact:
            self.entries[0][0].padding_idx, self.padding_idx = self.padding_idx, None
        self.loaded, self.compact = None, False

    def load_rows(self, module: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
        """Read only the rows of the embedding table that ``input_ids`` use, as a compact table
        the returned ids index (the module's forward then runs unchanged: scaled embeddings keep
        their scale)."""
        distinct, inverse = torch.unique(input_ids, return_inverse=True)
        (owner, name, key), = self.entries
        table = self.weights.read_rows(key, distinct.cpu())
        owner._parameters[name] = nn.Parameter(table, requires_grad=False)
        # (the padding index only matters to gradients, and it may lie outside the cut table)
        self.padding_idx, module.padding_idx = module.padding_idx, None
        self.loaded, self.compact = torch.device("cpu"), True
        return inverse


def record(module: nn.Module) -> _Streamed | None:
    """The streaming record of ``module`` when it is streamed from disk and not resident."""
    streamed = module.__dict__.get(_RECORD)
    return streamed if streamed is not None and not streamed.resident else None


def is_streamed(model: nn.Module) -> bool:
    """Whether some of ``model``'s modules are streamed from disk (and not resident)."""
    return any(not streamed.resident for streamed in model.__dict__.get(_MODEL_RECORD, ()))


@contextlib.contextmanager
def held(module: nn.Module, device: torch.device, keep: bool = True) -> Iterator[nn.Module]:
    """``module`` (streamed) read onto ``device`` for the duration. On exit it is dropped, or, with
    ``keep``, kept in host memory for good (the caller changed it in place)."""
    streamed = record(module)
    if streamed is None:
        raise ValueError("held() needs a module streamed from disk")
    if streamed.loaded is not None and (streamed.loaded != device or streamed.compact):
        streamed.drop()
    if streamed.loaded is None:
        streamed.load(device)
    streamed.holds += 1
    try:
        yield module
    finally:
        streamed.holds -= 1
        if streamed.holds == 0:
            if keep:
                module.to("cpu")
                streamed.resident = True
            else:
                streamed.drop()


def _before_call(module: nn.Module, args):
    streamed = record(module)
    if streamed is None or streamed.loaded is not None or "forward" in vars(module):
        return None  # (a stand-in forward, which reads no weight, is left be)
    if (isinstance(module, nn.Embedding) and len(streamed.entries) == 1 and args
            and isinstance(args[0], torch.Tensor) and not torch.is_grad_enabled()):
        return (streamed.load_rows(module, args[0]), *args[1:])
    streamed.load(torch.device("cpu"))
    return None


def _after_call(module: nn.Module, _args, _output) -> None:
    streamed = record(module)
    if streamed is not None and streamed.loaded is not None and streamed.holds == 0:
        streamed.drop()


def give_freed_memory_back() -> None:
    """Have glibc map every allocation of 1 MiB or more on its own, so that a dropped module's
    memory returns to the system: by default its threshold grows with the sizes freed, and
    freed tensors below it stay in the heap, counted in the process's memory. Called before a
    streamed model's tokenizer is loaded: called after it, the 3B shape's peak was 2.2 GiB instead
    of 1.3 GiB in 2 of 3 runs of an ad hoc probe."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def stream(model: nn.Module, modules: list[nn.Module], weights: SafetensorsWeights) -> nn.Module:
    """Make ``modules`` of ``model`` (their parameters on ``meta``) read from ``weights`` when
    used. A parameter the checkpoint stores under a tied name (an output embedding sharing the
    input one) reads that tensor."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    prefixes = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})  # transformers' {tied: source}
    keys = weights.keys()
    for module in modules:
        prefix = prefixes[id(module)]
        entries = []
        for name, parameter in module.named_parameters(remove_duplicate=False):
            full = f"{prefix}.{name}" if prefix else name
            stored = [n for n in [full, *names[id(parameter)], tied.get(full)] if n in keys]
            if not stored:
                raise ValueError(f"the checkpoint in {weights.directory} has no tensor {full!r}")
            if tuple(weights.places[stored[0]][2]) != tuple(parameter.shape):
                raise ValueError(f"the checkpoint in {weights.directory} holds {stored[0]!r} shaped "
                                 f"{tuple(weights.places[stored[0]][2])}, its config.json asks for "
                                 f"{tuple(parameter.shape)}: re-save the model")
            owner_name, _, attribute = name.rpartition(".")
            entries.append((module.get_submodule(owner_name) if owner_name else module, attribute, stored[0]))
        module.__dict__[_RECORD] = _Streamed(weights, entries)
        model.__dict__.setdefault(_MODEL_RECORD, []).append(module.__dict__[_RECORD])
        module.register_forward_pre_hook(_before_call)
        module.register_forward_hook(_after_call, always_call=True)
    return model


def parameter_rows(module: nn.Module, name: str, start: int, stop: int, device: torch.device
                   ) -> torch.Tensor | None:
    """Rows ``start:stop`` of ``module``'s parameter ``name`` (None when it has none) on ``device``:
    read from the checkpoint alone when the module is streamed and not read in."""
    streamed = record(module)
    if streamed is not None and (streamed.loaded is None or streamed.compact):
        for owner, attribute, key in streamed.entries:
            if owner is module and attribute == name:
                return streamed.weights.read(key, device, rows=(start, stop))
    parameter = getattr(module, name, None)
    return None if parameter is None else parameter[start:stop].to(device)


def make_resident(model: nn.Module) -> nn.Module:
    """Read every streamed module of ``model`` into host memory for good (before saving it)."""
    for module in model.modules():
        streamed = record(module)
        if streamed is not None:
            if streamed.loaded is None or streamed.compact:
                streamed.drop()
                streamed.load(torch.device("cpu"))
            module.to("cpu")
            streamed.resident = True
    return model


def sample_values(model: nn.Module, name: str, parameter: torch.Tensor, samples: int) -> torch.Tensor:
    """``samples`` evenly strided float32 values of parameter ``name`` of ``model``; a streamed
    parameter that is not read in is sampled from the checkpoint, touching only those values."""
    step = max(1, parameter.numel() // samples)
    if parameter.is_meta:
        module = model
        for part in name.split(".")[:-1]:
            module = getattr(module, part)
            streamed = record(module)
            if streamed is not None:
                key = next(k for m, a, k in streamed.entries if m._parameters.get(a) is parameter)
                return streamed.weights.sample(key, step, samples).float()
        raise ValueError(f"the parameter {name!r} is empty (meta) and not streamed from disk")
    return parameter.detach().reshape(-1)[::step][:samples].to("cpu", torch.float32).contiguous()
