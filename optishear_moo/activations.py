"""Input statistics of prunable layers, gathered with forward hooks over calibration data.

Two modes:

* one-shot (:func:`collect_input_statistics`): one forward pass of the (dense) model with
  hooks on every prunable layer; only per-channel running sums are kept, never activations.
* sequential (:func:`sequential_blocks`): block by block, as Wanda and SparseGPT do. The
  inputs of block *l* are the outputs of blocks ``0..l-1`` *after* they were pruned; only one
  block's inputs (``n_samples x seq_len x hidden``) are held at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .data.calibration import check_calibration
from .models import streaming
from .models.adapters import PrunableLayer, get_adapter
from .models.placement import compute_device
from .models.placement import weights_device as model_device


class InputStatistics:
    """Running float32 statistics of the inputs ``x`` (``(..., in_features)``) of one layer.

    ``sum_sq[j]`` is the sum of ``x_j**2`` over all calibration tokens, so ``l2_norm`` is the
    ``‖X_j‖₂`` of Wanda. ``gram`` (``X Xᵀ``, ``(in, in)``) is kept only when asked for (SparseGPT).
    """

    def __init__(self, in_features: int, device: torch.device, with_gram: bool = False):
        self.count = 0
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.gram = (
            torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
            if with_gram
            else None
        )

    def update(self, inputs: torch.Tensor) -> None:
        """Accumulate a batch of inputs, reduced where they are (a block on the compute device
        of an offloaded model) and added here."""
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.count += x.shape[0]
        here = self.sum.device
        self.sum += x.sum(dim=0).to(here)
        self.sum_sq += x.square().sum(dim=0).to(here)
        if self.gram is not None and x.device == here:
            self.gram.addmm_(x.t(), x)
        elif self.gram is not None:
            self.gram.add_((x.t() @ x).to(here))

    def to(self, device: torch.device) -> InputStatistics:
        """These statistics with their per-channel sums on ``device`` (the Gram stays), for scoring
        a layer that sits there; ``self`` when they are there already."""
        if self.sum.device == torch.device(device):
            return self
        moved = InputStatistics.__new__(InputStatistics)
        moved.count, moved.gram = self.count, self.gram
        moved.sum, moved.sum_sq = self.sum.to(device), self.sum_sq.to(device)
        return moved

    @property
    def l2_norm(self) -> torch.Tensor:
        """``‖X_j‖₂`` per input channel, ``(in_features,)``."""
        return self.sum_sq.sqrt()

    @property
    def mean_sq(self) -> torch.Tensor:
        """Mean of ``x_j**2`` over tokens, ``(in_features,)``."""
        return self.sum_sq / max(self.count, 1)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.mean_sq - self.mean.square()).clamp_min(0.0)


def _statistics_device(weight: torch.Tensor) -> torch.device:
    return torch.device("cpu") if weight.is_meta else weight.device


@contextlib.contextmanager
def recording_inputs(
    layers: list[PrunableLayer], with_gram: bool = False
) -> Iterator[dict[str, InputStatistics]]:
    """Hooks that accumulate :class:`InputStatistics` per layer name; removed on exit.

    Layers that read the very same input tensor (q/k/v, gate/up) share one statistics object,
    accumulated once: the Gram matrix ``X Xᵀ`` of an input is computed and held once."""
    statistics = {  # kept with the weights; in host memory for weights streamed from disk
        layer.name: InputStatistics(layer.in_features, _statistics_device(layer.weight), with_gram)
        for layer in layers
    }
    previous: list = [None, None]  # the last input seen and its statistics
    first_seen: set[str] = set()
    aliases: set[str] = set()
    handles = []

    def record(name: str, x: torch.Tensor) -> None:
        if name in aliases or _paused[0]:
            return
        if name not in first_seen:
            first_seen.add(name)
            if x is previous[0]:  # fed the same tensor as the layer before it
                statistics[name] = previous[1]
                aliases.add(name)
                return
        statistics[name].update(x)
        previous[:] = [x, statistics[name]]

    try:
        for layer in layers:
            handles.append(layer.module.register_forward_hook(
                lambda _module, args, _output, name=layer.name: record(name, args[0])))
        yield statistics
    finally:
        previous[:] = [None, None]
        for handle in handles:
            handle.remove()


def _batches(calibration: torch.Tensor, batch_size: int, model: nn.Module | None = None
             ) -> list[torch.Tensor]:
    check_calibration(calibration, model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return list(torch.split(calibration, batch_size))


@torch.no_grad()
def collect_input_statistics(
    model: nn.Module,
    calibration: torch.Tensor,
    batch_size: int = 8,
    layers: list[PrunableLayer] | None = None,
    with_gram: bool = False,
    progress: bool = False,
) -> dict[str, InputStatistics]:
    """One-shot statistics of every prunable layer's inputs in one pass of ``model`` as it is."""
    layers = layers if layers is not None else get_adapter(model).prunable_layers(model)
    device = model_device(model)
    with recording_inputs(layers, with_gram) as statistics:
        for batch in tqdm(_batches(calibration, batch_size, model), desc="activation statistics",
                          disable=not progress, leave=False):
            final_hidden(model, batch.to(device))  # (the hooks record; no logits are formed)
    return statistics


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the first block's inputs are caught."""


