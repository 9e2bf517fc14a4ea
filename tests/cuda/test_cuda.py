"""CUDA agreement (skipped without a GPU): the same objectives, pruning and commands on the GPU."""

import json

import numpy as np
import pytest
import torch

from optishear_moo import OptiShearProblem, prune_model
from optishear_moo.cli import main
from optishear_moo.evaluation import DenseOutputs, kl_to_dense
from tests.cli.conftest import FAST, PRUNE_WINDOWS
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.cuda


def test_objectives_agree_between_cpu_and_cuda(calibration):
    cpu = OptiShearProblem(make_tiny_model("llama"), calibration, 0.5, batch_size=3,
                           reconstruction_tokens=32, update="obs")
    gpu = OptiShearProblem(make_tiny_model("llama").cuda(), calibration, 0.5, batch_size=3,
                           reconstruction_tokens=32, update="obs")
    X = cpu.initial_population(6)
    on_gpu, on_cpu = (problem.evaluate(X, return_values_of=["F"]) for problem in (gpu, cpu))
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_prunes_close_to_float32(dtype, calibration):
    reference = DenseOutputs.build(make_tiny_model("llama").cuda(), calibration)
    kl = {}
    for label, model in (("float32", make_tiny_model("llama").cuda()),
                         ("half", make_tiny_model("llama").to("cuda", dtype))):
        prune_model(model, calibration, method="sparsegpt", sparsity=0.5, progress=False)
        kl[label] = kl_to_dense(model.float(), reference)
    assert kl["half"] == pytest.approx(kl["float32"], rel=0.2), kl


COMMANDS = [
    ["prune", "--method", "sparsegpt"],
    ["optishear", "--pop", "4", "--gens", "1", *PRUNE_WINDOWS],
    ["evopress", *PRUNE_WINDOWS, "--offspring", "2", "--gens", "1", "--step", "0.1", "--levels-each-side",
     "1"],
    ["evop", "--n-remove", "1", "--pop", "4", "--gens", "1"],
    ["darwinlm", "--selection", "one-shot", "--offspring", "2", "--gens", "1"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_runs_on_cuda(command, tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    fast = [flag if flag != "cpu" else "cuda" for flag in FAST]
    argv = [command[0], "--model", str(tiny_model_dir), "--output", str(output), *fast, *command[1:]]
    assert main(argv) == 0
    assert json.loads((output / "report.json").read_text())["pruned_ppl"] > 0
