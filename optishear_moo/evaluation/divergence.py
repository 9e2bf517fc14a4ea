"""Divergence from the dense model: its LM-head inputs on calibration tokens, cached once, and
the KL of a candidate's next-token distributions to it. Shared by every method's fitness.

The candidate's forward stops at the LM head; the logits of both models are then formed and
compared in chunks of ``chunk_tokens`` tokens, so full ``(batch, seq, vocab)`` float32 logits of
the two models never exist at once (they dwarf everything else for large vocabularies). An LM head
streamed from disk is read a vocabulary slice at a time instead
(:func:`distances_by_vocab_slices`), for a whole population at once.

When the dense model's next-token distributions are small enough to keep
(:meth:`DenseOutputs.cache_distributions`), a candidate is compared through its *logit
differences* from the dense model. With ``p`` the dense distribution of a token and
``d = Δz − E_p[Δz]`` the candidate's logits minus the dense ones, centred under ``p``::

    KL(p ‖ q) = log Σ_v p_v exp(d_v) = log1p(Σ_v p_v expm1(d_v))

``Δz = (h − h_dense) Wᵀ`` (the bias cancels) and ``E_p[Δz] = (h − h_dense) · (p W)``, with ``p W``
kept once. Per candidate this is one head product, one ``expm1`` and one dot product with ``p``
(no softmax of the candidate, no ``(tokens, vocab)`` temporaries), and it is exactly 0 for a
candidate equal to the dense model. Families with a final logit soft-capping are not linear in
``h``: their dense logits are kept too, ``Δz`` is the difference of the two models' logits and
``E_p[Δz]`` one more dot product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..activations import final_hidden, final_hidden_by_blocks
from ..data.calibration import check_calibration
from ..models.adapters import ArchitectureAdapter
from ..models.placement import is_offloaded
from ..models.streaming import parameter_rows


def kl_sum_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor) -> float:
    """Sum over positions of KL(dense ‖ pruned) of the next-token distributions.

    Both ``(batch, seq_len, vocab)``; computed in float32."""
    return kl_sum_from_log_probs(F.log_softmax(logits.float(), dim=-1).flatten(0, 1),
                                 F.log_softmax(dense_logits.float(), dim=-1).flatten(0, 1))


def kl_sum_from_log_probs(log_probs: torch.Tensor, dense_log_probs: torch.Tensor) -> float:
    """Sum over rows of KL(dense ‖ pruned) from ``(tokens, vocab)`` log-probabilities."""
    return float(F.kl_div(log_probs, dense_log_probs, log_target=True, reduction="sum"))


LOG_PROB_LIMIT = 2**26
"""The dense distributions are kept when ``vocab × calibration tokens`` is at most this (float32:
256 MiB), saving one LM-head product and softmax per candidate."""

CHUNK_LOGITS = 2**24
"""Logits formed at once in a comparison with the dense model (float32: 64 MiB a tensor)."""


def logit_chunk(vocab: int, tokens: int | None = None) -> int:
    """Tokens whose logits are formed at once: at most ``tokens``, and :data:`CHUNK_LOGITS` logits."""
    chunk = max(1, CHUNK_LOGITS // vocab)
    return chunk if tokens is None else max(1, min(tokens, chunk))


@dataclass
class DenseDistribution:
    """The dense model's next-token distributions on some tokens, kept for comparisons
    (see the module docstring).

    Attributes:
        probs: ``(tokens, vocab)`` float32 probabilities ``p``.
        log_norm: ``(tokens,)`` float64 log-normalisers of the dense logits.
        target_logit: ``(tokens,)`` float64 dense logit of each next token (0 where there is none).
        expected_row: ``(tokens, hidden)`` float32 ``p W``, the head's rows averaged under ``p``
            (None for a soft-capped head, whose logits are not linear in its inputs).
        logits: ``(tokens, vocab)`` float32 dense logits, for a soft-capped head (else None).
    """

    probs: torch.Tensor
    log_norm: torch.Tensor
    target_logit: torch.Tensor
    expected_row: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, head_inputs: torch.Tensor, targets: torch.Tensor) -> DenseDistribution:
        """From the dense LM-head inputs ``(tokens, hidden)`` and next tokens ``(tokens,)`` (-100: none),
        on the LM head's device, a :func:`logit_chunk` of tokens at a time."""
        head = model.get_output_embeddings().weight
        linear = not soft_capped(model)
        parts = []
        for hidden, next_ in zip(head_inputs.split(logit_chunk(head.shape[0])),
                                 targets.split(logit_chunk(head.shape[0]))):
            logits = ArchitectureAdapter.logits(model, hidden.to(head.device))
            log_norm = torch.logsumexp(logits, dim=-1)
            probs = torch.exp(logits - log_norm[:, None])
            picked = logits.gather(1, next_.clamp_min(0)[:, None])[:, 0]
            parts.append(cls(probs, log_norm.double(), torch.where(next_ != -100, picked, 0).double(),
                             _rows_average(probs, head) if linear else None, None if linear else logits))
        fields = [[getattr(part, name) for part in parts] for name in cls.__dataclass_fields__]
        return cls(*[None if values[0] is None else torch.cat(values) for values in fields])

    def rows(self, part: slice, device: torch.device | None = None) -> DenseDistribution:
        """These tokens' distributions (on ``device`` when given)."""
        def take(tensor):
            if tensor is None:
                return None
            return tensor[part] if device is None else tensor[part].to(device)
        return DenseDistribution(*[take(getattr(self, name)) for name in self.__dataclass_fields__])


