"""``optishear-moo levels`` (EvoPress-style level search)."""

import json

from transformers import AutoModelForCausalLM

from optishear_moo.cli import main
from optishear_moo.pruning import sparsity_report
from tests.cli.conftest import FAST


def test_levels_writes_a_pruned_model_and_report_and_resumes(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "levels"
    settings = ["levels", "--model", str(tiny_model_dir), "--sparsity", "0.6", "--step", "0.1",
                "--levels-each-side", "1", "--offspring", "4", "--stages", "2", *FAST]
    argv = [*settings, "--gens", "2", "--output", str(output)]
    assert main(argv) == 0
    report = json.loads((output / "report.json").read_text())
    assert abs(report["sparsity"] - 0.6) < 0.01 and report["evaluations"] >= 5
    assert report["pruned_ppl"] > report["dense_ppl"] and len(report["layer_sparsity"]) == 21
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert abs(sparsity_report(model).total - report["sparsity"]) < 1e-6
    assert main(["levels", "--output", str(output), "--resume", "--gens", "3", "--quiet"]) == 0
    assert json.loads((output / "report.json").read_text())["evaluations"] > report["evaluations"]
    assert main([*settings, "--output", str(tmp_path / "x"), "--method", "obc"]) == 2
    assert "unknown pruning method" in capsys.readouterr().err
