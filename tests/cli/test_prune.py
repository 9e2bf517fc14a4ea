import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from optishear_moo.cli import main
from optishear_moo.evaluation import perplexity
from tests.cli.conftest import FAST


def test_prune_writes_a_model_that_reloads_with_the_same_perplexity(tiny_model_dir, tmp_path):
    output = tmp_path / "pruned"
    command = [sys.executable, "-m", "optishear_moo", "prune", "--model", str(tiny_model_dir),
               "--method", "wanda", "--sparsity", "0.5", "--output", str(output), *FAST]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "prune: ppl" in done.stdout
    report = json.loads((output / "report.json").read_text())
    for key in ("dense_ppl", "pruned_ppl", "sparsity", "settings", "per_layer_sparsity"):
        assert key in report
    assert report["settings"]["method"] == "wanda" and report["sparsity"] == pytest.approx(0.5)
    assert report["pruned_ppl"] > report["dense_ppl"] > 1
    assert len(report["per_layer_sparsity"]) == 21
    assert list((output / "model").glob("*.safetensors"))  # one layout: the model in output/model
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    reloaded = perplexity(model, tokenizer, seq_len=32, max_segments=2)
    assert reloaded.perplexity == pytest.approx(report["pruned_ppl"], rel=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.2"], "--sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "--sparsity must be in [0, 1)"),
        (["--method", "obc"], "--method 'obc' is not a pruning method"),
        (["--nm", "2:48"], "divisible by 48"),
        (["--nm", "two:four"], "look like '2:4'"),
        (["--allocation", "owl", "--nm", "2:4"], "use --allocation uniform"),
        (["--eval-segments", "none"], "--eval-segments"),
        (["--calibration", "EMPTY"], "is empty"),
        (["--calibration", "SHORT"], "fewer than --seq-len"),
    ],
)
def test_bad_input_gives_one_error_line_and_writes_nothing(
    extra, message, tiny_model_dir, tmp_path, capsys
):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "short.txt").write_text("just a few words")
    extra = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "short.txt")
             if a == "SHORT" else a for a in extra]
    output = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_model_dir), "--output", str(output), *FAST, *extra])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(error_lines) == 1 and error_lines[0].startswith("optishear-moo: error:")
    assert message in error_lines[0]
    assert not output.exists() and not list(tmp_path.glob(".out.*"))


def test_existing_output_is_not_overwritten_without_flag(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    assert main(["prune", "--model", str(tiny_model_dir), "--output", str(output), *FAST]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "keep.txt").read_text() == "user data"


def test_unknown_model_exits_with_one_line():
    done = subprocess.run([sys.executable, "-m", "optishear_moo", "prune", "--model",
                           "./missing-model", "--output", "unused", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "optishear-moo: error: model path './missing-model' is neither a model directory nor a "
        ".gguf file"]








def test_evaluate_and_zero_shot_on_a_pruned_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-evaluation-harness (the [eval] extra) is not installed")
    from optishear_moo.evaluation import zero_shot as module
    from tests.evaluation.test_zero_shot import write_task_data

    root = write_task_data(tmp_path / "tasks", ("piqa", "boolq"))
    monkeypatch.setattr(module, "default_data_root", lambda: root)
    output = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--output", str(output),
                 "--zero-shot", "piqa,boolq", *FAST]) == 0
    accuracy = json.loads((output / "report.json").read_text())["zero_shot"]
    assert set(accuracy["tasks"]) == {"piqa", "boolq"} and accuracy["average"]["acc"] >= 0
    assert main(["evaluate", "--model", str(output / "model"), "--tasks", "piqa", "--output",
                 str(tmp_path / "e.json"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "acc_norm" in printed and "average" in printed
    scores = json.loads((tmp_path / "e.json").read_text())
    assert scores["tasks"]["piqa"]["n"] == 3 and scores["model"] == str(output / "model")
    assert main(["evaluate", "--model", str(output / "model"), "--tasks", "mmlu"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert main(["prune", "--model", "./missing", "--output", str(tmp_path / "x"), "--zero-shot", "rte"]) == 2
    assert "rte" in capsys.readouterr().err  # its data is missing: refused before the model loads
