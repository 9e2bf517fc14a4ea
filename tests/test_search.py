import json
import pickle

import numpy as np
import pytest
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from transformers import AutoModelForCausalLM

from optishear_moo import OptiShearProblem, sparsity_report
from optishear_moo.cli import main
from optishear_moo.search import load_checkpoint, make_algorithm, run_search


@pytest.fixture
def problem(tiny_llama, calibration):
    return OptiShearProblem(tiny_llama, calibration, 0.5, batch_size=3, reconstruction_tokens=32)


class _InterruptAt(Callback):
    def __init__(self, generation):
        super().__init__()
        self.generation = generation

    def notify(self, algorithm):
        if algorithm.n_gen == self.generation:
            raise KeyboardInterrupt


def _evaluations(directory):
    return [json.loads(line) for line in (directory / "evaluations.jsonl").read_text().splitlines()]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(problem, tmp_path):
    straight = run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), seed=2,
                          checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):  # dies while generation 3 is under way
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), seed=2, checkpoint_dir=tmp_path / "b",
                   callback=_InterruptAt(3))
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    assert saved["n_eval"] < 16 and len(_evaluations(tmp_path / "b")) == saved["n_eval"]
    resumed = run_search(problem, None, checkpoint_dir=tmp_path / "b", resume=True)
    np.testing.assert_array_equal(resumed.X, straight.X)
    np.testing.assert_array_equal(resumed.F, straight.F)
    assert _evaluations(tmp_path / "b") == _evaluations(tmp_path / "a")  # nothing lost or repeated
    assert resumed.algorithm.evaluator.n_eval == straight.algorithm.evaluator.n_eval == 16


def test_checkpoint_loader_refuses_code(tmp_path, problem):
    run_search(problem, NSGA2(pop_size=4), ("n_gen", 1), seed=0, checkpoint_dir=tmp_path)
    algorithm, state = load_checkpoint(tmp_path)
    assert state["generation"] == 1 and algorithm.problem.model is None

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    (tmp_path / "algorithm.pkl").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_checkpoint(tmp_path)
    assert not (tmp_path / "owned").exists()


def test_algorithm_factory(problem):
    assert type(make_algorithm("nsga3", problem, 6)).__name__ == "NSGA3"
    with pytest.raises(ValueError, match="single-objective"):
        make_algorithm("cmaes", problem)
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_algorithm("pso-ultra", problem)


def test_cli_search_writes_front_plan_plot_history_and_model(tiny_model_dir, tmp_path):
    output = tmp_path / "search"
    argv = ["search", "--model", str(tiny_model_dir), "--pop", "4", "--gens", "2", "--n-samples",
            "4", "--seq-len", "32", "--eval-seq-len", "32", "--eval-segments", "2", "--device", "cpu",
            "--output", str(output), "--quiet", "--low-fidelity", "0.5", "--low-fidelity-gens", "1"]
    assert main(argv) == 0
    for name in ("front.json", "front.csv", "best_plan.json", "pareto.png", "pareto.svg",
                 "evaluations.jsonl", "report.json", "state.json", "algorithm.pkl"):
        assert (output / name).is_file(), name
    report = json.loads((output / "report.json").read_text())
    assert report["n_evaluations"] == 8 and len(_evaluations(output)) == 8
    assert set(report["baselines"]) == {"magnitude", "uniform Wanda", "OWL-Wanda"}
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert sparsity_report(model).total == pytest.approx(report["sparsity"])
    # continuing the finished search for two more generations reuses its settings
    assert main(["search", "--output", str(output), "--resume", "--gens", "3", "--quiet",
                 "--model", "ignored-on-resume"]) == 0
    assert json.loads((output / "report.json").read_text())["n_evaluations"] == 12


def test_cli_search_bad_input(tiny_model_dir, tmp_path, capsys):
    base = ["search", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"), "--quiet",
            "--n-samples", "4", "--seq-len", "32"]
    assert main([*base, "--algorithm", "cmaes"]) == 2
    assert "single-objective" in capsys.readouterr().err
    assert main([*base, "--target-sparsity", "half"]) == 2
    assert main([*base, "--objectives", "kl,density"]) == 2
    assert "density objective needs" in capsys.readouterr().err
    # these fail before the model loads: the missing model is never reached
    early = ["search", "--model", "./missing-model", "--output", str(tmp_path / "e"), "--quiet"]
    assert main([*early, "--target-sparsity", "1.2"]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    assert main([*early, "--algorithm", "de"]) == 2
    assert "single-objective" in capsys.readouterr().err
    assert main(["search", "--output", str(tmp_path / "none"), "--resume", "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert torch.is_grad_enabled()


def test_fidelity_schedule_uses_fewer_samples_early_and_front_is_rescored(tiny_llama, calibration):
    from optishear_moo.search import FidelitySchedule, reevaluate_at_full_fidelity

    problem = OptiShearProblem(tiny_llama, calibration, 0.5, objectives=("kl",), batch_size=4)
    x = problem.encode()
    full = problem.evaluate(x[None], return_values_of=["F"])[0, 0]
    problem.fidelity = 0.5  # 3 of the 6 samples: a different (cheaper) estimate
    half = problem.evaluate(x[None], return_values_of=["F"])[0, 0]
    assert half != pytest.approx(full)
    seen = []

    class Spy(FidelitySchedule):
        def notify(self, algorithm):
            super().notify(algorithm)
            seen.append(algorithm.problem.fidelity)

    result = run_search(problem, make_algorithm("ga", problem, 4), ("n_gen", 4), seed=0,
                        callback=Spy(low=0.5, until_generation=2))
    assert seen == [0.5, 1.0, 1.0, 1.0]
    F = reevaluate_at_full_fidelity(problem, result)
    assert problem.fidelity == 1.0
    assert F[0, 0] == pytest.approx(problem.evaluate(np.atleast_2d(result.X), return_values_of=["F"])[0, 0])
