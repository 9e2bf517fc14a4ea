import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from optishear_moo.cli import main
from optishear_moo.pruning import sparsity_report
from tests.cli.conftest import PRUNE_WINDOWS, evaluations


def test_cli_optishear_writes_front_plan_plot_history_and_model(tiny_model_dir, tmp_path):
    output = tmp_path / "search"
    argv = ["optishear", "--model", str(tiny_model_dir), "--pop", "4", "--gens", "2", "--n-samples",
            "4", "--seq-len", "32", "--eval-seq-len", "32", "--eval-segments", "2", "--device", "cpu",
            "--output", str(output), "--quiet", "--low-fidelity", "0.5", "--low-fidelity-gens", "1",
            "--prune-samples", "6", "--prune-seq-len", "48"]
    assert main(argv) == 0
    for name in ("front.json", "front.csv", "best_plan.json", "pareto.png", "pareto.svg",
                 "evaluations.jsonl", "report.json", "state.json"):
        assert (output / name).is_file(), name
    report = json.loads((output / "report.json").read_text())
    assert report["n_evaluations"] == 8 and len(evaluations(output)) == 8
    assert set(report["baselines"]) == {"magnitude", "uniform Wanda", "OWL-Wanda"}
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert sparsity_report(model).total == pytest.approx(report["sparsity"])
    _assert_pruned_from_the_pruning_windows(model, tiny_model_dir, output, report)
    # continuing the finished search for one more generation: the same flags, more --gens
    assert argv[5:7] == ["--gens", "2"]
    assert main([*argv[:6], "3", *argv[7:], "--resume"]) == 0
    assert json.loads((output / "report.json").read_text())["n_evaluations"] == 12
    assert main([*argv, "--resume", "--seed", "1"]) == 2  # other settings are refused, not copied


def _assert_pruned_from_the_pruning_windows(saved, model_dir, output, report):
    """The saved model is the chosen plan applied with the --prune-samples x --prune-seq-len windows,
    not with the windows that scored the candidates."""
    from optishear_moo.data import load_calibration
    from optishear_moo.models import get_adapter, load_model
    from optishear_moo.optishear import PruningPlan

    plan = PruningPlan.load(output / "best_plan.json")
    settings = report["calibration"]
    dense, tokenizer = load_model(str(model_dir))
    windows = {way: load_calibration(tokenizer, settings[samples] or settings["n_samples"],
                                     settings[seq_len] or settings["seq_len"], settings["seed"],
                                     settings["source"], progress=False)
               for way, samples, seq_len in (("pruning", "prune_samples", "prune_seq_len"),
                                             ("search", "n_samples", "seq_len"))}
    masks = {}
    for way, calibration in windows.items():
        model, _ = load_model(str(model_dir))
        plan.apply(model, calibration)
        masks[way] = [layer.weight == 0 for layer in get_adapter(model).prunable_layers(model)]
    saved_masks = [layer.weight == 0 for layer in get_adapter(saved).prunable_layers(saved)]
    assert all(torch.equal(a, b) for a, b in zip(saved_masks, masks["pruning"]))
    assert not all(torch.equal(a, b) for a, b in zip(saved_masks, masks["search"]))


def test_cli_optishear_bad_input(tiny_model_dir, tmp_path, capsys):
    base = ["optishear", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"), "--quiet",
            "--n-samples", "4", "--seq-len", "32", "--eval-seq-len", "32", *PRUNE_WINDOWS]
    assert main([*base, "--algorithm", "cmaes"]) == 2
    assert "single-objective" in capsys.readouterr().err
    assert main([*base, "--target-sparsity", "half"]) == 2
    assert main([*base, "--objectives", "kl,density"]) == 2
    assert "density objective needs" in capsys.readouterr().err
    # these fail before the model loads: the missing model is never reached
    early = ["optishear", "--model", "./missing-model", "--output", str(tmp_path / "e"), "--quiet"]
    assert main([*early, "--target-sparsity", "1.2"]) == 2
    assert "--target-sparsity must be in [0, 1)" in capsys.readouterr().err
    assert main([*early, "--algorithm", "de"]) == 2
    assert "single-objective" in capsys.readouterr().err
    assert main([*base[:4], str(tmp_path / "none"), *base[5:], "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert torch.is_grad_enabled()


def test_front_rescored_on_zero_shot_tasks(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-evaluation-harness (the [eval] extra) is not installed")
    from optishear_moo.evaluation import zero_shot as module
    from tests.evaluation.test_zero_shot import write_task_data

    monkeypatch.setattr(module, "default_data_root", lambda: write_task_data(tmp_path / "tasks", ("piqa",)))
    output = tmp_path / "front"
    assert main(["optishear", "--model", str(tiny_model_dir), "--target-sparsity", "0.3:0.7", "--objectives",
                 "kl,density", "--pop", "4", "--gens", "1", "--n-samples", "4", "--seq-len", "32",
                 "--eval-seq-len", "32", "--eval-segments", "1", "--device", "cpu", "--output", str(output),
                 "--quiet", "--zero-shot", "piqa", "--validation-samples", "0", *PRUNE_WINDOWS]) == 0
    report = json.loads((output / "report.json").read_text())
    assert all("zero_shot" in point and 0 <= point["density"] <= 1 for point in report["front"])
    # a size range: every baseline at three sparsities across it
    expected = {f"{label} at sparsity {target}" for target in ("0.30", "0.50", "0.70")
                for label in ("magnitude", "uniform Wanda", "OWL-Wanda")}
    assert set(report["baselines_zero_shot"]) == expected
    assert (output / "pareto_zero_shot.png").is_file() and "zero_shot" in report


def test_a_search_streamed_from_disk_finds_and_saves_what_one_in_memory_does(tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    """``--offload disk``: the blocks and embeddings are read from the model directory as used; the
    front, the report's figures and the saved model equal an ordinary run's."""
    from optishear_moo.models.streaming import SafetensorsWeights

    reads = []
    original = SafetensorsWeights.read
    monkeypatch.setattr(SafetensorsWeights, "read", lambda self, key, *a, **k: (
        reads.append(key), original(self, key, *a, **k))[1])
    runs = {}
    for offload in ("none", "disk"):
        output = tmp_path / offload
        argv = ["optishear", "--model", str(tiny_model_dir), "--pop", "4", "--gens", "2", "--n-samples", "4",
                "--seq-len", "32", "--eval-seq-len", "32", "--eval-segments", "2", "--device", "cpu",
                "--output", str(output), "--quiet", "--offload", offload, *PRUNE_WINDOWS]
        assert main(argv) == 0
        assert bool(reads) == (offload == "disk")  # the disk run read its tensors as it went
        runs[offload] = (json.loads((output / "front.json").read_text()),
                         json.loads((output / "report.json").read_text()),
                         AutoModelForCausalLM.from_pretrained(output / "model"))
    (front, report, model), (front_disk, report_disk, model_disk) = runs["none"], runs["disk"]
    def chosen(point):  # the plan without its scores
        return {key: value for key, value in point["plan"].items() if key != "objectives"}

    assert [chosen(point) for point in front_disk] == [chosen(point) for point in front]  # the same search
    for point, point_disk in zip(front, front_disk):
        # (the streamed head is compared slice by slice: a float32 rounding apart from the whole head)
        assert point_disk["objectives"] == pytest.approx(point["objectives"], rel=1e-4)
    for name in ("dense_ppl", "pruned_ppl", "sparsity"):
        assert report_disk[name] == pytest.approx(report[name], rel=1e-5), name
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(model_disk.state_dict()[name], tensor)
