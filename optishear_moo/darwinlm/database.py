"""Structured pruning units and the DarwinLM level database.

Units per decoder block (Llama-family attention + gated MLP):

* ``attention``: key/value head groups. Removing a group removes its key and value head and
  the query heads that share it, so every block keeps the model's query-per-key ratio and
  grouped-query attention runs unchanged. Levels ``0..n_kv_heads`` (groups removed); the top
  level skips attention entirely.
* ``mlp``: intermediate channels, ``mlp_levels`` equal steps; the top level skips the MLP.

For every unit and level the database holds which input columns of the unit's output
projection (``o_proj`` / ``down_proj``) stay and that projection's weights re-fitted by least
squares so the unit's output on calibration data is reconstructed (greedy OBS / ZipLM-style
structured removal: the cheapest group under the current inverse Hessian goes first, and the
remaining columns are updated optimally after each removal). The rows of the input projections
are simply sliced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..activations import collect_input_statistics, on_device
from ..errors import SettingError, param
from ..models.adapters import get_adapter
from ..models.sliced import (
    UNITS,
    BlockLayout,
    block_layout,
    dense_input_projections,
    output_projection,
    output_projection_role,
    unit_of,
)
from ..models.streaming import is_streamed, record


def default_mlp_levels(intermediate_size: int, about: int = 10) -> int:
    """The divisor of ``intermediate_size`` closest to ``about`` (larger on ties): equal level
    steps make every level switch change the parameter count by exactly the same amount."""
    divisors = [d for d in range(2, intermediate_size + 1) if intermediate_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - about), -d)) if divisors else 1


@dataclass
class LevelEntry:
    """One unit at one level: the kept input columns of its output projection (``(n_kept,)``
    int64, in the dense numbering) and that projection's re-fitted weight ``(hidden, n_kept)``."""

    kept: torch.Tensor
    weight: torch.Tensor


def _damped_inverse(gram: torch.Tensor, damping: float) -> torch.Tensor:
    gram = gram.double().clone()
    diagonal = gram.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0  # never-active channels: removing them costs nothing
    diagonal += damping * diagonal.mean()
    return torch.cholesky_inverse(torch.linalg.cholesky(gram))


def removal_path(weight: torch.Tensor, gram: torch.Tensor, group_size: int, counts: list[int],
                 damping: float = 0.01, chunk: int = 1) -> dict[int, LevelEntry]:
    """Greedy structured OBS removal of column groups from ``weight`` (``(out, in)``).

    ``gram`` is ``X Xᵀ`` (``(in, in)``) of the layer's calibration inputs; columns form
    consecutive groups of ``group_size``. Groups are removed cheapest first, ``chunk`` groups at
    a time at most, and after each removal the remaining columns are updated to minimise
    ``‖W X − W' X‖``. Returns the state after removing each number of groups in ``counts``.
    The weight and inverse Hessian are compacted to the surviving columns as removal goes on,
    so later steps cost less.
    """
    n_groups = weight.shape[1] // group_size
    W = weight.double().clone()
    inverse = _damped_inverse(gram, damping)
    alive = torch.arange(n_groups)  # surviving groups, in dense numbering; W/inverse hold their columns
    path = {}
    for target in sorted(set(counts)):
        while n_groups - len(alive) < target:
            take = min(chunk, target - (n_groups - len(alive)))
            if take == len(alive):  # the unit is gone: nothing left to update
                alive = alive[:0]
                W, inverse = W[:, :0], inverse[:0, :0]
                break
            local = torch.arange(len(alive) * group_size).view(len(alive), group_size)
            costs = torch.stack([_group_cost(W, inverse, local[g]) for g in range(len(alive))]) \
                if group_size > 1 else W.square().sum(0) / inverse.diagonal()
            removed = torch.zeros(len(alive), dtype=torch.bool)
            removed[torch.argsort(costs)[:take]] = True
            S, R = local[removed].flatten(), local[~removed].flatten()
            solved = torch.linalg.solve(inverse[S][:, S], inverse[S][:, R])  # (H⁻¹_SS)⁻¹ H⁻¹_SR
            W = W[:, R] - W[:, S] @ solved
            inverse = inverse[R][:, R] - inverse[R][:, S] @ solved
            alive = alive[~removed]
        kept = (alive[:, None] * group_size + torch.arange(group_size)).flatten()
        path[target] = LevelEntry(kept, W.to(weight.dtype).contiguous())
    return path


