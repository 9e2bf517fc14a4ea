"""Divergence from the dense model: its LM-head inputs on calibration tokens, cached once, and
the KL of a candidate's next-token distributions to it. Shared by every method's fitness.

The candidate's forward stops at the LM head; the logits of both models are then formed and
compared in chunks of ``chunk_tokens`` tokens, so full ``(batch, seq, vocab)`` float32 logits of
the two models never exist at once (they dwarf everything else for large vocabularies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..activations import run_until
from ..data.calibration import check_calibration
from ..models.adapters import ArchitectureAdapter


def kl_sum_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor) -> float:
    """Sum over positions of KL(dense ‖ pruned) of the next-token distributions.

    Both ``(batch, seq_len, vocab)``; computed in float32."""
    dense_log_probs = F.log_softmax(dense_logits.float(), dim=-1).flatten(0, 1)
    log_probs = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)
    return float(F.kl_div(log_probs, dense_log_probs, log_target=True, reduction="sum"))


@dataclass
class DenseOutputs:
    """The dense model's LM-head inputs on calibration tokens.

    ``head_inputs[b]`` is ``(batch, seq_len, hidden)`` for batch ``b`` of ``calibration`` split
    into ``batch_size`` windows; the dense logits are recomputed from them when needed (one
    head matmul) instead of holding ``vocab`` floats per token.
    """

    calibration: torch.Tensor
    batch_size: int
    head_inputs: list[torch.Tensor]

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
              progress: bool = False) -> DenseOutputs:
        """One dense pass; hooks the caller holds open (e.g. activation statistics) see it too."""
        check_calibration(calibration, model)
        head_inputs = [final_hidden(model, batch) for batch in tqdm(
            torch.split(calibration, batch_size), desc="dense reference", disable=not progress, leave=False)]
        return cls(calibration, batch_size, head_inputs)

    def batches(self, fidelity: float = 1.0):
        """``(token batch, dense head inputs)`` pairs over the first ``fidelity`` share of samples."""
        if not 0 < fidelity <= 1:
            raise ValueError(f"fidelity must be in (0, 1], got {fidelity}")
        n_samples = max(1, round(fidelity * len(self.calibration)))
        for batch, dense_hidden in zip(torch.split(self.calibration[:n_samples], self.batch_size),
                                       self.head_inputs):
            yield batch, dense_hidden[: len(batch)]  # the last batch may be cut by the fidelity


def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The LM head's inputs ``(batch, seq, hidden)`` for ``input_ids``, without computing logits."""
    return run_until(model, model.get_output_embeddings(), input_ids)


@torch.no_grad()
def chunked_kl_sum(model: nn.Module, hidden: torch.Tensor, dense_hidden: torch.Tensor,
                   chunk_tokens: int = 4096) -> float:
    """Sum over tokens of KL(dense ‖ pruned) from the two models' LM-head inputs, the logits formed
    ``chunk_tokens`` tokens at a time."""
    hidden, dense_hidden = hidden.flatten(0, 1), dense_hidden.flatten(0, 1)
    total = 0.0
    for start in range(0, len(hidden), chunk_tokens):
        end = start + chunk_tokens
        total += kl_sum_to_dense(ArchitectureAdapter.logits(model, hidden[start:end])[None],
                                 ArchitectureAdapter.logits(model, dense_hidden[start:end])[None])
    return total


@torch.no_grad()
def kl_to_dense(model: nn.Module, dense: DenseOutputs, fidelity: float = 1.0,
                chunk_tokens: int = 4096) -> float:
    """Mean KL(dense ‖ ``model``) per calibration token, over the first ``fidelity`` of samples."""
    total, tokens = 0.0, 0
    for batch, dense_hidden in dense.batches(fidelity):
        total += chunked_kl_sum(model, final_hidden(model, batch), dense_hidden, chunk_tokens)
        tokens += batch.numel()
    value = total / tokens
    if value != value:
        raise FloatingPointError("the pruned model produced NaN logits")
    return value
