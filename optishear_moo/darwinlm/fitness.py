"""Fitness of structured-pruning candidates: stitch levels from the database, optionally
fine-tune briefly, and measure KL to the dense model on calibration tokens.

One working model is re-sliced per candidate; only blocks whose levels changed since the last
candidate are rebuilt (EvoPress-style). A fine-tune changes weights, so every block is rebuilt
from the database afterwards: fine-tuning only ever serves to *judge* a candidate.
"""

from __future__ import annotations

import torch
from torch import nn

from ..evaluation.divergence import DenseOutputs, kl_to_dense
from ..finetuning import post_train
from .database import StructuredLevelDatabase, check_levels
from .slicing import apply_levels_, dense_units


class StructuredEvaluator:
    """KL(dense ‖ candidate) per token on calibration samples, for level matrices
    ``(n_blocks, 2)`` (attention, mlp). ``model`` becomes the working model: it is sliced in
    place (call :meth:`restore_dense` to get the dense model back).

    It counts what it spends: ``scored_tokens`` (calibration tokens pushed through candidates to
    score them) and ``finetune_tokens`` (tokens the stage fine-tunes trained on)."""

    def __init__(self, model: nn.Module, database: StructuredLevelDatabase, calibration: torch.Tensor,
                 batch_size: int = 8, progress: bool = False):
        self.model, self.database, self.batch_size = model, database, batch_size
        self.reference = DenseOutputs.build(model, calibration, batch_size, progress=progress)
        self.originals = dense_units(model)
        self.levels: torch.Tensor | None = None  # what the working model holds now
        self.n_finetune_steps = 0
        self.scored_tokens = 0
        self.finetune_tokens = 0

    def stitch(self, levels) -> None:
        """Slice the working model to ``levels``, rebuilding only the blocks that changed."""
        levels = check_levels(levels, self.database)
        changed = (range(len(levels)) if self.levels is None
                   else torch.nonzero((levels != self.levels).any(1)).flatten().tolist())
        apply_levels_(self.model, self.database, levels, blocks=changed, originals=self.originals)
        self.levels = levels

    def restore_dense(self) -> nn.Module:
        self.stitch(torch.zeros(self.database.n_blocks, 2, dtype=torch.long))
        del self.model.config.structured_layers
        return self.model

    def kl(self, n_samples: int | None = None) -> float:
        """Mean KL per token over the first ``n_samples`` calibration samples (all by default)."""
        calibration = self.reference.calibration
        n_total = len(calibration)
        fidelity = min(n_samples or n_total, n_total) / n_total
        self.scored_tokens += self.reference.n_samples(fidelity) * calibration.shape[1]
        return kl_to_dense(self.model, self.reference, fidelity)

    def evaluate(self, levels, n_samples: int | None = None) -> float:
        self.stitch(levels)
        return self.kl(n_samples)

    def finetune_and_evaluate(self, levels, training: torch.Tensor, learning_rate: float = 1e-4,
                              batch_size: int = 4, n_samples: int | None = None) -> float:
        """KL after fine-tuning the candidate's sliced projections on ``training``
        (``(n, seq_len)`` ids, next-token loss, AdamW), then rebuilds the candidate."""
        self.stitch(levels)
        parameters = [p for modules in self.originals for module in modules for p in module.parameters()]
        post_train(self.model, training, learning_rate, batch_size, parameters=parameters)
        self.n_finetune_steps += -(-len(training) // batch_size)
        self.finetune_tokens += training.numel()
        try:
            return self.kl(n_samples)
        finally:
            self.levels = None  # weights were trained: rebuild every block next time