@dataclass
class BlockInputs:
    """What the decoder blocks receive for every calibration batch.

    ``hidden[i]`` is the first block's input ``(batch, seq_len, hidden)`` for batch ``i``, in the
    model's dtype; ``kwargs[b][i]`` the keyword arguments the model passes to block ``b`` for
    batch ``i`` (attention mask, rotary position embeddings...). They differ between blocks of
    different layer types (Gemma 3's sliding and full attention, Mistral's sliding window), so a
    block replayed on its own must get its own.
    """

    hidden: list[torch.Tensor]
    kwargs: list[list[dict]]

    def block_kwargs(self, block: int) -> list[dict]:
        return self.kwargs[block]


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> BlockInputs:
    """Run the model's embeddings and keep every block's inputs, without running the blocks:
    the first block is run once to learn what blocks return, and every block is then replaced
    by a stand-in that records its arguments and passes its input through."""
    blocks = get_adapter(model).blocks(model)
    device = model_device(model)
    caught = BlockInputs([], [[] for _ in blocks])
    returns_tuple = [False]

    def stand_in(index):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                caught.hidden.append(hidden)
            caught.kwargs[index].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if index == len(blocks) - 1:
                raise _StopForward
            return (hidden,) if returns_tuple[0] else hidden
        return forward

    batches = _batches(calibration, batch_size, model)
    first = capture_first_block_output(model, batches[0][:1])
    returns_tuple[0] = isinstance(first, tuple)
    try:
        for index, block in enumerate(blocks):
            block.forward = stand_in(index)
        for batch in batches:
            with contextlib.suppress(_StopForward):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        for block in blocks:
            del block.forward
    return caught


_paused = [False]  # recording hooks ignore the probe below


def capture_first_block_output(model: nn.Module, batch: torch.Tensor):
    """What the first block returns on ``batch`` (a tensor or a tuple, by architecture); a probe
    that open :func:`recording_inputs` hooks do not count."""
    _paused[0] = True
    try:
        return run_until(model, get_adapter(model).blocks(model)[0], batch, "output")
    finally:
        _paused[0] = False


@torch.no_grad()
def run_until(model: nn.Module, module: nn.Module, input_ids: torch.Tensor, what: str = "input"):
    """Run ``model`` on ``input_ids`` only until ``module`` is reached; returns its first positional
    input (``what="input"``, the module does not run) or its output (``"output"``)."""
    caught = []

    def on_input(_module, args):
        caught.append(args[0])
        raise _StopForward

    def on_output(_module, _args, result):
        caught.append(result)
        raise _StopForward

    handle = (module.register_forward_pre_hook(on_input, prepend=True) if what == "input"
              else module.register_forward_hook(on_output))
    try:
        with contextlib.suppress(_StopForward):
            model(input_ids=input_ids.to(model_device(model)), use_cache=False)
    finally:
        handle.remove()
    return caught[0]


