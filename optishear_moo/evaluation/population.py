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
        cache_dense: Keep the dense next-token distributions once computed, when they are small
            enough (:data:`~optishear_moo.evaluation.divergence.LOG_PROB_LIMIT`): each candidate
            is then compared through its logit differences from the dense model.
    """

    def __init__(self, model: nn.Module, reference: DenseOutputs, device: str | torch.device | None = None,
                 states: str = "auto", chunk_tokens: int = 4096, cache_dense: bool = True):
        if states not in STATES:
            raise ValueError(f"states must be one of {', '.join(STATES)}, got {states!r}")
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
                formed = None
                try:
                    for prefix in sorted(parents, key=lambda p: repr(p[-1])):  # one key formed once
                        key, hidden = prefix[-1], states[parents[prefix]]
                        if key == SKIP:
                            following[prefix] = hidden
                            continue
                        if key != formed:
                            _put_back(layers, own)
                            if key is not None:
                                form(index, layers, key)
                            formed = key
                        following[prefix] = [keep(run_block(block, h.to(self.device), k))
                                             for h, k in zip(hidden, kwargs)]
                        self.n_block_forwards += 1
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


def _put_back(layers: list[PrunableLayer], weights: list[torch.Tensor]) -> None:
    for layer, weight in zip(layers, weights):
        layer.weight.copy_(weight)
