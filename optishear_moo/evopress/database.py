"""EvoPress's level database: every prunable layer pruned at a ladder of sparsities, once.

Each layer is pruned with a baseline method and weight update – SparseGPT by default – at every
sparsity of the ladder; a search then only swaps in the stored weights of the layers whose level
changed. Each block's inputs come from the dense model (EvoPress: any mix of levels is equally
consistent) or, with ``inputs_at``, from the blocks before it pruned at one level of the ladder
(SparseGPT's sequential scheme: mixes near that level behave like a model pruned block by block,
which at high sparsity is far better; see the README's search-vs-baselines table). Blocks are
walked one at a time, so only one block's Hessians are held; the entries live in memory, or on
disk (one file per layer, memory-mapped when read) with ``directory``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..activations import sequential_blocks
from ..errors import SettingError, param
from ..models.adapters import PrunableLayer, get_adapter
from ..pruning.masks import check_sparsity
from ..pruning.prune import METHODS, prune_weight_, shared_factors
from ..pruning.update import check_update
from ..pruning.weights import DenseSnapshot

logger = logging.getLogger(__name__)


def sparsity_ladder(target: float | tuple[float, float], step: float = 0.05, levels_each_side: int = 3,
                    bounds: tuple[float, float] = (0.0, 0.95)) -> list[float]:
    """Sparsities ``step`` apart that hold the target (or the range) and ``levels_each_side`` more
    on each side, within ``bounds``: e.g. 0.35 ... 0.65 for a target of 0.5."""
    low, high = (target, target) if not isinstance(target, (tuple, list)) else target
    for value in (low, high):
        check_sparsity(value, "target_sparsity")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
        raise SettingError(f"the ladder {param('step')} must be positive, got {step!r}")
    start = low - levels_each_side * step
    stop = high + levels_each_side * step
    ladder = np.round(np.arange(start, stop + step / 2, step), 6)
    ladder = ladder[(ladder >= bounds[0] - 1e-9) & (ladder <= bounds[1] + 1e-9)]
    return [float(s) for s in ladder]


DATABASE_INPUTS = ("pruned", "dense")


class SparsityLevelDatabase:
    """Weights of every prunable layer at every sparsity in ``ladder`` (built once, then read)."""

    def __init__(self, layers: list[PrunableLayer], ladder: list[float], method: str, update: str,
                 directory: str | Path | None = None, inputs_at: float | None = None):
        self.names = [layer.name for layer in layers]
        self.numels = np.array([layer.numel for layer in layers], dtype=np.int64)
        self.roles = [layer.role for layer in layers]
        self.ladder = [float(s) for s in ladder]
        self.method, self.update = method, update
        self.inputs_at = inputs_at  # None: every block pruned from dense inputs
        self.directory = Path(directory) if directory is not None else None
        self._entries: dict[str, torch.Tensor] = {}
        self._files: dict[str, object] = {}  # open safetensors files of an on-disk database

    def __getstate__(self):  # open files stay behind (Ray workers open their own)
        return {**self.__dict__, "_files": {}}

    @property
    def n_levels(self) -> int:
        return len(self.ladder)

    @classmethod
    def for_target(cls, model: nn.Module, calibration: torch.Tensor, target: float | tuple[float, float],
                   method: str = "sparsegpt", update: str = "none", step: float = 0.05,
                   levels_each_side: int = 3, database_inputs: str = "pruned",
                   **build_kwargs) -> SparsityLevelDatabase:
        """The database a search for ``target`` needs: :func:`sparsity_ladder` around it, each block
        pruned from the blocks before it at the ladder's level nearest the target (a range's
        sparsest end, the point a range search returns) with ``database_inputs="pruned"``, or from
        dense inputs with ``"dense"`` (EvoPress). ``build_kwargs`` go to :meth:`build`."""
        if database_inputs not in DATABASE_INPUTS:
            raise ValueError(f"unknown database inputs {database_inputs!r}: "
                             f"use one of {', '.join(DATABASE_INPUTS)}")
        ladder = sparsity_ladder(target, step, levels_each_side)
        inputs_at = None
        if database_inputs == "pruned":
            point = max(target) if isinstance(target, (tuple, list)) else target
            inputs_at = min(ladder, key=lambda level: abs(level - point))
        return cls.build(model, calibration, ladder, method, update, inputs_at=inputs_at, **build_kwargs)

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, calibration: torch.Tensor, ladder, method: str = "sparsegpt",
              update: str = "none", directory: str | Path | None = None, batch_size: int = 8,
              progress: bool = False, inputs_at: float | None = None) -> SparsityLevelDatabase:
        """Prune every layer of ``model`` (left unchanged) at every sparsity of ``ladder``.

        ``inputs_at``: None prunes every block from the dense model's inputs (EvoPress); a sparsity
        of the ladder prunes each block from the outputs of the blocks before it *at that level*,
        as SparseGPT's sequential scheme does, so that stitched levels near it behave like a
        model pruned block by block (at high sparsity far closer than dense inputs)."""
        if method not in METHODS:
            raise ValueError(f"unknown pruning method {method!r}: use one of {', '.join(METHODS)}")
        check_update(update)
        if method == "sparsegpt" and update != "none":
            raise ValueError("sparsegpt updates the kept weights itself: use update 'none' with it")
        ladder = [check_sparsity(s) for s in ladder]
        anchor = None
        if inputs_at is not None:
            matches = [k for k, s in enumerate(ladder) if abs(s - inputs_at) < 1e-6]
            if not matches:
                raise ValueError(f"inputs_at={inputs_at} is not a sparsity of the ladder {ladder}: "
                                 "use one of them, or None for dense inputs")
            anchor = matches[0]
        if directory is not None:  # before the walk: a link or a file there is refused now
            from ..outputs import database_directory

            database_directory(directory)
        layers = get_adapter(model).prunable_layers(model)
        database = cls(layers, ladder, method, update, directory, inputs_at)
        needs_gram = method == "sparsegpt" or update != "none"
        walk = sequential_blocks(model, calibration, batch_size, with_gram=needs_gram, progress=False,
                                 changes=anchor is not None)  # dense blocks are left as they are
        n_blocks = len(get_adapter(model).blocks(model))
        previous = None  # the block before, held at the anchor level until its outputs are taken
        try:
            for _index, block_layers, statistics in tqdm(walk, total=n_blocks, desc="level database",
                                                          disable=not progress, leave=False):
                if previous is not None:  # its outputs, this block's inputs, are computed: make it dense
                    previous.restore()
                previous = DenseSnapshot(block_layers) if anchor is not None else None
                factors = shared_factors(statistics) if needs_gram else {}
                for layer in block_layers:
                    dense = layer.weight.detach().clone()
                    levels = torch.empty((len(ladder), *dense.shape), dtype=dense.dtype, device="cpu")
                    for k, sparsity in enumerate(ladder):
                        weight = dense.clone()
                        prune_weight_(weight, statistics[layer.name], sparsity, method, update,
                                      factor=factors.get(layer.name))
                        levels[k] = weight.cpu()
                    database._store(layer.name, levels)
                    if anchor is not None:  # later blocks see this block at the anchor level
                        layer.weight.copy_(levels[anchor])
        finally:
            if previous is not None:
                previous.restore()
        return database

    def _store(self, name: str, levels: torch.Tensor) -> None:
        if self.directory is None:
            self._entries[name] = levels
            return
        from safetensors.torch import save

        from ..outputs import make_directory, write_atomically

        make_directory(self.directory)
        write_atomically(self.directory / f"{name}.safetensors", save({"levels": levels.contiguous()}))

    def weight(self, name: str, level: int) -> torch.Tensor:
        """The stored ``(out, in)`` weight of layer ``name`` at ``level`` (an index of the ladder)."""
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level must be in 0..{self.n_levels - 1}, got {level}")
        if self.directory is None:
            return self._entries[name][level]
        if name not in self._files:
            from safetensors import safe_open

            self._files[name] = safe_open(self.directory / f"{name}.safetensors", framework="pt")
        return self._files[name].get_slice("levels")[level]

    def mean_sparsity(self, levels) -> float:
        """Parameter-weighted mean sparsity of per-layer ``levels`` (ladder indices)."""
        sparsity = np.asarray(self.ladder)[np.asarray(levels, dtype=int)]
        return float(np.average(sparsity, weights=self.numels))
