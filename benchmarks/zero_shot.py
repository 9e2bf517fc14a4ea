"""Zero-shot accuracy of pruned SmolLM2-135M models (lm-evaluation-harness, offline task data).

    python benchmarks/zero_shot.py                    # full validation sets (a GPU is advisable)
    python benchmarks/zero_shot.py --limit 500 --tasks arc_easy,arc_challenge,piqa,winogrande,openbookqa \
        --name zero_shot_500                          # what this CPU affords (see docs/benchmarks.md)
    python benchmarks/zero_shot.py --resume           # keep the models a previous run finished
    python benchmarks/zero_shot.py --limit 500 --tasks arc_easy,...,hellaswag,boolq \
        --name zero_shot_500 --resume                 # add tasks: each model is built again (its
                                                      # perplexity must match the saved one) and
                                                      # evaluated on the missing tasks only

Models (``--models``, in this order; default: all but the extras): dense; SparseGPT at 50 and
70 % and Wanda at 50 % (``prune_model``, uniform); the level search at 50 and 70 % with
``search_evopress``'s defaults (the searched plan that beats uniform SparseGPT in
results/search_vs_baselines_seeds); EvoP removing 6 blocks (``search_evop``); DarwinLM at 1.5x
with one-shot selection (``search_darwinlm``, no post-training). Extras: Wanda and SparseGPT at
2:4, OptiShear with the OBS update at 50 % (``search_optishear``). Tasks: ARC-Easy,
ARC-Challenge, BoolQ, HellaSwag, PIQA, WinoGrande, OpenBookQA, 0-shot; acc and acc_norm with
lm-eval's standard errors. Every model records its nonzero parameters, so the plot puts average
accuracy against size. Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import RESULTS, device_label, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import (  # noqa: E402
    CalibrationSet,
    DarwinLMConfig,
    EvoPConfig,
    EvoPressConfig,
    OptiShearConfig,
    load_calibration,
    load_model,
    prune_model,
    search_darwinlm,
    search_evop,
    search_evopress,
    search_optishear,
)
from optishear_moo.evaluation import perplexity  # noqa: E402
from optishear_moo.evaluation.zero_shot import average_accuracy, check_tasks, zero_shot  # noqa: E402
from optishear_moo.evopress.config import GENERATIONS  # noqa: E402
from optishear_moo.pruning import DenseSnapshot  # noqa: E402

TASKS = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa"]
# labels hold no comma: --models is a comma-separated list of them
MODELS = ["dense", "sparsegpt 50%", "EvoPress levels 50%", "sparsegpt 70%", "EvoPress levels 70%",
          "wanda 50%", "EvoP (6 of 30 blocks removed)",
          "DarwinLM 1.5x (one-shot selection; no post-training)"]
EXTRAS = ["wanda 2:4", "sparsegpt 2:4", "OptiShear + OBS update 50%"]
COMPARED = {"50%": ("sparsegpt 50%", "EvoPress levels 50%"), "70%": ("sparsegpt 70%", "EvoPress levels 70%")}
"""The searched plan each uniform recipe is held against, per sparsity."""
RESUMED = ("limit", "eval_segments", "level_gens")
"""The settings a resumed run must share with the rows it keeps (``--tasks`` may add tasks)."""
SAME_MODEL = 1e-4
"""How far (relative) a rebuilt model's perplexity may stray from the saved row's before a resumed
run that adds tasks stops: further means the recipe no longer builds the model that was evaluated."""


def nonzero_parameters(model) -> int:
    """Parameters left (a tied embedding counted once): pruned weights are zeros, removed blocks
    and sliced heads are gone."""
    return sum(int(parameter.count_nonzero()) for parameter in model.parameters())


def check_task_flag(parser: argparse.ArgumentParser, tasks: str) -> list[str]:
    """``--tasks`` as a list of names (``check_tasks``); the parser's one-line error, before any
    model loads, when it names a task that neither the offline files nor lm-eval knows."""
    try:
        return check_tasks(tasks)
    except ValueError as error:
        parser.error(str(error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from: {', '.join(MODELS + EXTRAS)}")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-segments", type=int, default=16)
    parser.add_argument("--level-gens", type=int, default=GENERATIONS,
                        help="EvoPress level-search generations (default: EvoPressConfig's)")
    parser.add_argument("--name", default="zero_shot")
    parser.add_argument("--resume", action="store_true", help="keep the models a previous run finished")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODELS + EXTRAS]
    if unknown:
        parser.error(f"--models {unknown[0]!r}: choose from {', '.join(MODELS + EXTRAS)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit}: give a positive number of examples per task")
    tasks = check_task_flag(parser, args.tasks)

    path = RESULTS / f"{args.name}.json"
    payload = json.loads(path.read_text()) if args.resume and path.exists() else None
    if payload is not None:
        differ = [key for key in RESUMED if payload["settings"].get(key) != getattr(args, key)]
        if differ:
            parser.error(f"--resume: {args.name}.json was run with other --{differ[0].replace('_', '-')} "
                         f"({payload['settings'].get(differ[0])}); rerun with it or choose another --name")
        dropped = [t for t in saved_tasks(payload) if t not in tasks]
        if dropped:
            parser.error(f"--resume: {args.name}.json holds task {dropped[0]}; keep it in --tasks "
                         "(a resumed run may only add tasks) or choose another --name")
        payload["settings"]["tasks"] = args.tasks
    else:
        payload = {"benchmark": "zero_shot", "model": "smollm2-135m", "settings": vars(args),
                   "environment": environment(), "rows": []}
    rows = {row["model"]: row for row in payload["rows"]}
    model, tokenizer = load_model("smollm2-135m")
    calibration = load_calibration(tokenizer, 32, 512, seed=0)
    search_calibration = load_calibration(tokenizer, 8, 128, seed=0)
    validation = load_calibration(tokenizer, 8, 128, seed=0, source="wikitext2-valid")
    snapshot = DenseSnapshot.of(model)

    def baseline(method: str, pattern: str):
        def prune():
            sparsity = 0.5 if pattern == "2:4" else int(pattern[:-1]) / 100
            prune_model(model, calibration, method=method, sparsity=sparsity,
                        nm="2:4" if pattern == "2:4" else None, progress=False)
        return prune

    def levels(sparsity: float):
        def search():  # search_evopress's defaults: the database pruned at the target, its weights kept
            config = EvoPressConfig(sparsity, n_gen=args.level_gens)
            search_evopress(model, CalibrationSet(search_calibration, prune=calibration), config).apply(model)
        return search

    def optishear():
        windows = CalibrationSet(search_calibration, prune=calibration, validation=validation)
        search_optishear(model, windows, OptiShearConfig(0.5, update="obs", pop_size=8, n_gen=3)).apply(model)

    def evop():
        return search_evop(model, search_calibration, EvoPConfig(6)).apply(copy.deepcopy(model))

    def darwinlm():
        result = search_darwinlm(model, search_calibration, DarwinLMConfig(1.5, selection="one-shot"))
        return result.apply(copy.deepcopy(model))

    recipes = {"dense": lambda: None, "EvoPress levels 50%": levels(0.5), "EvoPress levels 70%": levels(0.7),
               "OptiShear + OBS update 50%": optishear, "EvoP (6 of 30 blocks removed)": evop,
               "DarwinLM 1.5x (one-shot selection; no post-training)": darwinlm}
    for method in ("wanda", "sparsegpt"):
        for pattern in ("50%", "70%", "2:4"):
            recipes[f"{method} {pattern}"] = baseline(method, pattern)

    for label in models:
        saved = rows.get(label)
        missing = [t for t in tasks if saved is None or t not in saved["tasks"]]
        if not missing:
            continue
        started = time.perf_counter()
        try:
            evaluated = recipes[label]() or model
            prepared = time.perf_counter() - started
            parameters = nonzero_parameters(evaluated)
            ppl = perplexity(evaluated, tokenizer, 1024, args.eval_segments).perplexity
            if saved is not None and abs(ppl / saved["ppl"] - 1) > SAME_MODEL:
                raise SystemExit(f"{label}: built again, its WikiText-2 ppl is {ppl:.4f}, not the saved "
                                 f"{saved['ppl']:.4f}, so it is not the model {args.name}.json evaluated; "
                                 "evaluate every task under another --name")
            result = zero_shot(evaluated, tokenizer, missing, args.limit, args.batch_size)
        finally:
            snapshot.restore()
        seconds = time.perf_counter() - started
        if saved is None:
            row = {"model": label, "ppl": ppl, "parameters": parameters, **result,
                   "prepare_seconds": prepared, "seconds": seconds}
            payload["rows"].append(row)
        else:  # the added tasks' results beside the saved ones, in --tasks order
            row = saved
            merged = {**row["tasks"], **result["tasks"]}
            row["tasks"] = {t: merged[t] for t in tasks if t in merged}
            row["average"] = average_accuracy(row["tasks"])
            row["added_seconds"] = row.get("added_seconds", 0.0) + seconds
        save_json(args.name, payload)
        average = row_average(row)
        print(f"{label:<44} {parameters / 1e6:6.1f} M  ppl {ppl:9.2f}  acc {average['acc']:.4f}  "
              f"acc_norm {average['acc_norm']:.4f} ±{average['acc_norm_stderr']:.4f}  "
              f"{seconds:.0f} s", flush=True)
    write_table(payload, args.name)


def saved_tasks(payload: dict) -> list[str]:
    """The tasks the saved rows hold, in order (every row holds them once a run has finished)."""
    return list(dict.fromkeys(task for row in payload["rows"] for task in row["tasks"]))


def row_average(row: dict) -> dict:
    """The row's average acc and acc_norm over its tasks, with the standard error of each average
    (tasks independent: the root of the summed squared errors over the number of tasks)."""
    tasks = row["tasks"].values()
    average = dict(row["average"])
    for metric in ("acc", "acc_norm"):
        errors = [task.get(f"{metric}_stderr") for task in tasks]
        known = errors and all(isinstance(e, (int, float)) for e in errors)  # lm-eval: "N/A" for 1 example
        average[f"{metric}_stderr"] = math.sqrt(sum(e * e for e in errors)) / len(errors) if known else None
    return average


def comparisons(rows: dict) -> list[str]:
    """A line per sparsity: the searched plan's average accuracy minus uniform SparseGPT's, with
    the standard error of the difference (the two rows' errors combined as if independent: an
    upper bound, since both models answer the same questions)."""
    lines = []
    for sparsity, (uniform, searched) in COMPARED.items():
        if uniform not in rows or searched not in rows:
            continue
        if list(rows[uniform]["tasks"]) != list(rows[searched]["tasks"]):
            continue  # a resumed run that adds tasks was stopped between the two
        a, b = row_average(rows[uniform]), row_average(rows[searched])
        parts = []
        for metric in ("acc", "acc_norm"):
            errors = (a[f"{metric}_stderr"], b[f"{metric}_stderr"])
            spread = f" ± {math.hypot(*errors):.3f}" if None not in errors else ""
            parts.append(f"{metric} {b[metric] - a[metric]:+.3f}{spread}")
        lines.append(f"- {sparsity}: {searched} minus {uniform}, average over the tasks: {'; '.join(parts)} "
                     f"(ppl {rows[searched]['ppl']:.2f} against {rows[uniform]['ppl']:.2f})")
    return lines


def write_table(payload: dict, name: str) -> None:
    tasks = saved_tasks(payload)
    header = ["model", "params (M)", "WikiText-2 ppl", *tasks, "average"]
    rows = []
    for row in payload["rows"]:
        cells = []
        for task in tasks:
            if task not in row["tasks"]:  # a resumed run that adds tasks has not reached this row
                cells.append("not run")
                continue
            result = row["tasks"][task]
            error = result["acc_norm_stderr"]
            spread = f" ±{error:.3f}" if isinstance(error, (int, float)) else ""
            cells.append(f"{result['acc']:.3f} / {result['acc_norm']:.3f}{spread}")
        average = row_average(row)
        spread = f" ±{average['acc_norm_stderr']:.3f}" if average["acc_norm_stderr"] is not None else ""
        size = row["parameters"] / 1e6 if "parameters" in row else None
        partial = f" ({len(row['tasks'])} tasks)" if len(row["tasks"]) < len(tasks) else ""
        rows.append([row["model"], size, row["ppl"], *cells,
                     f"{average['acc']:.3f} / {average['acc_norm']:.3f}{spread}{partial}"])
    limit = payload["settings"]["limit"]
    device = device_label(payload["environment"])
    counts = ", ".join(f"{t} {next(r['tasks'][t]['n'] for r in payload['rows'] if t in r['tasks'])}"
                       for t in tasks)
    lines = comparisons({row["model"]: row for row in payload["rows"]})
    text = (f"SmolLM2-135M, 0-shot, acc / acc_norm ± acc_norm's standard error; examples per task: {counts}"
            f"{' (the first ' + str(limit) + ' at most)' if limit else ''}; {device}\n\n"
            f"{markdown_table(header, rows)}\n" + ("\n" + "\n".join(lines) + "\n" if lines else ""))
    (RESULTS / f"{name}.md").write_text(text)
    plot(payload, name, len(tasks))
    print(text)


def plot(payload: dict, name: str, n_tasks: int) -> None:
    """Average accuracy (both metrics, ± one standard error) against nonzero parameters, for the rows
    that hold all ``n_tasks`` tasks."""
    rows = [row for row in payload["rows"] if "parameters" in row and len(row["tasks"]) == n_tasks]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for ax, metric in zip(axes, ("acc", "acc_norm")):
        for row in rows:
            average = row_average(row)
            size = row["parameters"] / 1e6
            ax.errorbar(size, average[metric], yerr=average[f"{metric}_stderr"], fmt="o", capsize=3)
            ax.annotate(row["model"], (size, average[metric]), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
        ax.set(xlabel="nonzero parameters (M)", ylabel=f"average 0-shot {metric}",
               title=f"SmolLM2-135M, {n_tasks} tasks: {metric}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
