import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from optishear_moo.cli import main
from optishear_moo.evaluation import perplexity
from tests.cli.conftest import FAST


def test_evop_with_cluster_calibration_saves_a_shallower_model(tiny_model_dir, tmp_path):
    output = tmp_path / "removed"
    code = main(["evop", "--model", str(tiny_model_dir), "--n-remove", "1", "--method", "evop",
                 "--pop", "3", "--gens", "2", "--calibration-sampling", "cluster", "--n-clusters", "2",
                 "--output", str(output), *FAST])
    assert code == 0
    report = json.loads((output / "report.json").read_text())
    assert report["method"] == "evop" and len(report["removed_blocks"]) == 1
    assert report["calibration"]["sampling"] == "cluster" and report["n_evaluations"] >= 3
    assert (output / "state.json").exists()  # the search was checkpointed
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert model.config.num_hidden_layers == 2
    assert model.config.removed_blocks == report["removed_blocks"]
    reloaded = perplexity(model, AutoTokenizer.from_pretrained(output / "model"), seq_len=32, max_segments=2)
    assert reloaded.perplexity == pytest.approx(report["pruned_ppl"], rel=1e-5)


def test_evop_front_and_heuristics(tiny_model_dir, tmp_path):
    front = tmp_path / "front"
    assert main(["evop", "--model", str(tiny_model_dir), "--n-remove", "1:2", "--pop", "4",
                 "--gens", "2", "--warm-start", "sleb,last", "--output", str(front), *FAST]) == 0
    report = json.loads((front / "report.json").read_text())
    assert {len(p["removed_blocks"]) for p in report["front"]} <= {1, 2} and report["front"]
    n_blocks = report["n_blocks"]  # SLEB's greedy order to 2 blocks, then the search's own
    assert report["n_evaluations"] > n_blocks + n_blocks - 1
    assert (front / "pareto.png").exists()
    for method in ("shortgpt", "sleb", "last"):
        output = tmp_path / method
        assert main(["evop", "--model", str(tiny_model_dir), "--n-remove", "1", "--method",
                     method, "--output", str(output), *FAST]) == 0
        assert len(json.loads((output / "report.json").read_text())["removed_blocks"]) == 1


@pytest.mark.parametrize("extra, message", [
    (["--n-remove", "3"], "[0, 3)"),
    (["--n-remove", "x"], "--n-remove"),
    (["--method", "random"], "--method 'random' is not a block-removal method"),
    (["--method", "sleb", "--n-remove", "1:2"], "needs --method evop"),
    (["--objective", "acc"], "kl or ppl"),
    (["--warm-start", "last,owl"], "--warm-start 'owl' is not a heuristic to start from"),
    (["--algorithm", "1+lambda", "--n-remove", "1:2"], "needs --algorithm ga"),
    (["--method", "sleb", "--evals", "20"], "--evals budgets --method evop's search"),
    (["--evals", "0"], "--evals must be an integer of at least 1"),
    (["--stages", "2"], "--stages 2 (multi-fidelity selection) needs --method evop with --algorithm 1+lam"),
    (["--stages", "0", "--algorithm", "1+lambda"], "--stages must be an integer of at least 1"),
])
def test_evop_bad_input(extra, message, tiny_model_dir, tmp_path, capsys):
    code = main(["evop", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"),
                 *FAST, *extra])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0]


def test_evop_with_an_evaluation_budget_resumes_to_a_larger_one(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "budget"
    argv = ["evop", "--model", str(tiny_model_dir), "--n-remove", "1", "--pop", "2", "--warm-start", "last",
            "--output", str(output), *FAST]
    assert main([*argv, "--evals", "3"]) == 0
    first = json.loads((output / "report.json").read_text())["n_evaluations"]
    assert 3 <= first < 3 + 2
    assert main([*argv, "--evals", "3", "--resume"]) == 0  # finished: nothing to do, and what to do instead
    assert f"Continue it with --evals {first + 20} (any number above {first})" in capsys.readouterr().out
    assert main([*argv, "--evals", "5", "--resume"]) == 0
    assert json.loads((output / "report.json").read_text())["n_evaluations"] >= 5


def test_evop_with_multi_fidelity_selection(tiny_model_dir, tmp_path):
    output = tmp_path / "staged"
    assert main(["evop", "--model", str(tiny_model_dir), "--n-remove", "1", "--algorithm", "1+lambda",
                 "--stages", "2", "--pop", "2", "--warm-start", "last", "--evals", "3",
                 "--output", str(output), *FAST]) == 0
    report = json.loads((output / "report.json").read_text())
    assert 3 <= report["n_evaluations"] <= 3 + 3  # a generation: 2 offspring on half the windows, 2 on all
    assert len(report["removed_blocks"]) == 1
    assert report["settings"]["n_stages"] == 2
