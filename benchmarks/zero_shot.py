"""Zero-shot accuracy of pruned SmolLM2-135M models (lm-evaluation-harness, offline task data).

    python benchmarks/zero_shot.py --limit 50         # CPU: the first 50 examples of each task
    python benchmarks/zero_shot.py                    # full validation sets (a GPU is advisable)
    python benchmarks/zero_shot.py --resume           # keep the models a previous run finished

Models: dense; Wanda and SparseGPT at 50 % and 2:4 (``prune_model``); the plan of each search
method with the drivers' defaults where affordable: OptiShear with the OBS update at 50 %
(``search_optishear``), EvoPress levels at 50 % over a dense-input SparseGPT database, pruned
again block by block (``search_evopress``), EvoP removing 6 blocks (``search_evop``) and DarwinLM
at 1.5x with one-shot selection (``search_darwinlm``, no post-training). Tasks: ARC-Easy,
ARC-Challenge, BoolQ, HellaSwag, PIQA, WinoGrande, OpenBookQA, 0-shot; acc and acc_norm. Writes
results/zero_shot.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402

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
from optishear_moo.evaluation.zero_shot import zero_shot  # noqa: E402
from optishear_moo.evopress.config import GENERATIONS  # noqa: E402
from optishear_moo.pruning import DenseSnapshot  # noqa: E402

TASKS = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-segments", type=int, default=16)
    parser.add_argument("--level-gens", type=int, default=GENERATIONS,
                        help="EvoPress level-search generations (default: EvoPressConfig's)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    path = RESULTS / "zero_shot.json"
    payload = json.loads(path.read_text()) if args.resume and path.exists() else {
        "benchmark": "zero_shot", "model": "smollm2-135m", "settings": vars(args),
        "environment": environment(), "rows": []}
    done = {row["model"] for row in payload["rows"]}
    model, tokenizer = load_model("smollm2-135m")
    calibration = load_calibration(tokenizer, 32, 512, seed=0)
    search_calibration = load_calibration(tokenizer, 8, 128, seed=0)
    validation = load_calibration(tokenizer, 8, 128, seed=0, source="wikitext2-valid")
    snapshot = DenseSnapshot.of(model)

    def measure(label: str, prepare) -> None:
        if label in done:
            return
        started = time.perf_counter()
        try:
            evaluated = prepare() or model
            ppl = perplexity(evaluated, tokenizer, 1024, args.eval_segments).perplexity
            result = zero_shot(evaluated, tokenizer, args.tasks, args.limit, args.batch_size)
        finally:
            snapshot.restore()
        row = {"model": label, "ppl": ppl, **result, "seconds": time.perf_counter() - started}
        payload["rows"].append(row)
        save_json("zero_shot", payload)
        print(f"{label:<40} ppl {ppl:9.2f}  acc {result['average']['acc']:.4f}  "
              f"acc_norm {result['average']['acc_norm']:.4f}", flush=True)

    measure("dense", lambda: None)
    for method in ("wanda", "sparsegpt"):
        for pattern in ("50%", "2:4"):
            def baseline(method=method, pattern=pattern):
                prune_model(model, calibration, method=method, sparsity=0.5,
                            nm="2:4" if pattern == "2:4" else None, progress=False)

            measure(f"{method} {pattern}", baseline)

    def optishear():
        windows = CalibrationSet(search_calibration, prune=calibration, validation=validation)
        search_optishear(model, windows, OptiShearConfig(0.5, update="obs", pop_size=8, n_gen=3)).apply(model)

    def levels():
        config = EvoPressConfig(0.5, method="sparsegpt", database_inputs="dense", n_gen=args.level_gens)
        search_evopress(model, CalibrationSet(search_calibration, prune=calibration), config).apply(model)

    def evop():
        return search_evop(model, search_calibration, EvoPConfig(6)).apply(copy.deepcopy(model))

    def darwinlm():
        result = search_darwinlm(model, search_calibration, DarwinLMConfig(1.5, selection="one-shot"))
        return result.apply(copy.deepcopy(model))

    measure("OptiShear + OBS update 50%", optishear)
    measure("EvoPress levels 50%", levels)
    measure("EvoP, 6 of 30 blocks removed", evop)
    measure("DarwinLM 1.5x (one-shot, no post-training)", darwinlm)
    write_table(payload)


def write_table(payload: dict) -> None:
    tasks = list(payload["rows"][0]["tasks"])
    header = ["model", "WikiText-2 ppl", *tasks, "average"]
    rows = []
    for row in payload["rows"]:
        cells = [f"{row['tasks'][t]['acc']:.3f} / {row['tasks'][t]['acc_norm']:.3f}" for t in tasks]
        average = f"{row['average']['acc']:.3f} / {row['average']['acc_norm']:.3f}"
        rows.append([row["model"], row["ppl"], *cells, average])
    limit = payload["settings"]["limit"]
    environment_ = payload["environment"]
    device = environment_["cuda"] or f"CPU ({environment_['cpu_count']} cores)"
    counts = ", ".join(f"{t} {payload['rows'][0]['tasks'][t]['n']}" for t in tasks)
    text = (f"SmolLM2-135M, 0-shot, acc / acc_norm; examples per task: {counts}"
            f"{' (the first ' + str(limit) + ')' if limit else ''}; {device}\n\n"
            f"{markdown_table(header, rows)}\n")
    (RESULTS / "zero_shot.md").write_text(text)
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [row["model"] for row in payload["rows"]]
    ax.barh(labels, [row["average"]["acc"] for row in payload["rows"]], color="tab:blue", label="acc")
    ax.barh(labels, [row["average"]["acc_norm"] for row in payload["rows"]], height=0.3, color="tab:orange",
            label="acc_norm")
    ax.set(xlabel="average 0-shot accuracy", title="SmolLM2-135M, 7 tasks")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "zero_shot.png", dpi=120)
    print(text)


if __name__ == "__main__":
    main()