def soft_capped(model: nn.Module) -> bool:
    """Whether the family soft-caps its final logits (then not linear in the LM head's inputs)."""
    return bool(getattr(model.config, "final_logit_softcapping", None))


def _rows_average(probs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``probs @ weight`` in float32, a 64 MiB slice of the head's rows at a time where it is
    stored in another dtype."""
    if weight.dtype == torch.float32:
        return probs @ weight
    rows = max(1, CHUNK_LOGITS // weight.shape[1])
    total = torch.zeros(len(probs), weight.shape[1], device=probs.device)
    for start in range(0, weight.shape[0], rows):
        total += probs[:, start:start + rows] @ weight[start:start + rows].float()
    return total


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two ``(tokens, vocab)`` tensors without a ``(tokens, vocab)``
    temporary (a batched matrix product: about 3x faster than ``(a * b).sum(-1)`` on the CPU)."""
    return torch.einsum("tv,tv->t", a, b)


@dataclass
class DenseOutputs:
    """The dense model's LM-head inputs on calibration tokens.

    ``head_inputs[b]`` is ``(batch, seq_len, hidden)`` for batch ``b`` of ``calibration`` split
    into ``batch_size`` windows; the dense logits are recomputed from them when needed (one
    head matmul) instead of holding ``vocab`` floats per token, unless
    :meth:`cache_distributions` kept them (``distributions[b]``, a :class:`DenseDistribution`
    of the batch's ``batch × seq_len`` tokens).
    """

    calibration: torch.Tensor
    batch_size: int
    head_inputs: list[torch.Tensor]
    distributions: list[DenseDistribution] | None = None

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
              progress: bool = False) -> DenseOutputs:
        """One dense pass; hooks the caller holds open (e.g. activation statistics) see it too. An
        offloaded model (:mod:`optishear_moo.models.placement`) runs block by block on its compute
        device, where the head inputs then stay."""
        check_calibration(calibration, model)
        if is_offloaded(model):
            return cls(calibration, batch_size, final_hidden_by_blocks(model, calibration, batch_size))
        head_inputs = [final_hidden(model, batch) for batch in tqdm(
            torch.split(calibration, batch_size), desc="dense reference", disable=not progress, leave=False)]
        return cls(calibration, batch_size, head_inputs)

    @torch.no_grad()
    def cache_distributions(self, model: nn.Module, limit: int = LOG_PROB_LIMIT) -> bool:
        """Keep the dense next-token distributions when ``vocab × tokens ≤ limit``; says whether
        they are kept, where the LM head is."""
        if self.distributions is None:
            head = model.get_output_embeddings().weight
            if head.shape[0] * self.calibration.numel() * (2 if soft_capped(model) else 1) > limit:
                return False
            self.distributions = [
                DenseDistribution.build(model, hidden.flatten(0, 1), _next_tokens(ids.to(head.device)))
                for ids, hidden in self.batches()]
        return True

    def dense_distribution(self, index: int, rows: int, device: torch.device | None = None
                           ) -> DenseDistribution | None:
        """The kept distributions of batch ``index`` (its first ``rows`` tokens; on ``device`` when
        given), or None."""
        if self.distributions is None:
            return None
        return self.distributions[index].rows(slice(0, rows), device)

    def n_samples(self, fidelity: float = 1.0) -> int:
        """Calibration windows scored at ``fidelity``: its share of them, at least one."""
        if not 0 < fidelity <= 1:
            raise ValueError(f"fidelity must be in (0, 1], got {fidelity}")
        return max(1, round(fidelity * len(self.calibration)))

    def batches(self, fidelity: float = 1.0):
        """``(token batch, dense head inputs)`` pairs over the first ``fidelity`` share of samples."""
        n_samples = self.n_samples(fidelity)
        for batch, dense_hidden in zip(torch.split(self.calibration[:n_samples], self.batch_size),
                                       self.head_inputs):
            yield batch, dense_hidden[: len(batch)]  # the last batch may be cut by the fidelity


