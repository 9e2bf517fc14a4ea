"""Block-major scoring of a population: one walk over the decoder blocks per call, however many
candidates it holds.

A candidate is a sequence of per-block *variant keys*, any hashable values: a tuple of sparsity
levels, :data:`SKIP` for a removed block, ``None`` for the block as the model holds it. The walk
takes one block at a time; for every distinct prefix of keys it forms the block's variant once
(the caller's ``form`` writes the variant's weights into the block's layers), pushes the
prefix's hidden states through it and keeps the result for the next block. Candidates that
agree on their first blocks share that work (a tree of prefixes), identical candidates cost one,
and variants with the same key are formed once per block. At the end, each distinct candidate's
hidden states go through the final norm and the LM head, ``chunk_tokens`` tokens at a time, and
are compared with the dense model's (:class:`~optishear_moo.evaluation.divergence.DenseOutputs`).

Candidates stacked through a block: up to ``stack`` prefixes go through a block in one pass, their
hidden states concatenated along the batch and each prunable layer whose weights differ between
them replaced for the pass by one batched product (``torch.bmm``) over their stacked weights
(``stack × P_l`` weights on the device). Everything else in the block – norms, attention, the
activation – is the same for every candidate and runs once over the larger batch. ``"auto"``
stacks on a CUDA device, as many prefixes as half of its free memory holds, and runs one prefix at
a time on the CPU, where a wider batch does not make the products cheaper. A stacked pass that runs
out of device memory is run again in passes of half as many prefixes, as is the rest of the walk
(with a warning), so a wrong estimate costs time, never the run.

Where things live: the model stays where it was loaded (host memory for a model larger than the
device). With a compute ``device`` other than the model's, each block is brought to the device
for its turn and sent back, the LM head for the final comparison; one block's weights, the
prefixes' hidden states and one chunk of logits are on the device at a time. An LM head streamed
from disk is read a vocabulary slice at a time for all candidates together
(:func:`~optishear_moo.evaluation.divergence.distances_by_vocab_slices`). The hidden states
stay on the device while the widest generation of prefixes fits half of its free memory, and in
host memory otherwise (``states="host"`` forces it). The model comes back unchanged.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn

from ..activations import capture_block_inputs, model_device, on_device, run_block, to_device
from ..models import streaming
from ..models.adapters import PrunableLayer, get_adapter
from ..models.placement import compute_device
from .divergence import DenseOutputs, check_measures, distance_to_dense, distances_by_vocab_slices

SKIP = "skip"
"""The variant key of a removed block: its inputs pass through unchanged."""

STATES = ("auto", "device", "host")
MAX_STACK = 16
"""The most prefixes ``stack="auto"`` puts through a block at once."""

Form = Callable[[int, list[PrunableLayer], Hashable], None]


class BlockwiseEvaluator:
    """How far each of a population of variants of ``model`` is from the dense model.

    Args:
        model: The model whose blocks the candidates vary (left unchanged).
        reference: The dense model's LM-head inputs on the calibration tokens (their batching is
            the walk's).
        device: Where blocks run; the model's compute device when None (where its weights are,
            unless it was loaded with ``offload=True``).
        states: Where the prefixes' hidden states are kept between blocks: ``"auto"``,
            ``"device"`` or ``"host"``.
        chunk_tokens: Tokens per chunk of logits in the final comparison.
        stack: Prefixes put through a block in one pass (stacked weights, batched products): a
            number, or ``"auto"`` (from free memory on a CUDA device, up to :data:`MAX_STACK`;
            one at a time on the CPU).
        cache_dense: Keep the dense next-token distributions once computed, when they are small
            enough (:data:`~optishear_moo.evaluation.divergence.LOG_PROB_LIMIT`): each candidate
            is then compared through its logit differences from the dense model.
    """

    def __init__(self, model: nn.Module, reference: DenseOutputs, device: str | torch.device | None = None,
                 states: str = "auto", chunk_tokens: int = 4096, cache_dense: bool = True,
                 stack: int | str = "auto"):
        if states not in STATES:
            raise ValueError(f"states must be one of {', '.join(STATES)}, got {states!r}")
        if stack != "auto" and not (isinstance(stack, int) and stack >= 1):
            raise ValueError(f"stack must be 'auto' or a whole number of at least 1, got {stack!r}")
        self.stack = stack
        # lowered when a stacked pass runs out of device memory
        self._stack_cap = MAX_STACK if stack == "auto" else stack
        self.model, self.reference = model, reference
        self.adapter = get_adapter(model)
        self.blocks = self.adapter.blocks(model)
        self.home = model_device(model)
        self.device = torch.device(device) if device is not None else compute_device(model)
        self.states, self.chunk_tokens, self.cache_dense = states, chunk_tokens, cache_dense
        self._inputs: dict[int, object] = {}  # n_samples -> BlockInputs
        self.n_block_forwards = 0  # block passes over the calibration batches, for benchmarks

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def _block_inputs(self, n_samples: int):
        if n_samples not in self._inputs:
            if len(self._inputs) >= 2:  # a search uses one or two fidelities at a time
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[n_samples] = capture_block_inputs(
                self.model, self.reference.calibration[:n_samples], self.reference.batch_size)
        return self._inputs[n_samples]

    def kl(self, candidates: Sequence[Sequence[Hashable]], form: Form, fidelity: float = 1.0,
           on_block: Callable[[int, int], None] | None = None) -> list[float]:
        """Mean KL(dense ‖ candidate) per token of every candidate, in order (see :meth:`score`)."""
        return [values["kl"] for values in self.score(candidates, form, fidelity, ("kl",), on_block)]

    @torch.no_grad()
    def score(self, candidates: Sequence[Sequence[Hashable]], form: Form, fidelity: float = 1.0,
              measures: Sequence[str] = ("kl",), on_block: Callable[[int, int], None] | None = None
              ) -> list[dict[str, float]]:
        """``measures`` of every candidate, in order (duplicates scored once): ``kl``, the mean
        KL(dense ‖ candidate) per token, ``ppl``, its perplexity on the calibration tokens, and
        ``output_error``, ‖H − H_dense‖_F / ‖H_dense‖_F of the LM-head inputs.

        Args:
            candidates: One key per block for each candidate.
            form: ``form(block_index, layers, key)`` writes variant ``key`` into the block's
                prunable ``layers`` (on the compute device). It is never called for ``None`` or
                :data:`SKIP`; the block's own weights are put back before another key is formed
                and after the block's turn.
            fidelity: Share of the calibration windows to score on (the first ones).
            measures: Which of ``kl``, ``ppl`` and ``output_error`` to compute.
            on_block: Called with ``(block index, number of blocks)`` once a block's turn is over
                (progress).
        """
        measures = check_measures(measures)
        candidates = [tuple(candidate) for candidate in candidates]
        for candidate in candidates:
            if len(candidate) != self.n_blocks:
                raise ValueError(f"a candidate needs one key per block ({self.n_blocks}), got "
                                 f"{len(candidate)}")
        if not candidates:
            return []
        n_samples = self.reference.n_samples(fidelity)
        inputs = self._block_inputs(n_samples)
        host = self._states_on_host(inputs.hidden, len(set(candidates)))
        keep = (lambda h: h.to("cpu")) if host else (lambda h: h)
        states: dict[tuple, list[torch.Tensor]] = {(): [keep(h.to(self.device)) for h in inputs.hidden]}
        for index, block in enumerate(self.blocks):
            parents = {candidate[: index + 1]: candidate[:index] for candidate in candidates}
            kwargs = [to_device(k, self.device) for k in inputs.block_kwargs(index)]
            following: dict[tuple, list[torch.Tensor]] = {}
            with self._on_device(block):
                layers = self.adapter.block_layers(block, index)
                variants = any(prefix[-1] not in (None, SKIP) for prefix in parents)
                own = [layer.weight.clone() for layer in layers] if variants else []  # nothing to put back
                ordered = sorted(parents, key=lambda p: repr(p[-1]))  # one key formed once
                for prefix in ordered:
                    if prefix[-1] == SKIP:
                        following[prefix] = states[parents[prefix]]
                runs = [prefix for prefix in ordered if prefix[-1] != SKIP]
                width = self._stack_width(layers, inputs.hidden, len(runs))
                formed, start = None, 0
                try:
                    while start < len(runs):
                        chunk = runs[start:start + width]
                        if len(chunk) > 1:
                            # one-prefix passes come only after the stacked ones (the width never
                            # grows), so a stacked pass finds the block's own weights, and leaves them
                            try:
                                self._run_stacked(block, layers, own, chunk,
                                                  [states[parents[p]] for p in chunk], kwargs, form, index,
                                                  following, keep)
                            except torch.OutOfMemoryError:  # the chunk again, in narrower passes
                                width = self._out_of_memory(len(chunk))
                                continue
                        else:
                            prefix = chunk[0]
                            hidden = states[parents[prefix]]
                            formed = _switch(layers, own, form, index, prefix[-1], formed)
                            following[prefix] = [keep(run_block(block, h.to(self.device), k))
                                                 for h, k in zip(hidden, kwargs)]
                            self.n_block_forwards += 1
                        start += len(chunk)
                finally:
                    _put_back(layers, own)
            states = following
            if on_block is not None:
                on_block(index, self.n_blocks)
        head = self.model.get_output_embeddings()
        sliced = streaming.record(head) is not None  # a head streamed from disk is read in slices
        with contextlib.ExitStack() as stack:
            for module in self._head_modules():
                if not (sliced and module is head):
                    stack.enter_context(self._on_device(module))
            distinct = list(dict.fromkeys(candidates))
            if sliced:
                head_inputs = [[self.adapter.head_inputs(self.model, h.to(self.device)).to(h.device)
                                for h in states.pop(candidate)] for candidate in distinct]
                values = distances_by_vocab_slices(self.model, head_inputs, self.reference.batches(fidelity),
                                                   measures, self.device)
                scores = dict(zip(distinct, values))
            else:
                if self.cache_dense:
                    self.reference.cache_distributions(self.model)
                scores = {candidate: self._measure(states[candidate], fidelity, measures)
                          for candidate in distinct}
        return [dict(scores[candidate]) for candidate in candidates]

    def _measure(self, hidden: list[torch.Tensor], fidelity: float, measures) -> dict[str, float]:
        reference = self.reference
        batches = ((self.adapter.head_inputs(self.model, h.to(self.device)), dense.to(self.device), ids,
                    reference.dense_distribution(i, ids.numel(), self.device))
                   for i, (h, (ids, dense)) in enumerate(zip(hidden, reference.batches(fidelity))))
        return distance_to_dense(self.model, batches, measures, self.chunk_tokens)

    def _stack_width(self, layers: list[PrunableLayer], hidden: list[torch.Tensor], n_runs: int) -> int:
        """How many prefixes go through the block at once."""
        if n_runs < 2 or any("forward" in vars(layer.module) for layer in layers):  # a hooked layer
            return 1
        if self.stack != "auto":
            return min(self._stack_cap, n_runs)
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        weights = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
        widest = max(layer.out_features for layer in layers)
        # per prefix: its stacked weights, the widest batch of its hidden states and a few
        # activations of the block's widest layer
        tokens = max(h.shape[0] * h.shape[1] for h in hidden)
        per_prefix = weights + 4 * tokens * widest * hidden[0].element_size()
        return max(1, min(self._stack_cap, n_runs, int(free // 2 // per_prefix)))

    def _out_of_memory(self, width: int) -> int:
        """A stacked pass of ``width`` prefixes ran out of device memory: stack at most half as many
        (returned) from now on."""
        self._stack_cap = max(1, width // 2)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"{width} candidates stacked through a block ran out of device memory on "
                      f"{self.device}; the walk stacks at most {self._stack_cap} from now on "
                      f"(stack= sets it)", RuntimeWarning, stacklevel=3)
        return self._stack_cap

    def _run_stacked(self, block: nn.Module, layers: list[PrunableLayer], own: list[torch.Tensor],
                     chunk: list[tuple], hidden: list[list[torch.Tensor]], kwargs: list[dict], form: Form,
                     index: int, following: dict, keep) -> None:
        """``chunk``'s prefixes through ``block`` in one pass per batch of windows."""
        width = len(chunk)
        keys = [prefix[-1] for prefix in chunk]
        stacks: list[torch.Tensor | None] = [None] * len(layers)
        if any(key is not None for key in keys):
            weights = [torch.empty((width, *layer.weight.shape), dtype=layer.weight.dtype, device=self.device)
                       for layer in layers]
            formed = None
            try:
                for slot, key in enumerate(keys):
                    formed = _switch(layers, own, form, index, key, formed)
                    for stacked, layer in zip(weights, layers):
                        stacked[slot].copy_(layer.weight)
            finally:
                _put_back(layers, own)
            # a layer every prefix has as the block holds it runs as it is, over the wider batch
            stacks = [None if torch.equal(stacked, weight.expand_as(stacked)) else stacked
                      for stacked, weight in zip(weights, own)]
        patched = [(layer.module, stacked) for layer, stacked in zip(layers, stacks) if stacked is not None]
        for module, stacked in patched:
            module.forward = _stacked_forward(stacked, module.bias)
        try:
            outputs = []
            for batch, k in enumerate(kwargs):
                parts = [states[batch].to(self.device) for states in hidden]
                joined = run_block(block, torch.cat(parts), _repeat_batch(k, width, parts[0].shape[0]))
                outputs.append(joined.split([part.shape[0] for part in parts]))
        finally:
            for module, _ in patched:
                del module.forward
        for slot, prefix in enumerate(chunk):
            following[prefix] = [keep(output[slot]) for output in outputs]
        self.n_block_forwards += width

    def _states_on_host(self, hidden: list[torch.Tensor], width: int) -> bool:
        if self.states != "auto" or self.device.type != "cuda":
            return self.states == "host" and self.device.type != "cpu"
        free, _ = torch.cuda.mem_get_info(self.device)
        # a generation of prefixes and the one it grows from are held at once
        needed = 2 * width * sum(h.numel() * h.element_size() for h in hidden)
        return needed > free // 2

    def _head_modules(self) -> list[nn.Module]:
        return [self.model.get_output_embeddings(), *self.adapter.final_modules(self.model)]

    def _on_device(self, module: nn.Module):
        return on_device(module, self.device, self.home, keep=False)  # weights are put back