def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The LM head's inputs ``(batch, seq, hidden)`` for ``input_ids``, without computing logits."""
    return run_until(model, model.get_output_embeddings(), input_ids)


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One decoder block's output hidden states (blocks return a tensor or a tuple)."""
    output = block(hidden, **kwargs)
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device, home: torch.device, keep: bool = True):
    """``module`` moved to ``device`` for the duration and back to ``home`` (a no-op when they
    are the same). A module streamed from disk is read onto ``device`` and dropped afterwards,
    or kept in host memory when ``keep`` says the caller may have changed it
    (:func:`optishear_moo.models.streaming.held`)."""
    if streaming.record(module) is not None:
        with streaming.held(module, torch.device(device), keep):
            yield module
        return
    if device == home:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def to_device(value, device: torch.device):
    """``value`` with the tensors inside it (block keyword arguments: masks, rotary embeddings)
    moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


@dataclass
class BlockTurn:
    """One decoder block's turn in :func:`walk_blocks`: the block (on the compute device), its
    per-batch inputs ``hidden`` and keyword arguments ``kwargs``."""

    index: int
    block: nn.Module
    hidden: list[torch.Tensor]
    kwargs: list[dict]
    outputs: list[torch.Tensor] | None = None

    def run(self) -> list[torch.Tensor]:
        """The block's per-batch outputs on this turn's inputs, computed once: what the next block
        receives."""
        if self.outputs is None:
            self.outputs = [run_block(self.block, h, k) for h, k in zip(self.hidden, self.kwargs)]
        return self.outputs


@torch.no_grad()
def walk_blocks(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
                device: str | torch.device | None = None, progress: bool = False,
                desc: str = "blocks", changes: bool = True) -> Iterator[BlockTurn]:
    """The decoder blocks in order, one :class:`BlockTurn` each. When the consumer is done with a
    turn, the block's outputs (:meth:`BlockTurn.run`: computed then, after whatever the consumer
    changed in the block, unless it ran them itself) become the next turn's inputs.

    With a ``device`` other than where the weights are (by default the model's compute device,
    :mod:`optishear_moo.models.placement`), the model stays where it is and each block is on
    ``device`` for its turn; the hidden states live on ``device``. ``changes=False`` promises that
    the consumer leaves the blocks as they are, so blocks streamed from disk are dropped after
    their turn rather than kept in host memory.
    """
    adapter = get_adapter(model)
    home = model_device(model)
    device = compute_device(model) if device is None else torch.device(device)
    inputs = capture_block_inputs(model, calibration, batch_size)
    hidden = [h.to(device) for h in inputs.hidden]
    for index, block in enumerate(tqdm(adapter.blocks(model), desc=desc, disable=not progress, leave=False)):
        kwargs = [to_device(k, device) for k in inputs.block_kwargs(index)]
        with on_device(block, device, home, keep=changes):
            turn = BlockTurn(index, block, hidden, kwargs)
            yield turn
            hidden = turn.run()


@torch.no_grad()
def sequential_blocks(
    model: nn.Module,
    calibration: torch.Tensor,
    batch_size: int = 8,
    with_gram: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    changes: bool = True,
) -> Iterator[tuple[int, list[PrunableLayer], dict[str, InputStatistics]]]:
    """Walk the decoder blocks in order, yielding ``(index, layers, statistics)`` per block.

    The statistics describe the block's inputs as produced by the blocks before it *in their
    current state*: a consumer that prunes the yielded layers in place before asking for the
    next block gets the Wanda/SparseGPT sequential scheme. After the consumer returns, the
    block's outputs are recomputed through the (possibly pruned) block and become the next
    block's inputs. ``device`` and ``changes``: see :func:`walk_blocks` (the consumer sees the
    block's layers, and the statistics, there).
    """
    adapter = get_adapter(model)
    for turn in walk_blocks(model, calibration, batch_size, device, progress, changes=changes):
        layers = adapter.block_layers(turn.block, turn.index)
        with recording_inputs(layers, with_gram) as statistics:
            for h, k in zip(turn.hidden, turn.kwargs):  # not turn.run(): outputs come after pruning
                run_block(turn.block, h, k)
        yield turn.index, layers, statistics


@torch.no_grad()
def final_hidden_by_blocks(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
                           device: str | torch.device | None = None) -> list[torch.Tensor]:
    """The LM head's inputs for each calibration batch, the model run one block at a time on
    ``device`` (its compute device by default; the weights stay where they are). Hooks on the
    layers see every block once, as in a full forward."""
    adapter = get_adapter(model)
    device = compute_device(model) if device is None else torch.device(device)
    for turn in walk_blocks(model, calibration, batch_size, device, changes=False):
        hidden = turn.run()
    with contextlib.ExitStack() as stack:
        for module in adapter.final_modules(model):
            stack.enter_context(on_device(module, device, model_device(model), keep=False))
        return [adapter.head_inputs(model, h) for h in hidden]
