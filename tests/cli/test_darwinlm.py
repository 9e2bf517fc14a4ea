"""``optishear-moo darwinlm``."""

import json

import pytest

from optishear_moo import load_model
from optishear_moo.darwinlm.problem import StructuredPruningProblem
from optishear_moo.evaluation import perplexity
from tests.cli.conftest import darwinlm


def test_darwinlm_one_shot_saves_a_smaller_model_that_reloads(tiny_model_dir, tmp_path):
    output = tmp_path / "sliced"
    assert darwinlm(tiny_model_dir, output, "--compression", "1.5", "--selection", "one-shot") == 0
    report = json.loads((output / "report.json").read_text())
    assert report["compression"] >= 1.5 and report["parameters"] < report["dense_parameters"]
    assert report["finetuned_kl"] is None and report["n_evaluations"] >= 4
    assert (output / "state.json").exists()  # checkpointed
    model, tokenizer = load_model(str(output / "model"), device="cpu")
    assert len(model.config.structured_layers) == 3
    assert sum(p.numel() for p in model.parameters()) == report["parameters"]
    reloaded = perplexity(model, tokenizer, seq_len=32, max_segments=2)
    assert reloaded.perplexity == pytest.approx(report["pruned_ppl"], rel=1e-5)


def test_darwinlm_one_shot_streamed_from_disk_saves_what_a_run_in_memory_saves(tiny_model_dir, tmp_path):
    reports = {}
    for offload in ("none", "disk"):
        output = tmp_path / offload
        on_disk = ["--database-dir", str(tmp_path / "db")] if offload == "disk" else []
        assert darwinlm(tiny_model_dir, output, "--compression", "1.5", "--selection", "one-shot",
                        "--offload", offload, "--scoring", "walk", *on_disk) == 0
        reports[offload] = json.loads((output / "report.json").read_text())
    assert len(list((tmp_path / "db").glob("block*_*.safetensors"))) == 2 * 3  # (attention, mlp) x blocks
    assert reports["disk"]["levels"] == reports["none"]["levels"]
    # (the streamed head is compared a vocabulary slice at a time: float32 rounding apart)
    assert reports["disk"]["calibration_kl"] == pytest.approx(reports["none"]["calibration_kl"], rel=1e-4)
    for name in ("dense_ppl", "pruned_ppl"):
        assert reports["disk"][name] == pytest.approx(reports["none"][name], rel=1e-5), name
    dense = reports["none"]["dense_parameters"]
    assert reports["disk"]["parameters"] == reports["none"]["parameters"] < dense
    model, _ = load_model(str(tmp_path / "disk" / "model"), device="cpu")
    assert sum(p.numel() for p in model.parameters()) == reports["disk"]["parameters"]


def test_darwinlm_training_aware_resumes_after_an_interruption(tiny_model_dir, tmp_path, monkeypatch,
                                                                 capsys):
    aware = ["--compression", "1.5", "--finetune-tokens", "32,64"]
    whole = tmp_path / "whole"
    assert darwinlm(tiny_model_dir, whole, *aware) == 0
    expected = json.loads((whole / "report.json").read_text())
    assert expected["finetuned_kl"] is not None

    calls = {"n": 0}
    evaluate = StructuredPruningProblem._evaluate

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first generation's offspring (the first call scores the parent)
            raise KeyboardInterrupt
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(StructuredPruningProblem, "_evaluate", interrupted)
    output = tmp_path / "resumed"
    assert darwinlm(tiny_model_dir, output, *aware) == 130
    assert "--resume" in capsys.readouterr().err and not (output / "model").exists()
    monkeypatch.setattr(StructuredPruningProblem, "_evaluate", evaluate)
    assert darwinlm(tiny_model_dir, output, *aware, "--resume") == 0  # the same flags again
    report = json.loads((output / "report.json").read_text())
    assert report["levels"] == expected["levels"]
    assert report["n_evaluations"] == expected["n_evaluations"]


def test_darwinlm_front_over_a_compression_range(tiny_model_dir, tmp_path):
    output = tmp_path / "front"
    assert darwinlm(tiny_model_dir, output, "--compression", "1.3:2.5", "--selection", "one-shot",
                      "--offspring", "6", "--pop", "6") == 0
    report = json.loads((output / "report.json").read_text())
    compressions = [point["compression"] for point in report["front"]]
    assert compressions == sorted(compressions, reverse=True) and report["compression"] == compressions[0]
    assert all(1.3 - 1e-9 <= c <= 2.5 + 1e-9 for c in compressions)
    assert (output / "pareto.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--compression", "0.8"], "above 1"),
    (["--compression", "big"], "--compression"),
    (["--compression", "1.3:2"], "training-aware needs one --compression"),
    (["--finetune-tokens", "64,32"], "must grow"),
    (["--offspring", "0"], "at least 1"),
])
def test_darwinlm_bad_input(extra, message, tiny_model_dir, tmp_path, capsys):
    assert darwinlm(tiny_model_dir, tmp_path / "o", *extra) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not (tmp_path / "o").exists()






