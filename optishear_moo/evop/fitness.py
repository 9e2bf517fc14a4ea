"""Fitness of block-removal candidates: a population in one walk over the blocks.

A candidate "remove blocks R" is judged by running the calibration tokens through the kept
blocks only (:class:`~optishear_moo.evaluation.population.BlockwiseEvaluator`, a removed block
being a :data:`~optishear_moo.evaluation.population.SKIP`): candidates scored together share
every prefix of decisions they agree on, and the model itself is never modified. Only the
hidden states of the prefixes under way are held, never every block's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import SettingError, param
from ..evaluation.divergence import DenseOutputs
from ..evaluation.population import SKIP, BlockwiseEvaluator
from .blocks import block_influence, check_n_remove, check_removed_blocks

BLOCK_OBJECTIVES = ("kl", "ppl")


class BlockRemovalEvaluator:
    """Scores "remove these blocks" on calibration tokens: ``kl`` (mean KL(dense ‖ candidate) per
    token) and ``ppl`` (calibration perplexity of the candidate).

    Memory: the dense model's LM-head inputs on the calibration tokens, and while a population is
    scored, the hidden states of its distinct prefixes at one block (and the block before).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
                 progress: bool = False, device: str | torch.device | None = None):
        self.model = model
        self.reference = DenseOutputs.build(model, calibration, batch_size, progress)
        self.walker = BlockwiseEvaluator(model, self.reference, device)
        self.n_blocks = self.walker.n_blocks
        self._influence = None
        # passes over the calibration windows asked for since the dense one: a candidate's
        # evaluation or the block influence's pass each count one (what methods are compared at)
        self.n_evaluations = 0
        self.dense_ppl = self.evaluate([])["ppl"]
        self.n_evaluations = 0  # (the dense pass every method shares is not counted)

    @property
    def n_block_forwards(self) -> int:
        """Block passes over the calibration batches so far."""
        return self.walker.n_block_forwards

    def block_influence(self) -> np.ndarray:
        """ShortGPT's block influence (:func:`~optishear_moo.evop.blocks.block_influence`) on the
        calibration tokens; computed once."""
        if self._influence is None:
            reference = self.reference
            self._influence = block_influence(self.model, reference.calibration, reference.batch_size)
            self.n_evaluations += 1
        return self._influence

    def evaluate(self, removed: Iterable[int]) -> dict[str, float]:
        """``{"kl": ..., "ppl": ...}`` of the model with blocks ``removed`` skipped."""
        return self.evaluate_many([removed])[0]

    @property
    def n_windows(self) -> int:
        """Calibration windows a full evaluation scores."""
        return len(self.reference.calibration)

    def evaluate_many(self, candidates: Iterable[Iterable[int]], on_block=None,
                      fidelity: float = 1.0) -> list[dict[str, float]]:
        """:meth:`evaluate` of every candidate (a list of removed blocks each), all in one walk
        (``on_block``: see :meth:`BlockwiseEvaluator.score`), on the first ``fidelity`` share of
        the calibration windows (a candidate then counts that share of a pass)."""
        variants = []
        for removed in candidates:
            removed = set(check_removed_blocks(removed, self.n_blocks))
            variants.append([SKIP if index in removed else None for index in range(self.n_blocks)])
        scores = self.walker.score(variants, _never_formed, fidelity, BLOCK_OBJECTIVES, on_block)
        windows = self.reference.n_samples(fidelity)
        share = 1 if windows == self.n_windows else windows / self.n_windows
        self.n_evaluations += len(variants) * share
        for values in scores:
            if not all(np.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"removing these blocks gave non-finite scores {values}")
        return scores


def _never_formed(index, layers, key):  # block-removal candidates hold blocks as they are or skip them
    raise AssertionError(f"block {index} has no variant {key!r}")


def greedy_removal_order(evaluator: BlockRemovalEvaluator, n_remove: int, objective: str = "ppl",
                         progress: bool = False) -> list[int]:
    """SLEB-style greedy search: repeatedly remove the block whose removal gives the lowest
    ``objective``; returns blocks in removal order (its first ``k`` are the greedy choice for
    ``k``), costing about ``n_remove x n_blocks`` evaluations (one walk over the blocks per step)."""
    n_remove = check_n_remove(n_remove, evaluator.n_blocks)
    check_block_objective(objective)
    order: list[int] = []
    for _ in tqdm(range(n_remove), desc="greedy block removal", disable=not progress, leave=False):
        options = [i for i in range(evaluator.n_blocks) if i not in order]
        scores = [values[objective] for values in evaluator.evaluate_many([order + [i] for i in options])]
        order.append(options[int(np.argmin(scores))])
    return order


def check_block_objective(objective: str) -> str:
    if objective not in BLOCK_OBJECTIVES:
        raise SettingError(f"{param('objective')} {objective!r} is not a block-removal objective: "
                           f"choose {' or '.join(BLOCK_OBJECTIVES)}")
    return objective
