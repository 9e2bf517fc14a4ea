import copy

import pytest

from optishear_moo.evaluation import compare_speed, measure_speed
from optishear_moo.evaluation import speed as speed_module
from optishear_moo.evop.blocks import remove_blocks_


def test_measure_speed_times_prefill_and_cached_decoding(tiny_llama):
    result = measure_speed(tiny_llama, seq_len=16, new_tokens=4, repeats=2, batch_size=2)
    assert result.prefill_seconds > 0
    assert result.prefill_tokens_per_second == pytest.approx(32 / result.prefill_seconds)
    assert result.decode_tokens_per_second > 0 and (result.batch_size, result.repeats) == (2, 2)
    assert result.parameters == sum(p.numel() for p in tiny_llama.parameters())
    with pytest.raises(ValueError, match="must be positive"):
        measure_speed(tiny_llama, new_tokens=0)


def test_compare_speed_alternates_the_two_models_and_takes_the_median_ratio(tiny_llama, monkeypatch):
    """Each round times the reference, then the model; a slow-down that hits one round hits both
    sides of its ratio, and the median over rounds drops an odd one."""
    calls, slow = [], {0: 1.0, 1: 1.0, 2: 4.0, 3: 4.0, 4: 1.0, 5: 1.5}  # call -> load factor
    real = measure_speed

    def fake(model, **settings):
        result = real(model, seq_len=4, new_tokens=1, repeats=1)
        base = 2.0 if model is tiny_llama else 1.0  # the reference takes twice as long
        factor = slow[len(calls)]
        calls.append(model)
        return speed_module.SpeedResult(**{**result.to_dict(), "prefill_seconds": base * factor,
                                           "decode_tokens_per_second": 10 / (base * factor)})

    monkeypatch.setattr(speed_module, "measure_speed", fake)
    pruned = remove_blocks_(copy.deepcopy(tiny_llama), [0])
    comparison = compare_speed(tiny_llama, pruned, rounds=3)
    assert calls == [tiny_llama, pruned] * 3
    # ratios per round: 2/1, 8/4 and 2/1.5: the median is 2 for both prefill and decoding
    assert (comparison.prefill_speedup, comparison.decode_speedup) == pytest.approx((2.0, 2.0))
    assert len(comparison.to_dict()["reference"]) == 3
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        compare_speed(tiny_llama, pruned, rounds=0)
