"""One-shot pruning of a whole model with a baseline method and a layerwise allocation."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..activations import collect_input_statistics, model_device, on_device, sequential_blocks
from ..errors import SettingError, at_least, param
from ..models.adapters import PrunableLayer, get_adapter
from ..models.placement import compute_device
from .allocation import ALLOCATIONS, outlier_ratio, owl_allocation, uniform_allocation
from .masks import build_mask, check_sparsity, parse_nm
from .metrics import SCORE_METRICS, wanda_score
from .sparsegpt import HessianFactor, sparsegpt_prune_
from .update import check_update, reconstruct_
from .weights import SparsityReport, sparsity_report

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "wanda", "ria", "sparsegpt")


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how (a fixed recipe: :func:`prune_model`).

    Args:
        method: ``magnitude``, ``wanda``, ``ria`` or ``sparsegpt``.
        sparsity: Target sparsity in [0, 1).
        nm: An N:M pattern (``(2, 4)`` or ``"2:4"``); overrides ``sparsity`` with ``1 - n/m``.
        allocation: Per-block sparsity: ``uniform`` or ``owl``.
        owl_lambda: OWL's spread of block sparsities around the target.
        owl_threshold: OWL's outlier threshold (times the mean score).
        batch_size: Calibration windows per forward pass.
        update: Weight update of a metric's mask: ``none``, ``obs`` or ``lstsq`` (SparseGPT
            updates itself).
    """

    method: str = "wanda"
    sparsity: float = 0.5
    nm: tuple[int, int] | None = None
    allocation: str = "uniform"
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0
    batch_size: int = 8
    update: str = "none"

    def __post_init__(self):
        if self.method not in METHODS:
            raise SettingError(f"{param('method')} {self.method!r} is not a pruning method: use one of "
                               f"{', '.join(METHODS)}")
        if self.allocation not in ALLOCATIONS:
            raise SettingError(f"{param('allocation')} {self.allocation!r} is unknown: use one of "
                               f"{', '.join(ALLOCATIONS)}")
        nm = parse_nm(self.nm)
        object.__setattr__(self, "nm", nm)
        if nm is not None:
            if self.allocation != "uniform":
                raise SettingError(f"N:M sparsity fixes every layer's sparsity: use {param('allocation')} "
                                   f"uniform")
            object.__setattr__(self, "sparsity", 1.0 - nm[0] / nm[1])
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        check_update(self.update)
        at_least("batch_size", self.batch_size, 1)
        if self.method == "sparsegpt" and self.update != "none":
            raise SettingError(f"sparsegpt updates the kept weights itself: use {param('update')} none with "
                               f"it")

    def to_dict(self) -> dict:
        values = asdict(self)
        values["nm"] = f"{self.nm[0]}:{self.nm[1]}" if self.nm else None
        return values

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.allocation != "uniform" or self.update != "none"

    @property
    def needs_gram(self) -> bool:
        return self.method == "sparsegpt" or self.update != "none"


@dataclass
class PruningResult:
    config: PruningConfig
    block_sparsity: list[float]
    report: SparsityReport
    seconds: float
    masks: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def check_nm_divides(layers: list[PrunableLayer], nm: tuple[int, int] | None) -> None:
    if nm is None:
        return
    bad = [layer for layer in layers if layer.in_features % nm[1]]
    if bad:
        raise ValueError(
            f"{nm[0]}:{nm[1]} sparsity needs every layer's input size divisible by {nm[1]}, but "
            f"{bad[0].name} has {bad[0].in_features} inputs: choose an M that divides it"
        )


def allocate_block_sparsity(
    model: nn.Module, calibration: torch.Tensor | None, config: PruningConfig
) -> np.ndarray:
    """Per-block sparsity for ``config.allocation`` (OWL reads the dense model's Wanda scores)."""
    adapter = get_adapter(model)
    n_blocks = len(adapter.blocks(model))
    if config.allocation == "uniform":
        return uniform_allocation(n_blocks, config.sparsity)
    layers = adapter.prunable_layers(model)
    statistics = collect_input_statistics(model, calibration, config.batch_size, layers)
    sizes = np.array([sum(layer.numel for layer in layers if layer.block_index == index)
                      for index in range(n_blocks)], dtype=np.float64)
    ratios = block_outlier_ratios(model, statistics, config.owl_threshold)
    return owl_allocation(ratios, config.sparsity, config.owl_lambda, sizes)


