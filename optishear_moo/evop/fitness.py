"""Fitness of block-removal candidates, with dense and shared-prefix hidden states cached.

A candidate "remove blocks R" is judged by running the calibration batches through the kept
blocks only, starting from a cached hidden state: the dense input of the first removed block
(every block before it is dense), or a cached state of an earlier candidate that removed the
same blocks up to some later point. The model itself is never modified.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..activations import capture_block_inputs, model_device, run_block
from ..data.calibration import check_calibration
from ..errors import SettingError, param
from ..evaluation.divergence import kl_sum_to_dense
from ..models.adapters import get_adapter
from .blocks import check_n_remove, check_removed_blocks, influence_between

BLOCK_OBJECTIVES = ("kl", "ppl")


class BlockRemovalEvaluator:
    """Scores "remove these blocks" on calibration tokens: ``kl`` (mean KL(dense ‖ candidate) per
    token) and ``ppl`` (calibration perplexity of the candidate).

    Memory: the dense input of every block, ``n_blocks x (n_samples, seq_len, hidden)``, plus up
    to ``cache_size`` shared-prefix states of the same size, plus the dense log-probabilities
    when ``vocab x n_samples x seq_len <= cached_logits_limit`` (float32; recomputed otherwise).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
                 cache_size: int = 32, cached_logits_limit: int = 2**26, progress: bool = False):
        check_calibration(calibration, model)
        self.model = model
        self.adapter = get_adapter(model)
        self.blocks = self.adapter.blocks(model)
        self.n_blocks = len(self.blocks)
        self.cache_size = cache_size
        self.labels = [b.to(model_device(model)) for b in torch.split(calibration, batch_size)]
        inputs = capture_block_inputs(model, calibration, batch_size)
        self.kwargs = inputs.kwargs  # kwargs[i]: per-batch keyword arguments of block i
        self.dense_inputs = [inputs.hidden]  # dense_inputs[i]: per-batch inputs of block i
        for index in tqdm(range(self.n_blocks), desc="dense block inputs", disable=not progress, leave=False):
            self.dense_inputs.append(self._run(index, self.dense_inputs[-1]))
        self._cache: OrderedDict[tuple[bool, ...], list[torch.Tensor]] = OrderedDict()
        self.n_block_forwards = 0
        # dense log-probs cost vocab x tokens floats: kept when that is at most cached_logits_limit
        vocab = model.get_output_embeddings().weight.shape[0]
        self.dense_log_probs = None
        if vocab * calibration.numel() <= cached_logits_limit:
            self.dense_log_probs = [F.log_softmax(self._logits(h), dim=-1) for h in self.dense_inputs[-1]]
        self.dense_ppl = self.evaluate([])["ppl"]

    def block_influence(self) -> np.ndarray:
        """ShortGPT's block influence from the cached dense states (equals
        :func:`~optishear_moo.evop.blocks.block_influence` without another dense pass)."""
        return np.array([influence_between(self.dense_inputs[i], self.dense_inputs[i + 1])
                         for i in range(self.n_blocks)])

    def _run(self, index: int, hidden):
        return [run_block(self.blocks[index], h, k) for h, k in zip(hidden, self.kwargs[index])]

    def _logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter.logits(self.model, self.adapter.head_inputs(self.model, final_hidden))

    def _start(self, removed: list[int], decisions: tuple[bool, ...]):
        """The furthest cached state this candidate can start from: (block index, hidden)."""
        for r in reversed(removed[1:]):
            state = self._cache.get(decisions[:r])
            if state is not None:
                self._cache.move_to_end(decisions[:r])
                return r, state
        return removed[0], self.dense_inputs[removed[0]]

    @torch.no_grad()
    def evaluate(self, removed: Iterable[int]) -> dict[str, float]:
        """``{"kl": ..., "ppl": ...}`` of the model with blocks ``removed`` skipped."""
        removed = check_removed_blocks(removed, self.n_blocks)
        decisions = tuple(i in set(removed) for i in range(self.n_blocks))
        if removed:
            start, hidden = self._start(removed, decisions)
        else:
            start, hidden = self.n_blocks, self.dense_inputs[-1]
        for index in range(start, self.n_blocks):
            if decisions[index]:
                if index > removed[0] and self.cache_size:
                    self._remember(decisions[:index], hidden)
                continue
            hidden = self._run(index, hidden)
            self.n_block_forwards += 1
        return self._scores(hidden)

    def _remember(self, key, hidden) -> None:
        self._cache[key] = hidden
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _scores(self, final_hidden: list[torch.Tensor]) -> dict[str, float]:
        kl, nll, n_kl, n_nll = 0.0, 0.0, 0, 0
        for b, (hidden, labels) in enumerate(zip(final_hidden, self.labels)):
            logits = self._logits(hidden)
            dense = (self.dense_log_probs[b] if self.dense_log_probs is not None
                     else self._logits(self.dense_inputs[-1][b]))
            kl += kl_sum_to_dense(logits, dense)  # log_softmax of log-probs leaves them unchanged
            n_kl += labels.numel()
            nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                         reduction="sum"))
            n_nll += labels[:, 1:].numel()
        scores = {"kl": kl / n_kl, "ppl": float(np.exp(nll / n_nll))}
        if not all(np.isfinite(v) for v in scores.values()):
            raise FloatingPointError(f"removing these blocks gave non-finite scores {scores}")
        return scores


def greedy_removal_order(evaluator: BlockRemovalEvaluator, n_remove: int, objective: str = "ppl",
                         progress: bool = False) -> list[int]:
    """SLEB-style greedy search: repeatedly remove the block whose removal gives the lowest
    ``objective``; returns blocks in removal order (its first ``k`` are the greedy choice for
    ``k``), costing about ``n_remove x n_blocks`` evaluations."""
    n_remove = check_n_remove(n_remove, evaluator.n_blocks)
    check_block_objective(objective)
    order: list[int] = []
    for _ in tqdm(range(n_remove), desc="greedy block removal", disable=not progress, leave=False):
        scores = {i: evaluator.evaluate(order + [i])[objective]
                  for i in range(evaluator.n_blocks) if i not in order}
        order.append(min(scores, key=scores.get))
    return order


def check_block_objective(objective: str) -> str:
    if objective not in BLOCK_OBJECTIVES:
        raise SettingError(f"{param('objective')} {objective!r} is not a block-removal objective: "
                           f"choose {' or '.join(BLOCK_OBJECTIVES)}")
    return objective
