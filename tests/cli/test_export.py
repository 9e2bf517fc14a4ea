"""``optishear-moo export``: any point of a finished search's front as a model."""

import json

import pytest
from transformers import AutoModelForCausalLM

from optishear_moo.cli import main
from optishear_moo.pruning import sparsity_report
from tests.cli.conftest import FAST, PRUNE_WINDOWS

EVAL = ["--eval-seq-len", "32", "--eval-segments", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def front_run(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import make_tiny_model

    root = tmp_path_factory.mktemp("export")
    make_tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    output = root / "front"
    assert main(["optishear", "--model", str(root / "model"), "--target-sparsity", "0.3:0.7", "--objectives",
                 "kl,density", "--pop", "8", "--gens", "2", "--validation-samples", "0",
                 "--output", str(output), *FAST, *PRUNE_WINDOWS]) == 0
    return output


def test_export_writes_the_model_of_any_front_point(front_run, tmp_path):
    front = json.loads((front_run / "front.json").read_text())
    assert len(front) >= 3
    densities = [point["density"] for point in front]
    densest = densities.index(max(densities))
    for argv, index in ((["--point", "1"], 1), (["--density", str(max(densities))], densest)):
        output = tmp_path / f"point{index}"
        assert main(["export", "--run", str(front_run), *argv, "--output", str(output), *EVAL]) == 0
        report = json.loads((output / "report.json").read_text())
        assert report["point"] == index and report["front_point"]["plan"] == front[index]["plan"]
        model = AutoModelForCausalLM.from_pretrained(output / "model")
        assert sparsity_report(model).total == pytest.approx(1 - front[index]["density"], abs=0.01)
        assert json.loads((output / "model" / "config.json").read_text())["pruning"]["point"] == index


def test_export_refuses_what_it_should_not_do(front_run, tmp_path, capsys):
    def export(run, point, output):
        return main(["export", "--run", str(run), "--point", point, "--output", str(output), *EVAL])

    assert export(front_run, "999", tmp_path / "o") == 2
    assert "--point must index" in capsys.readouterr().err and not (tmp_path / "o").exists()
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for name in ("state.json", "evaluations.jsonl", "front.json"):
        (hostile / name).write_bytes((front_run / name).read_bytes())
    state = json.loads((hostile / "state.json").read_text())
    state["settings"]["model"] = "some-org/a-70b-model"  # would be fetched from a hub
    (hostile / "state.json").write_text(json.dumps(state))
    assert export(hostile, "0", tmp_path / "h") == 2
    assert "will not fetch" in capsys.readouterr().err
    state["finished"] = False
    (hostile / "state.json").write_text(json.dumps(state))
    assert export(hostile, "0", tmp_path / "h") == 2
    assert "no finished search" in capsys.readouterr().err
