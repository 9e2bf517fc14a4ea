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


def test_block_masks_by_selection_and_by_ranks_match_direct_masks(tiny_llama, calibration):
    """A metric announced at few sparsities of a block is thresholded by selection, at more than
    SELECTIONS by ranks; both give metric_masks' masks."""
    from optishear_moo.activations import collect_input_statistics
    from optishear_moo.models import get_adapter
    from optishear_moo.optishear import MetaMetric, metric_masks
    from optishear_moo.optishear.meta_metric import SELECTIONS, BlockMetricMasks

    adapter = get_adapter(tiny_llama)
    statistics = collect_input_statistics(tiny_llama, calibration)
    builder = BlockMetricMasks(statistics)
    metric = MetaMetric("relative", "log", "mean", "softmax", 0.25)
    for count in (1, 3, SELECTIONS[1] + 1):
        sparsities = [0.05 + 0.9 * i / count for i in range(count)]
        builder.expect([[(metric, s)] * 3 for s in sparsities])
        for index, block in enumerate(adapter.blocks(tiny_llama)):
            layers = adapter.block_layers(block, index)
            for s in sparsities:
                direct = metric_masks(metric, layers, [s] * 3, statistics)
                assert all(torch.equal(mask, direct[layer.name])
                           for layer, mask in zip(layers, builder.masks(metric, layers, s)))
        assert bool(builder._ranks) == (count > SELECTIONS[1])  # the path taken