@torch.no_grad()
def block_outlier_ratios(model: nn.Module, statistics: dict, threshold: float = 5.0) -> np.ndarray:
    """OWL's outlier ratio of every block's dense Wanda scores, ``(n_blocks,)``; each block on the
    model's compute device for its turn (read from disk and dropped, for a streamed model)."""
    adapter = get_adapter(model)
    device, home = compute_device(model), model_device(model)
    ratios = []
    for index, block in enumerate(adapter.blocks(model)):
        with on_device(block, device, home, keep=False):
            layers = adapter.block_layers(block, index)

            def scores(layers=layers):  # given anew for each pass: one layer's scores held at a time
                return (wanda_score(layer.weight, statistics[layer.name].to(layer.weight.device))
                        for layer in layers)

            ratios.append(outlier_ratio(scores, threshold))
    return np.array(ratios, dtype=np.float64)


def prune_weight_(weight: torch.Tensor, statistics, sparsity: float, method: str, update: str = "none",
                  nm: tuple[int, int] | None = None, factor: HessianFactor | None = None) -> torch.Tensor:
    """Prune one layer's ``(out, in)`` weight **in place** to ``sparsity`` (or ``nm``) with
    ``method`` from its input ``statistics`` / Hessian ``factor``, then apply ``update`` (metrics
    only: SparseGPT updates itself); returns the mask."""
    if method == "sparsegpt":
        return sparsegpt_prune_(weight, None, 0, sparsity, nm, factor=factor)
    mask = build_mask(SCORE_METRICS[method](weight, statistics), sparsity, nm)
    return reconstruct_(weight, mask, update, factor=factor)


def _prune_layer_(layer: PrunableLayer, statistics, sparsity: float, config: PruningConfig,
                  factor: HessianFactor | None = None):
    return prune_weight_(layer.weight, statistics, sparsity, config.method, config.update, config.nm, factor)


def shared_factors(statistics: dict) -> dict[str, HessianFactor]:
    """One :class:`HessianFactor` per distinct input (layers reading the same input share it)."""
    by_input: dict[int, HessianFactor] = {}
    for stats in statistics.values():
        if id(stats) not in by_input:
            by_input[id(stats)] = HessianFactor(stats.gram, stats.count)
    return {name: by_input[id(stats)] for name, stats in statistics.items()}


def prune_model(
    model: nn.Module,
    calibration: torch.Tensor | None = None,
    method: str = "wanda",
    sparsity: float = 0.5,
    nm: str | tuple[int, int] | None = None,
    allocation: str = "uniform",
    *,
    update: str = "none",
    config: PruningConfig | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> PruningResult:
    """Prune ``model`` **in place** with a fixed recipe; returns the masks and the achieved sparsity.

    Data-aware methods run sequentially: each block is pruned from inputs that went through the
    already-pruned blocks before it. Take a
    :class:`~optishear_moo.pruning.weights.DenseSnapshot` first to undo it.

    Args:
        model: The model to prune.
        calibration: ``(n_samples, seq_len)`` token ids (see ``load_calibration``); magnitude with
            uniform allocation needs none.
        method, sparsity, nm, allocation, update: The recipe, when no ``config`` is given (see
            :class:`PruningConfig`); ``update`` (``"obs"``, ``"lstsq"``) reconstructs the kept
            weights of magnitude/Wanda/RIA masks, SparseGPT always updates.
        config: A :class:`PruningConfig` (wins over the loose arguments).
        progress: Show a bar over the blocks.
        device: Where data-aware methods prune, one block at a time (the model stays where it
            is, e.g. in host memory for a model larger than the device); the model's own device
            when None.
    """
    config = config or PruningConfig(method, sparsity, parse_nm(nm), allocation, update=update)
    if config.needs_calibration and calibration is None:
        raise ValueError(f"{config.method} with {config.allocation} allocation needs calibration data")
    start = time.perf_counter()
    adapter = get_adapter(model)
    check_nm_divides(adapter.prunable_layers(model), config.nm)
    block_sparsity = allocate_block_sparsity(model, calibration, config)
    masks = {}
    if config.method == "magnitude":
        for layer in adapter.prunable_layers(model):
            masks[layer.name] = _prune_layer_(layer, None, block_sparsity[layer.block_index], config)
    else:
        walk = sequential_blocks(model, calibration, config.batch_size, with_gram=config.needs_gram,
                                 progress=progress, device=device)
        home = model_device(model)  # masks stay with the weights, not on the compute device
        for index, layers, statistics in walk:
            factors = shared_factors(statistics) if config.needs_gram else {}
            for layer in layers:
                masks[layer.name] = _prune_layer_(layer, statistics[layer.name], block_sparsity[index],
                                                  config, factors.get(layer.name)).to(home)
    report = sparsity_report(model)
    seconds = time.perf_counter() - start
    logger.info("%s pruned to %.4f sparsity in %.1fs", config.method, report.total, seconds)
    return PruningResult(config, [float(s) for s in block_sparsity], report, seconds, masks)
