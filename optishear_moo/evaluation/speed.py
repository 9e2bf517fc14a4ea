"""Measured inference speed: prefill latency and greedy decoding throughput with a KV cache."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..activations import model_device


@dataclass(frozen=True)
class SpeedResult:
    """Median over ``repeats`` timed runs (after ``warmup`` untimed ones).

    ``prefill_seconds``: one forward over ``(batch_size, seq_len)`` tokens;
    ``decode_tokens_per_second``: generated tokens per second over ``new_tokens`` greedy steps
    that reuse the KV cache (``batch_size`` sequences in parallel).
    """

    device: str
    batch_size: int
    seq_len: int
    new_tokens: int
    repeats: int
    prefill_seconds: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_speed(model: nn.Module, seq_len: int = 256, batch_size: int = 1, new_tokens: int = 32,
                  repeats: int = 5, warmup: int = 1, seed: int = 0) -> SpeedResult:
    """Time ``model`` on random token ids (speed does not depend on the text)."""
    if min(seq_len, batch_size, new_tokens, repeats) < 1 or warmup < 0:
        raise ValueError("seq_len, batch_size, new_tokens and repeats must be positive, warmup >= 0")
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
    prefill, decode = [], []
    for run in range(warmup + repeats):
        _synchronize(device)
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        _synchronize(device)
        middle = time.perf_counter()
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _synchronize(device)
        if run >= warmup:
            prefill.append(middle - start)
            decode.append(time.perf_counter() - middle)
    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    return SpeedResult(str(device), batch_size, seq_len, new_tokens, repeats, prefill_s,
                       batch_size * seq_len / prefill_s, batch_size * new_tokens / decode_s,
                       sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class SpeedComparison:
    """``model``'s speed over ``reference``'s: the median over ``rounds`` of each round's ratio
    (above 1: ``model`` is faster), with every round's results.

    ``prefill_speedup``: reference prefill seconds / model's; ``decode_speedup``: model decoding
    tokens per second / reference's.
    """

    prefill_speedup: float
    decode_speedup: float
    reference: list[SpeedResult]
    model: list[SpeedResult]

    def to_dict(self) -> dict:
        return {"prefill_speedup": self.prefill_speedup, "decode_speedup": self.decode_speedup,
                "reference": [r.to_dict() for r in self.reference],
                "model": [r.to_dict() for r in self.model]}


def compare_speed(reference: nn.Module, model: nn.Module, rounds: int = 3, seq_len: int = 256,
                  batch_size: int = 1, new_tokens: int = 32, repeats: int = 3, warmup: int = 1,
                  seed: int = 0) -> SpeedComparison:
    """The speed-up of ``model`` (a pruned one) over ``reference`` (the dense one), timed in
    alternation: each of ``rounds`` rounds times the reference, then the model
    (:func:`measure_speed` with the other arguments), and the speed-up is the median of the
    rounds' ratios. Work elsewhere on the machine then slows both sides of a ratio alike, where
    two timings minutes apart can differ several-fold on a shared CPU."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    settings = dict(seq_len=seq_len, batch_size=batch_size, new_tokens=new_tokens, repeats=repeats,
                    warmup=warmup, seed=seed)
    references, models = [], []
    for _ in range(rounds):
        references.append(measure_speed(reference, **settings))
        models.append(measure_speed(model, **settings))
    prefill = statistics.median(r.prefill_seconds / m.prefill_seconds for r, m in zip(references, models))
    decode = statistics.median(m.decode_tokens_per_second / r.decode_tokens_per_second
                               for r, m in zip(references, models))
    return SpeedComparison(prefill, decode, references, models)
