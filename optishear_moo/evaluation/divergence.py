"""Divergence from the dense model: its LM-head inputs on calibration tokens, cached once, and
the KL of a candidate's next-token distributions to it. Shared by every method's fitness."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..activations import model_device
from ..data.calibration import check_calibration


def kl_sum_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor) -> float:
    """Sum over positions of KL(dense ‖ pruned) of the next-token distributions.

    Both ``(batch, seq_len, vocab)``; computed in float32."""
    dense_log_probs = F.log_softmax(dense_logits.float(), dim=-1).flatten(0, 1)
    log_probs = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)
    return float(F.kl_div(log_probs, dense_log_probs, log_target=True, reduction="sum"))


@contextlib.contextmanager
def recording_head_inputs(model: nn.Module, sink: list):
    """Append the inputs of the LM head (the final hidden states) to ``sink`` while the block runs."""
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: sink.append(args[0]))
    try:
        yield sink
    finally:
        handle.remove()


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
        device = model_device(model)
        head_inputs: list[torch.Tensor] = []
        with recording_head_inputs(model, head_inputs):
            for batch in tqdm(torch.split(calibration, batch_size), desc="dense reference",
                              disable=not progress, leave=False):
                model(input_ids=batch.to(device), use_cache=False)
        return cls(calibration, batch_size, head_inputs)

    def batches(self, fidelity: float = 1.0):
        """``(token batch, dense head inputs)`` pairs over the first ``fidelity`` share of samples."""
        if not 0 < fidelity <= 1:
            raise ValueError(f"fidelity must be in (0, 1], got {fidelity}")
        n_samples = max(1, round(fidelity * len(self.calibration)))
        for batch, dense_hidden in zip(torch.split(self.calibration[:n_samples], self.batch_size),
                                       self.head_inputs):
            yield batch, dense_hidden[: len(batch)]  # the last batch may be cut by the fidelity


@torch.no_grad()
def kl_to_dense(model: nn.Module, dense: DenseOutputs, fidelity: float = 1.0) -> float:
    """Mean KL(dense ‖ ``model``) per calibration token, over the first ``fidelity`` of samples."""
    head = model.get_output_embeddings()
    device = model_device(model)
    total, tokens = 0.0, 0
    for batch, dense_hidden in dense.batches(fidelity):
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        total += kl_sum_to_dense(logits, head(dense_hidden))
        tokens += batch.numel()
    value = total / tokens
    if value != value:
        raise FloatingPointError("the pruned model produced NaN logits")
    return value
