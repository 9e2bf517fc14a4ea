import torch


def test_ranked_metric_masks_match_direct_masks(tiny_llama, calibration):
    import numpy as np

    from optishear_moo.activations import collect_input_statistics
    from optishear_moo.models import get_adapter
    from optishear_moo.optishear import MetaMetric, metric_masks
    from optishear_moo.optishear.meta_metric import RankedMetricMasks

    layers = get_adapter(tiny_llama).prunable_layers(tiny_llama)
    statistics = collect_input_statistics(tiny_llama, calibration)
    ranked = RankedMetricMasks(layers, statistics)
    for metric, sparsity in [(MetaMetric.wanda(), [0.5, 0.6, 0.4]), (MetaMetric.wanda(), [0.2] * 3),
                             (MetaMetric("relative", "log", "mean", "softmax", 0.25), [0.7, 0.5, 0.3])]:
        fast = ranked.masks(metric, np.array(sparsity))
        direct = metric_masks(metric, layers, sparsity, statistics)
        assert all(torch.equal(fast[name], direct[name]) for name in direct)