def _group_cost(W: torch.Tensor, inverse: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Output error of removing columns ``S`` with the optimal update: tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ)."""
    W_S = W[:, S]
    return torch.trace(W_S @ torch.linalg.solve(inverse[S][:, S], W_S.t()))


class StructuredLevelDatabase:
    """Precomputed :class:`LevelEntry` per block, unit and level (built once, then only read).

    With ``directory`` the entries live on disk (one safetensors file per block and unit, read
    when needed) instead of in memory. The dense weights the slicing starts from are kept too
    (``dense``, one dict per block), except for a model streamed from disk, whose blocks are read
    again from its checkpoint when they are sliced (``dense`` is None).
    """

    def __init__(self, layout: BlockLayout, n_blocks: int, mlp_levels: int, directory=None):
        self.layout, self.n_blocks, self.mlp_levels = layout, n_blocks, mlp_levels
        self.directory = Path(directory) if directory is not None else None
        self._entries: dict[tuple[int, str], list[LevelEntry]] = {}
        self.dense: list[dict[str, torch.Tensor]] | None = []

    @property
    def n_levels(self) -> dict[str, int]:
        """Highest level per unit (that level removes the whole sub-block)."""
        return {"attention": self.layout.n_kv_heads, "mlp": self.mlp_levels}

    @property
    def nbytes(self) -> int:
        """Bytes the level entries take: in memory, or their files on disk with ``directory`` (the
        dense weights kept for slicing are not counted)."""
        if self.directory is None:
            return sum(entry.kept.nbytes + entry.weight.nbytes
                       for entries in self._entries.values() for entry in entries)
        return sum(self._file(block, unit).stat().st_size for block in range(self.n_blocks) for unit in UNITS)

    def _file(self, block: int, unit: str) -> Path:
        return self.directory / f"block{block}_{unit}.safetensors"

    def removed_count(self, unit: str, level: int) -> int:
        """Groups (attention) or channels (mlp) removed at ``level``."""
        if unit == "attention":
            return level
        return level * self.layout.intermediate_size // self.mlp_levels

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, calibration: torch.Tensor, mlp_levels: int | None = None,
              damping: float = 0.01, batch_size: int = 8, directory=None,
              progress: bool = False) -> StructuredLevelDatabase:
        """Statistics of the output projections' inputs in one dense pass, then the removal
        path of every unit. ``mlp_levels`` defaults to :func:`default_mlp_levels`."""
        layout = block_layout(model)
        mlp_levels = mlp_levels or default_mlp_levels(layout.intermediate_size)
        if layout.intermediate_size % mlp_levels:
            raise SettingError(f"{param('mlp_levels')}={mlp_levels} must divide intermediate_size="
                               f"{layout.intermediate_size} so every level step is equal")
        if directory is not None:  # before the dense pass: a link or a file there is refused now
            from ..outputs import database_directory

            database_directory(directory)
        adapter = get_adapter(model)
        blocks = adapter.blocks(model)
        database = cls(layout, len(blocks), mlp_levels, directory)
        roles = {output_projection_role(unit): unit for unit in UNITS}
        outputs = [layer for layer in adapter.prunable_layers(model) if layer.role in roles]
        statistics = collect_input_statistics(model, calibration, batch_size, outputs, with_gram=True,
                                              progress=progress)
        grams = {(layer.block_index, roles[layer.role]): statistics[layer.name].gram for layer in outputs}
        group = layout.heads_per_group * layout.head_dim
        mlp_chunk = max(1, layout.intermediate_size // mlp_levels // 8)
        streamed = is_streamed(model)
        if streamed:  # the dense projections are read again from the checkpoint when slicing
            database.dense = None
        for index, block in enumerate(tqdm(blocks, desc="level database", disable=not progress, leave=False)):
            # a block streamed from disk is read into host memory for its turn (and dropped)
            with on_device(block, torch.device("cpu"), torch.device("cpu"), keep=False) \
                    if record(block) is not None else contextlib.nullcontext():
                if not streamed:
                    database.dense.append(dense_input_projections(block))
                for unit, group_size, chunk in (("attention", group, 1), ("mlp", 1, mlp_chunk)):
                    layer = output_projection(unit_of(block, unit), unit)
                    counts = [database.removed_count(unit, level)
                              for level in range(database.n_levels[unit] + 1)]
                    path = removal_path(layer.weight.detach(), grams[index, unit], group_size, counts,
                                        damping, chunk)
                    database._store(index, unit, [path[count] for count in counts])
        return database

    def _store(self, block: int, unit: str, entries: list[LevelEntry]) -> None:
        if self.directory is None:
            self._entries[block, unit] = entries
            return
        from safetensors.torch import save

        from ..outputs import make_directory, write_atomically

        tensors = {f"{kind}.{level}": tensor.contiguous() for level, entry in enumerate(entries)
                   for kind, tensor in (("kept", entry.kept), ("weight", entry.weight))}
        make_directory(self.directory)
        write_atomically(self._file(block, unit), save(tensors))

    def get(self, block: int, unit: str, level: int) -> LevelEntry:
        if not 0 <= level <= self.n_levels[unit]:
            raise ValueError(f"{unit} level must be in 0..{self.n_levels[unit]}, got {level}")
        if self.directory is None:
            return self._entries[block, unit][level]
        from safetensors import safe_open

        with safe_open(self._file(block, unit), framework="pt") as file:
            return LevelEntry(file.get_tensor(f"kept.{level}"), file.get_tensor(f"weight.{level}"))

    def unit_parameters(self, unit: str) -> int:
        """Parameters of one dense unit (weights of its four or three projections, no biases)."""
        layout = self.layout
        if unit == "attention":
            q = layout.n_kv_heads * layout.heads_per_group * layout.head_dim
            kv = layout.n_kv_heads * layout.head_dim
            return layout.hidden_size * (2 * q + 2 * kv)
        return 3 * layout.hidden_size * layout.intermediate_size

    def parameters_at(self, unit: str, level: int) -> int:
        """Parameters one unit keeps at ``level``."""
        total = self.n_levels[unit] if unit == "attention" else self.layout.intermediate_size
        kept = total - self.removed_count(unit, level)
        return self.unit_parameters(unit) * kept // total


def check_levels(levels, database: StructuredLevelDatabase) -> torch.Tensor:
    """``levels`` as a ``(n_blocks, 2)`` int tensor (attention, mlp), validated."""
    levels = torch.as_tensor(levels, dtype=torch.long).reshape(-1, 2)
    if len(levels) != database.n_blocks:
        raise ValueError(f"levels must give (attention, mlp) for each of the {database.n_blocks} blocks, "
                         f"got {len(levels)}")
    tops = torch.tensor([database.n_levels["attention"], database.n_levels["mlp"]])
    if (levels < 0).any() or (levels > tops).any():
        raise ValueError(f"levels must lie in 0..{tops.tolist()} (attention, mlp)")
    return levels


def kept_parameters(database: StructuredLevelDatabase, levels) -> int:
    """Weights the blocks keep at ``levels`` (attention and MLP projections; norms excluded)."""
    levels = check_levels(levels, database)
    return sum(database.parameters_at("attention", a) + database.parameters_at("mlp", m)
               for a, m in levels.tolist())


def uniform_levels(database: StructuredLevelDatabase, compression: float) -> np.ndarray:
    """The most uniform ``(n_blocks, 2)`` allocation removing at least ``1 - 1/compression`` of the
    block weights: the same removed fraction for attention and MLP, floors and ceilings spread
    over the blocks."""
    removed = 1 - 1 / compression
    n_blocks = database.n_blocks
    levels = np.zeros((n_blocks, 2), dtype=int)
    for column, unit in enumerate(UNITS):
        top = database.n_levels[unit]
        steps = int(np.ceil(removed * top * n_blocks - 1e-9))  # total level steps for this unit kind
        base, extra = divmod(min(steps, top * n_blocks), n_blocks)
        levels[:, column] = base
        levels[np.linspace(0, n_blocks - 1, extra).round().astype(int) if extra else [], column] += 1
    return levels


def check_reachable(config, compression: float, mlp_levels: int | None = None,
                    tolerance: float = 0.1) -> float:
    """The compression the level steps of a model (its ``config``) actually give for a target: a
    ``ValueError`` when that overshoots the target by more than ``tolerance`` (steps too coarse)
    or removes every unit. Needs no weights, so commands check before any work."""
    layout = block_layout(config)
    shell = StructuredLevelDatabase(layout, config.num_hidden_layers,
                          mlp_levels or default_mlp_levels(layout.intermediate_size))
    levels = uniform_levels(shell, compression)
    dense = kept_parameters(shell, np.zeros_like(levels))
    kept = kept_parameters(shell, levels)
    if kept == 0:
        raise SettingError(f"{param('target_compression')} {compression:g} removes every attention head and "
                           f"MLP channel: choose a lower {param('target_compression')}")
    achieved = dense / kept
    if achieved > compression * (1 + tolerance):
        raise SettingError(f"{param('target_compression')} {compression:g} is reached only as "
                           f"{achieved:.3g}x by this model's level steps ({layout.n_kv_heads} head groups, "
                           f"{shell.mlp_levels} MLP levels per block): choose a lower "
                           f"{param('target_compression')} or more {param('mlp_levels')}")
    return achieved
