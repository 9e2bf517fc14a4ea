"""SparseGPT (Frantar & Alistarh, 2023) and the OBS weight update it is built on.

Columns are processed left to right in blocks; pruning a weight adds its error, scaled by the
inverse Hessian ``H⁻¹ = (2 X Xᵀ / n + λI)⁻¹``, to the columns still to come, so the layer output
on calibration data is preserved as well as a one-pass method can. :func:`sparsegpt_prune_`
chooses the mask as it goes (the paper's adaptive mask selection); :func:`obs_update_` applies
the same update for a mask chosen by anything else (Wanda, a searched metric, N:M...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .masks import check_sparsity

logger = logging.getLogger(__name__)


class HessianFactor:
    """The upper Cholesky factor ``U`` of ``(H + λ·mean(diag H)·I)⁻¹`` for ``H = 2 X Xᵀ / n``,
    from a layer's input Gram ``X Xᵀ`` (``(in, in)``) over ``n_tokens`` tokens; computed once per
    layer and shared by every mask and sparsity pruned from it. Input channels that never fire
    (``dead``) are treated as free to prune. Damping grows until the factorisation succeeds."""

    def __init__(self, gram: torch.Tensor, n_tokens: int, damping: float = 0.01,
                 device: torch.device | None = None):
        hessian = gram.to(device or gram.device, torch.float32) * (2.0 / max(n_tokens, 1))
        self.dead = hessian.diagonal() == 0
        hessian[self.dead, self.dead] = 1.0
        self.hessian = hessian
        self.upper = _upper_cholesky_of_inverse(hessian, damping)

    @property
    def diagonal(self) -> torch.Tensor:
        return self.upper.diagonal()


def _upper_cholesky_of_inverse(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean_diagonal = hessian.diagonal().mean()
    for attempt in range(6):
        lam = damping * (10**attempt)
        lower, info = torch.linalg.cholesky_ex(hessian + lam * mean_diagonal * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                if attempt:
                    logger.warning("SparseGPT: Hessian needed damping %.3g to factor", lam)
                return upper
    raise ValueError(
        "SparseGPT: the Hessian did not factor even with heavy damping; calibrate on more tokens"
    )


MaskChooser = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(start column, block of current weights (out, b), its diagonal of U (b,)) -> keep-mask of the
block``, called before the block's columns are processed."""


@torch.no_grad()
def _obs_columns_(weight: torch.Tensor, factor: HessianFactor, choose: MaskChooser,
                  block_size: int = 128, column_rule: Callable | None = None) -> torch.Tensor:
    """The OBS sweep shared by SparseGPT and :func:`obs_update_`: ``weight`` (``(out, in)``) is
    pruned and updated **in place**; returns the keep mask. ``column_rule(column, w_block, mask,
    diagonal)`` may fix a block's mask column by column (N:M groups)."""
    out_features, in_features = weight.shape
    hinv = factor.upper.to(weight.device)
    w = weight.float().clone(memory_format=torch.contiguous_format)
    w[:, factor.dead.to(w.device)] = 0.0
    mask = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        w_block = w[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        diagonal = hinv_block.diagonal()
        block_mask = choose(start, w_block, diagonal)
        errors = torch.zeros_like(w_block)
        for column in range(end - start):
            if column_rule is not None:
                column_rule(column, w_block, block_mask, diagonal)
            q = w_block[:, column] * block_mask[:, column]
            error = (w_block[:, column] - q) / diagonal[column]
            w_block[:, column:] -= error.unsqueeze(1) * hinv_block[column, column:].unsqueeze(0)
            w_block[:, column] = q
            errors[:, column] = error
        w[:, start:end] = w_block
        mask[:, start:end] = block_mask
        w[:, end:] -= errors @ hinv[start:end, end:]
    w[~mask] = 0.0
    weight.copy_(w.to(weight.dtype))
    return mask


def _factor(gram, n_tokens, damping, factor, device) -> HessianFactor:
    return factor if factor is not None else HessianFactor(gram, n_tokens, damping, device)


@torch.no_grad()
def sparsegpt_prune_(
    weight: torch.Tensor,
    gram: torch.Tensor | None,
    n_tokens: int,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
    factor: HessianFactor | None = None,
) -> torch.Tensor:
    """Prune ``weight`` (``(out, in)``, modified **in place**) and update the kept weights.

    ``gram`` is ``Σ x xᵀ`` over ``n_tokens`` calibration inputs (``(in, in)``, float32), or pass a
    precomputed ``factor`` (:class:`HessianFactor`). Unstructured masks are chosen per block of
    ``block_size`` columns (the paper's adaptive mask selection); N:M masks per group of ``m``
    columns. Returns the keep mask.
    """
    if nm is None:
        sparsity = check_sparsity(sparsity)
    if nm is not None and weight.shape[1] % nm[1]:
        raise ValueError(f"{nm[0]}:{nm[1]} sparsity needs in_features divisible by {nm[1]}")
    factor = _factor(gram, n_tokens, damping, factor, weight.device)

    def choose(_start, w_block, diagonal):
        block_mask = torch.ones_like(w_block, dtype=torch.bool)
        if nm is None:
            saliency = w_block.square() / diagonal.square().unsqueeze(0)
            n_pruned = round(sparsity * saliency.numel())
            if n_pruned:
                lowest = torch.topk(saliency.reshape(-1), n_pruned, largest=False).indices
                block_mask.view(-1)[lowest] = False
        return block_mask

    def nm_groups(column, w_block, block_mask, diagonal):
        if column % nm[1] == 0:
            group = w_block[:, column : column + nm[1]].square()
            group = group / diagonal[column : column + nm[1]].square().unsqueeze(0)
            lowest = torch.topk(group, nm[1] - nm[0], dim=1, largest=False).indices
            block_mask[:, column : column + nm[1]].scatter_(1, lowest, False)

    return _obs_columns_(weight, factor, choose, block_size, nm_groups if nm is not None else None)


@torch.no_grad()
def obs_update_(weight: torch.Tensor, mask: torch.Tensor, gram: torch.Tensor | None = None,
                n_tokens: int = 0, block_size: int = 128, damping: float = 0.01,
                factor: HessianFactor | None = None) -> torch.Tensor:
    """Zero ``weight`` (``(out, in)``) where ``mask`` is ``False`` and update the kept weights with
    SparseGPT's column-wise OBS update, **in place**: no weight outside ``mask`` survives (inputs that
never fire are zeroed as well, they carry no signal). Returns ``mask``."""
    if mask.shape != weight.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(weight.shape)}")
    factor = _factor(gram, n_tokens, damping, factor, weight.device)
    mask = mask.to(weight.device, torch.bool)

    def choose(start, w_block, _diagonal):
        return mask[:, start : start + w_block.shape[1]].clone()

    return _obs_columns_(weight, factor, choose, block_size)
