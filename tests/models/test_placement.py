"""Offloaded models: weights where they are, blocks run on the compute device one at a time.

On a machine without a GPU the compute device is ``cpu:0``, a device object distinct from the
weights' ``cpu``: every move of the offloaded paths runs, and the results must equal the
ordinary ones; the ``cuda`` cases run where a GPU is lent."""

import numpy as np
import pytest
import torch

from optishear_moo import LevelSearchProblem, OptiShearProblem, load_model, prune_model
from optishear_moo.errors import SettingError
from optishear_moo.evaluation import DenseOutputs
from optishear_moo.models import compute_device, get_adapter, offload
from optishear_moo.models.placement import is_offloaded
from tests.conftest import assert_same_weights, make_tiny_model

DEVICES = ["cpu:0", pytest.param("cuda", marks=pytest.mark.cuda)]


def _offloaded(device):
    return offload(make_tiny_model("llama"), device)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_references_and_pruning_of_an_offloaded_model_equal_the_ordinary_ones(device, calibration):
    model, ordinary = _offloaded(device), make_tiny_model("llama")
    assert is_offloaded(model) and compute_device(model) == torch.device(device)
    assert not is_offloaded(ordinary)
    walked = DenseOutputs.build(model, calibration, batch_size=4)
    plain = DenseOutputs.build(ordinary, calibration, batch_size=4)
    for a, b in zip(walked.head_inputs, plain.head_inputs):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    prune_model(model, calibration, method="sparsegpt", sparsity=0.5, progress=False)
    prune_model(ordinary, calibration, method="sparsegpt", sparsity=0.5, progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())  # the weights never moved for good
    pairs = zip(get_adapter(model).prunable_layers(model), get_adapter(ordinary).prunable_layers(ordinary))
    for a, b in pairs:
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_problems_on_an_offloaded_model_score_as_on_an_ordinary_one(device, calibration):
    settings = dict(target_sparsity=0.5, objectives=("kl", "reconstruction"), batch_size=3)
    on_host, ordinary = OptiShearProblem(_offloaded(device), calibration, **settings), OptiShearProblem(
        make_tiny_model("llama"), calibration, **settings)
    X = on_host.initial_population(5)
    np.testing.assert_allclose(on_host.evaluate(X, return_values_of=["F"]),
                               ordinary.evaluate(X, return_values_of=["F"]), rtol=1e-4, atol=1e-7)
    assert_same_weights(on_host.model, make_tiny_model("llama"))
    with pytest.raises(SettingError, match="not supported yet on a model loaded with offload host or disk"):
        OptiShearProblem(_offloaded(device), calibration, 0.5, update="obs")
    levels = LevelSearchProblem(_offloaded(device), calibration, 0.5, step=0.1, batch_size=3)
    plain = LevelSearchProblem(make_tiny_model("llama"), calibration, 0.5, levels.database, batch_size=3)
    Y = np.array([levels.uniform_x(0.5), levels.uniform_x(0.4) + 1])
    np.testing.assert_allclose(levels.evaluate(Y, return_values_of=["F"]),
                               plain.evaluate(Y, return_values_of=["F"]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_darwinlm_on_an_offloaded_model_walks_and_scores_as_on_an_ordinary_one(device, calibration):
    from optishear_moo.darwinlm.problem import StructuredPruningProblem

    settings = dict(target_compression=2.0, mlp_levels=8, batch_size=3)
    on_host = StructuredPruningProblem(_offloaded(device), calibration, **settings)
    ordinary = StructuredPruningProblem(make_tiny_model("llama"), calibration, scoring="slice", **settings)
    assert on_host.evaluator.walks and not ordinary.evaluator.walks  # auto: the walk
    X = np.array([on_host.uniform_x(2.0), [2, 8, 0, 0, 1, 4]])
    np.testing.assert_allclose(on_host.evaluate(X, return_values_of=["F"]),
                               ordinary.evaluate(X, return_values_of=["F"]), rtol=1e-4, atol=1e-7)
    assert all(p.device.type == "cpu" for p in on_host.model.parameters())
    assert_same_weights(on_host.model, make_tiny_model("llama"))


def test_offload_on_the_cpu_changes_nothing(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), device="cpu", offload=True)
    assert not is_offloaded(model)


@pytest.mark.cuda
def test_load_model_offloaded_to_a_gpu_keeps_the_weights_in_host_memory(tiny_model_dir, calibration):
    model, _ = load_model(str(tiny_model_dir), device="cuda", offload=True)
    assert compute_device(model).type == "cuda" and all(p.device.type == "cpu" for p in model.parameters())
    prune_model(model, calibration, method="wanda", sparsity=0.5, progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())
