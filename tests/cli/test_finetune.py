"""``optishear-moo finetune``."""

import json

import pytest
import torch

from optishear_moo import finetuning, load_model
from optishear_moo.cli import main
from optishear_moo.evaluation import perplexity


def finetune(model_dir, output, *extra):
    return main(["finetune", "--model", str(model_dir), "--output", str(output), "--tokens", "256",
                 "--seq-len", "32", "--batch-size", "2", "--learning-rate", "1e-3",
                 "--eval-seq-len", "32", "--eval-segments", "2", "--device", "cpu", "--quiet", *extra])


def test_finetune_lowers_perplexity_and_resumes(sliced_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert finetune(sliced_dir, whole, "--checkpoint-every", "1") == 0
    report = json.loads((whole / "report.json").read_text())
    assert report["steps"] == 4 and report["tokens"] == 256 and report["loss"] == "next-token"
    assert report["ppl_after"] < report["ppl_before"]
    trained, tokenizer = load_model(str(whole / "model"), device="cpu")
    assert perplexity(trained, tokenizer, 32, 2).perplexity == pytest.approx(report["ppl_after"], rel=1e-5)

    saves = {"n": 0}
    save = finetuning._save

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetuning, "_save", save_then_stop)
    output = tmp_path / "resumed"
    assert finetune(sliced_dir, output, "--checkpoint-every", "1") == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(finetuning, "_save", save)
    assert finetune(sliced_dir, output, "--checkpoint-every", "1", "--resume") == 0  # the same flags again
    resumed = json.loads((output / "report.json").read_text())
    assert resumed["steps"] == 4 and resumed["ppl_before"] == report["ppl_before"]
    weights = load_model(str(output / "model"), device="cpu")[0].state_dict()
    assert all(torch.allclose(weights[k], v, atol=1e-6) for k, v in trained.state_dict().items())

    distilled = tmp_path / "distilled"
    assert finetune(sliced_dir, distilled, "--teacher", str(tiny_model_dir)) == 0
    distill = json.loads((distilled / "report.json").read_text())
    # the loss is the KL to the teacher the student was sliced from (small), not cross-entropy
    assert distill["loss"] == "distillation" and 0 <= distill["first_loss"] < 0.05 < report["first_loss"]


def test_finetune_bad_input(sliced_dir, tmp_path, capsys):
    assert finetune(sliced_dir, tmp_path / "a", "--tokens", "8") == 2
    assert "less than one window" in capsys.readouterr().err
    assert finetune(sliced_dir, tmp_path / "none", "--resume") == 2
    assert "no interrupted post-training" in capsys.readouterr().err and not (tmp_path / "none").exists()
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoint").mkdir(parents=True)
    (interrupted / "checkpoint" / "settings.json").write_text(json.dumps({"settings": {"tokens": 512}}))
    assert finetune(sliced_dir, interrupted, "--resume") == 2  # other settings: refused, not copied
    assert "here but the run" in capsys.readouterr().err