def compared_batches(model: nn.Module, dense: DenseOutputs, fidelity: float = 1.0):
    """:func:`distance_to_dense` batches of ``model`` as it is (a full forward per batch) against
    ``dense``, over the first ``fidelity`` share of its calibration windows."""
    for i, (batch, dense_hidden) in enumerate(dense.batches(fidelity)):
        yield final_hidden(model, batch), dense_hidden, batch, dense.dense_distribution(i, batch.numel())


MEASURES = ("kl", "ppl", "output_error")


def check_measures(measures) -> tuple[str, ...]:
    unknown = set(measures) - set(MEASURES)
    if unknown or not measures:
        raise ValueError(f"measures must be among {', '.join(MEASURES)}, got {list(measures)}")
    return tuple(measures)


@torch.no_grad()
def distance_to_dense(model: nn.Module, batches, measures=("kl",), chunk_tokens: int = 4096
                      ) -> dict[str, float]:
    """How far a model is from the dense one over ``(head inputs, dense head inputs, token ids,
    kept dense distributions or None)`` batches (``(batch, seq, hidden)``, ``(batch, seq, hidden)``,
    ``(batch, seq)``, a :class:`DenseDistribution` of the ``batch × seq`` tokens): ``kl``, the mean
    KL(dense ‖ model) per token; ``ppl``, the model's perplexity on the tokens; and
    ``output_error``, ‖H − H_dense‖_F / ‖H_dense‖_F. Logits are formed ``chunk_tokens`` at a time,
    so full ``(batch, seq, vocab)`` logits of the two models never exist at once (with kept
    distributions, the candidate is compared through its logit differences: see the module
    docstring), and fewer when a chunk would hold over :data:`CHUNK_LOGITS` logits (a 128k
    vocabulary: 130 tokens)."""
    measures = check_measures(measures)
    chunk_tokens = logit_chunk(model.get_output_embeddings().weight.shape[0], chunk_tokens)
    kl, tokens, nll, predicted, error_sq, dense_sq = 0.0, 0, 0.0, 0, 0.0, 0.0
    for hidden, dense_hidden, ids, distribution in batches:
        if "output_error" in measures:
            error_sq += float((hidden.float() - dense_hidden.float()).square().sum())
            dense_sq += float(dense_hidden.float().square().sum())
        if "kl" not in measures and "ppl" not in measures:
            continue
        ids = ids.to(hidden.device)
        targets = _next_tokens(ids)
        flat, dense_flat = hidden.flatten(0, 1), dense_hidden.flatten(0, 1)
        for start in range(0, len(flat), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            if distribution is not None:
                kl_part, nll_part = _sums_against(model, flat[part], dense_flat[part],
                                                  distribution.rows(part), targets[part])
                kl, nll = kl + kl_part, nll + nll_part
                continue
            logits = ArchitectureAdapter.logits(model, flat[part])
            if "kl" in measures:
                dense = F.log_softmax(ArchitectureAdapter.logits(model, dense_flat[part]), dim=-1)
                kl += kl_sum_from_log_probs(F.log_softmax(logits, dim=-1), dense)
            if "ppl" in measures:
                nll += float(F.cross_entropy(logits, targets[part], ignore_index=-100, reduction="sum"))
        tokens += ids.numel()
        predicted += ids[:, 1:].numel()
    values = {}
    if "kl" in measures:
        values["kl"] = kl / tokens
    if "ppl" in measures:
        values["ppl"] = math.exp(nll / predicted)
    if "output_error" in measures:
        values["output_error"] = (error_sq / max(dense_sq, 1e-30)) ** 0.5
    return _checked(values)


def _sums_against(model: nn.Module, hidden: torch.Tensor, dense_hidden: torch.Tensor,
                  dense: DenseDistribution, targets: torch.Tensor) -> tuple[float, float]:
    """Sums over tokens of KL(dense ‖ model) and of the model's NLL of the next tokens (``-100``:
    none), from its LM-head inputs and the kept dense distributions (see the module docstring)."""
    has_target, at = targets != -100, targets.clamp_min(0)[:, None]
    if dense.expected_row is None:  # soft-capped: the difference of the two models' logits
        def differences(rows=slice(None)):
            return ArchitectureAdapter.logits(model, hidden[rows]).sub_(dense.logits[rows])

        centred = differences()
        mean = _dot(dense.probs, centred).double()
    else:
        weight = model.get_output_embeddings().weight
        delta = hidden.float() - dense_hidden.float()

        def differences(rows=slice(None)):  # Δz = Δh Wᵀ (the bias cancels)
            return F.linear(delta[rows].to(weight.dtype), weight).float()

        centred = differences()
        mean = (delta.double() * dense.expected_row.double()).sum(-1)
    shift = mean.float()  # E_p[Δz]
    centred.sub_(shift[:, None])
    picked = centred.gather(1, at)[:, 0].double()  # Δz - shift at the next token
    # log Σ p exp(Δz - shift) = KL + E_p[Δz] - shift, the last two apart only by float32 rounding
    kl = torch.log1p(_dot(dense.probs, centred.expm1_()).double()) - (mean - shift.double())
    overflowed = ~torch.isfinite(kl)
    if overflowed.any():  # a difference past exp's float32 range: shift those tokens by their maximum
        rows = differences(overflowed) - shift[overflowed, None]
        kl[overflowed] = (torch.logsumexp(rows + dense.probs[overflowed].log(), dim=-1).double()
                          - (mean - shift.double())[overflowed])
    # log Z_model = log Z_dense + KL + E_p[Δz]; the model's next-token logit = dense one + Δz there
    nll = dense.log_norm + kl + (mean - shift.double()) - dense.target_logit - picked
    return float(kl.sum()), float(nll[has_target].sum())


def _next_tokens(ids: torch.Tensor) -> torch.Tensor:
    """Each position's next token, flattened; a row's last position predicts nothing (-100)."""
    return torch.cat([ids[:, 1:], ids.new_full((len(ids), 1), -100)], dim=1).flatten()


def _checked(values: dict[str, float]) -> dict[str, float]:
    for name, value in values.items():
        if value != value:  # NaN
            raise FloatingPointError(f"the pruned model produced NaN for {name}")
    return values


def kl_to_dense(model: nn.Module, dense: DenseOutputs, fidelity: float = 1.0,
                chunk_tokens: int = 4096) -> float:
    """Mean KL(dense ‖ ``model``) per calibration token, over the first ``fidelity`` of samples."""
    return distance_to_dense(model, compared_batches(model, dense, fidelity), ("kl",), chunk_tokens)["kl"]


SLICE_BYTES = 64 << 20
"""Bytes of LM-head weights read at once by :func:`distances_by_vocab_slices`."""


@torch.no_grad()
def distances_by_vocab_slices(model: nn.Module, candidates: list[list[torch.Tensor]], dense_batches,
                              measures=("kl",), device: torch.device | None = None,
                              slice_bytes: int = SLICE_BYTES) -> list[dict[str, float]]:
    """:func:`distance_to_dense` of several candidates at once, reading the LM head one
    vocabulary slice at a time (``slice_bytes`` of weights) for all of them: the head of a model
    streamed from disk (:mod:`optishear_moo.models.streaming`) is then never whole in memory, and
    each slice is read once per call. The log-normalisers grow slice by slice (a running
    log-sum-exp), so neither model's full logits exist at any time.

    Args:
        candidates: For each candidate, its LM-head inputs ``(batch, seq, hidden)`` per batch.
        dense_batches: ``(token ids, dense LM-head inputs)`` per batch, as
            :meth:`DenseOutputs.batches` gives them.
        device: Where the products run (the head inputs' device when None).
    """
    measures = check_measures(measures)
    batches = list(dense_batches)
    device = device if device is not None else candidates[0][0].device
    targets = [_next_tokens(ids.to(device)) for ids, _ in batches]
    dense = [_Tally(t, hidden) for t, (_, hidden) in zip(targets, batches)]
    tallies = [[_Tally(t, hidden) for t, hidden in zip(targets, candidate)] for candidate in candidates]
    if "kl" in measures or "ppl" in measures:
        head = model.get_output_embeddings()
        vocab, width = head.weight.shape
        rows = max(1, slice_bytes // (width * head.weight.element_size()))

        def logits_of(hidden, weight, bias):
            return ArchitectureAdapter.soft_capped(model, F.linear(hidden.to(device), weight, bias).float())

        for start in range(0, vocab, rows):
            stop = min(vocab, start + rows)
            weight = parameter_rows(head, "weight", start, stop, device)
            bias = parameter_rows(head, "bias", start, stop, device)
            for b, reference in enumerate(dense):
                for part in _parts(len(reference.targets), logit_chunk(stop - start)):
                    dense_logits = logits_of(reference.hidden[part], weight, bias)
                    scale, dense_exp = reference.add(part, dense_logits)
                    for candidate in tallies:
                        tally = candidate[b]
                        logits = logits_of(tally.hidden[part], weight, bias)
                        tally.add(part, logits)
                        if "kl" in measures:  # sum of p_dense * (dense - candidate logits), rescaled as p's
                            tally.cross[part] = (tally.cross[part] * scale
                                                 + (dense_exp * (dense_logits - logits)).sum(-1))
                        if "ppl" in measures:
                            tally.take_targets(part, logits, start, stop)
    tokens = sum(len(t) for t in targets)
    predicted = sum(int((t != -100).sum()) for t in targets)
    results = []
    for candidate in tallies:
        values = {}
        if "kl" in measures:
            # KL per token: E_dense[dense - candidate logits] - log Z_dense + log Z_candidate
            values["kl"] = sum(float((t.cross / r.total - r.log_norm() + t.log_norm()).sum())
                               for t, r in zip(candidate, dense)) / tokens
        if "ppl" in measures:
            values["ppl"] = math.exp(sum(tally.nll() for tally in candidate) / predicted)
        if "output_error" in measures:
            error_sq = sum(float((t.hidden.float() - r.hidden.to(t.hidden.device).float()).square().sum())
                           for t, r in zip(candidate, dense))
            dense_sq = sum(float(r.hidden.float().square().sum()) for r in dense)
            values["output_error"] = (error_sq / max(dense_sq, 1e-30)) ** 0.5
        results.append(_checked(values))
    return results


class _Tally:
    """One batch of one model's LM-head inputs and what :func:`distances_by_vocab_slices` sums
    per token over the vocabulary slices: a running log-sum-exp of the logits (their maximum
    so far and the sum of ``exp(logit - maximum)``), the KL's cross term and the target's logit."""

    def __init__(self, targets: torch.Tensor, hidden: torch.Tensor):
        self.targets = targets  # (shared by the batch's tallies, on the device the sums are)
        self.hidden = hidden.flatten(0, 1)  # (where it is kept; a chunk at a time goes to the device)
        self.high = torch.full(targets.shape, -math.inf, dtype=torch.float64, device=targets.device)
        self.total, self.cross, self.target_logit = (
            torch.zeros(targets.shape, dtype=torch.float64, device=targets.device) for _ in range(3))

    def add(self, part: slice, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take the logits of a vocabulary slice for the tokens ``part``; returns the factor the
        earlier sums were rescaled by and ``exp(logits - new maximum)``."""
        high = torch.maximum(self.high[part], logits.amax(-1).double())
        scale = torch.exp(self.high[part] - high)  # 0 at the first slice
        shifted = torch.exp(logits - high.float()[:, None])
        self.high[part], self.total[part] = high, self.total[part] * scale + shifted.sum(-1).double()
        return scale, shifted

    def take_targets(self, part: slice, logits: torch.Tensor, start: int, stop: int) -> None:
        targets = self.targets[part]
        inside = (targets >= start) & (targets < stop)
        picked = logits.gather(1, (targets - start).clamp(0, stop - start - 1)[:, None])[:, 0]
        self.target_logit[part] += torch.where(inside, picked, 0).double()

    def log_norm(self) -> torch.Tensor:
        return self.high + torch.log(self.total)

    def nll(self) -> float:
        return float((self.log_norm() - self.target_logit)[self.targets != -100].sum())


def _parts(tokens: int, chunk: int) -> list[slice]:
    return [slice(first, first + chunk) for first in range(0, tokens, chunk)]
