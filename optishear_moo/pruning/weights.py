"""Applying masks in place, restoring dense weights without reloading, and sparsity reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..models.adapters import PrunableLayer, get_adapter


class DenseSnapshot:
    """A copy of the prunable weights of a model, to restore them after in-place pruning.

    The copy lives on ``storage_device`` (the weights' own device by default, so a restore is
    a device-local copy). Restoring thousands of times costs one ``copy_`` per layer each.
    """

    def __init__(self, layers: list[PrunableLayer], storage_device: torch.device | None = None):
        self.layers = layers
        self._weights = {
            layer.name: layer.weight.detach().to(storage_device or layer.weight.device, copy=True)
            for layer in layers
        }

    @classmethod
    def of(cls, model: nn.Module, storage_device: torch.device | None = None) -> DenseSnapshot:
        return cls(get_adapter(model).prunable_layers(model), storage_device)

    def dense_weight(self, name: str) -> torch.Tensor:
        return self._weights[name]

    @torch.no_grad()
    def restore(self) -> None:
        """Write the dense weights back into the model, in place."""
        for layer in self.layers:
            layer.weight.copy_(self._weights[layer.name])


@torch.no_grad()
def apply_masks_(layers: list[PrunableLayer], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, **in place**, every weight whose mask entry is ``False``."""
    by_name = {layer.name: layer for layer in layers}
    unknown = set(masks) - set(by_name)
    if unknown:
        raise ValueError(f"masks name layers the model does not have: {sorted(unknown)[:3]}")
    for name, mask in masks.items():
        weight = by_name[name].weight
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        weight.masked_fill_(~mask.to(weight.device), 0)


@contextlib.contextmanager
def masks_applied(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Prune ``model`` in place for the duration of the block, then restore its dense weights."""
    snapshot = DenseSnapshot.of(model)
    try:
        apply_masks_(snapshot.layers, masks)
        yield model
    finally:
        snapshot.restore()


@dataclass(frozen=True)
class SparsityReport:
    """Achieved sparsity: share of exactly-zero weights over all prunable weights."""

    total: float
    per_layer: dict[str, float]
    per_block: list[float]
    n_prunable: int
    n_zero: int

    def to_dict(self) -> dict:
        return {
            "sparsity": self.total,
            "n_prunable": self.n_prunable,
            "n_zero": self.n_zero,
            "per_block_sparsity": self.per_block,
            "per_layer_sparsity": self.per_layer,
        }


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    layers = get_adapter(model).prunable_layers(model)
    zeros = {layer.name: int((layer.weight == 0).count_nonzero()) for layer in layers}
    n_blocks = max(layer.block_index for layer in layers) + 1
    block_zero, block_total = [0] * n_blocks, [0] * n_blocks
    for layer in layers:
        block_zero[layer.block_index] += zeros[layer.name]
        block_total[layer.block_index] += layer.numel
    n_prunable = sum(block_total)
    return SparsityReport(
        total=sum(zeros.values()) / n_prunable,
        per_layer={layer.name: zeros[layer.name] / layer.numel for layer in layers},
        per_block=[z / t for z, t in zip(block_zero, block_total)],
        n_prunable=n_prunable,
        n_zero=sum(zeros.values()),
    )
