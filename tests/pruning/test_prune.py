import numpy as np
import pytest
import torch

from optishear_moo import prune_model
from optishear_moo.models import get_adapter
from optishear_moo.pruning import DenseSnapshot, PruningConfig, masks_applied, sparsity_report
from tests.conftest import make_tiny_model


def _weights(model):
    return {layer.name: layer.weight.clone() for layer in get_adapter(model).prunable_layers(model)}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "sparsegpt"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_method_hits_the_target_and_restores(method, family, calibration):
    model = make_tiny_model(family)
    dense = _weights(model)
    snapshot = DenseSnapshot.of(model)
    result = prune_model(model, calibration, method=method, sparsity=0.5, progress=False)
    assert result.report.total == pytest.approx(0.5, abs=1e-6)
    assert all(s == pytest.approx(0.5, abs=0.01) for s in result.report.per_layer.values())
    assert set(result.report.per_layer) == set(dense)
    for name, mask in result.masks.items():  # the model holds exactly the reported zeros
        weight = get_adapter(model).prunable_layers(model)
        weight = next(layer.weight for layer in weight if layer.name == name)
        assert torch.equal(weight == 0, ~mask)
    snapshot.restore()
    assert all(torch.equal(w, dense[name]) for name, w in _weights(model).items())


def test_data_aware_methods_pick_different_weights_than_magnitude(calibration):
    masks = {}
    for method in ("magnitude", "wanda"):
        model = make_tiny_model("llama")
        masks[method] = prune_model(model, calibration, method=method, progress=False).masks
    name = "model.layers.1.mlp.down_proj"
    assert not torch.equal(masks["magnitude"][name], masks["wanda"][name])


def test_nm_pruning_and_owl_allocation(calibration):
    model = make_tiny_model("llama")
    result = prune_model(model, calibration, method="wanda", nm="2:4", progress=False)
    assert result.report.total == pytest.approx(0.5)
    for mask in result.masks.values():
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    model = make_tiny_model("llama")
    result = prune_model(model, calibration, method="wanda", sparsity=0.6, allocation="owl",
                         progress=False)
    sizes = [sum(x.numel for x in get_adapter(model).prunable_layers(model) if x.block_index == i)
             for i in range(3)]
    assert np.average(result.block_sparsity, weights=sizes) == pytest.approx(0.6)
    assert len(set(np.round(result.block_sparsity, 6))) > 1
    np.testing.assert_allclose(result.report.per_block, result.block_sparsity, atol=0.01)


def test_masks_applied_context_restores_dense_weights(tiny_llama):
    dense = _weights(tiny_llama)
    masks = {name: torch.rand_like(w) > 0.3 for name, w in dense.items()}
    with masks_applied(tiny_llama, masks):
        assert sparsity_report(tiny_llama).total == pytest.approx(0.3, abs=0.02)
    assert sparsity_report(tiny_llama).total == 0.0
    assert all(torch.equal(w, dense[name]) for name, w in _weights(tiny_llama).items())


def test_configuration_errors(tiny_llama, calibration):
    with pytest.raises(ValueError, match="is not a pruning method"):
        PruningConfig(method="obc")
    with pytest.raises(ValueError, match="allocation 'random' is unknown"):
        PruningConfig(allocation="random")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        PruningConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="use allocation uniform"):
        PruningConfig(nm=(2, 4), allocation="owl")
    with pytest.raises(ValueError, match="divisible by 48"):
        prune_model(tiny_llama, calibration, nm=(2, 48), progress=False)
    with pytest.raises(ValueError, match="needs calibration"):
        prune_model(tiny_llama, None, method="wanda")
    with pytest.raises(ValueError, match="non-empty"):
        prune_model(tiny_llama, torch.zeros(0, 8, dtype=torch.long), method="wanda")
    assert sparsity_report(tiny_llama).total == 0.0  # nothing was pruned by a failed call


@pytest.mark.parametrize("update", ["obs", "lstsq"])
def test_wanda_with_a_weight_update_keeps_its_masks_and_tracks_the_dense_model_better(update, calibration):
    from optishear_moo.evaluation import DenseOutputs, kl_to_dense

    reference = DenseOutputs.build(make_tiny_model("llama"), calibration)
    kl = {}
    for label in ("none", update):
        model = make_tiny_model("llama")
        result = prune_model(model, calibration, method="wanda", sparsity=0.6, update=label, progress=False)
        layers = {layer.name: layer.weight for layer in get_adapter(model).prunable_layers(model)}
        assert all(torch.equal(layers[name] == 0, ~mask) for name, mask in result.masks.items())
        kl[label] = kl_to_dense(model, reference)
    assert kl[update] < 0.9 * kl["none"], kl
    with pytest.raises(ValueError, match="sparsegpt updates the kept weights itself"):
        PruningConfig("sparsegpt", 0.5, update="obs")
    with pytest.raises(ValueError, match="is not a weight update"):
        PruningConfig("wanda", 0.5, update="adam")


@pytest.mark.parametrize("device", ["cpu:0", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_pruning_block_by_block_on_another_device_equals_pruning_in_place(method, device, calibration):
    """The model stays where it is; each block is pruned on ``device`` and sent back."""
    here, there = make_tiny_model("llama"), make_tiny_model("llama")
    prune_model(here, calibration, method=method, sparsity=0.5, progress=False)
    seen = []
    for block in get_adapter(there).blocks(there):
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].device.type))
    prune_model(there, calibration, method=method, sparsity=0.5, progress=False, device=device)
    assert device.split(":")[0] in seen  # (the embeddings' capture runs at home)
    assert all(p.device.type == "cpu" for p in there.parameters())
    for a, b in zip(get_adapter(here).prunable_layers(here), get_adapter(there).prunable_layers(there)):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-4, atol=1e-5)