def _stacked_forward(weights: torch.Tensor, bias: torch.Tensor | None):
    """A linear layer's forward for inputs concatenated from ``len(weights)`` candidates along the
    batch, candidate ``c`` multiplied by ``weights[c]`` (``(out, in)`` each)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(weights.shape[0], -1, x.shape[-1])  # (candidates, its tokens, in)
        y = torch.bmm(grouped, weights.transpose(1, 2))
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], weights.shape[1])

    return forward


def _repeat_batch(value, times: int, batch: int):
    """The block's keyword arguments for ``times`` candidates' windows concatenated along the
    batch: per-window tensors (two or more dimensions, the first the batch) repeated."""
    if torch.is_tensor(value):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value.repeat(times, *[1] * (value.dim() - 1))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat_batch(v, times, batch) for v in value)
    if isinstance(value, dict):
        return {name: _repeat_batch(v, times, batch) for name, v in value.items()}
    return value


def _switch(layers: list[PrunableLayer], own: list[torch.Tensor], form: Form, index: int, key: Hashable,
            formed: Hashable) -> Hashable:
    """Variant ``key`` in the block's ``layers`` (its own weights for None), unless ``formed``
    already is; returns the key now formed."""
    if key != formed:
        _put_back(layers, own)
        if key is not None:
            form(index, layers, key)
    return key


def _put_back(layers: list[PrunableLayer], weights: list[torch.Tensor]) -> None:
    for layer, weight in zip(layers, weights):
        layer.weight.copy_(weight)
