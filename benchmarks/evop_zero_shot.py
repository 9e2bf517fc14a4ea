"""Zero-shot accuracy of the blocks EvoP's benchmark removed: cluster sampling against random windows.

    python benchmarks/evop_zero_shot.py             # 6 blocks: sleb, shortgpt, evop 1+λ, evop+sleb 1+λ
    python benchmarks/evop_zero_shot.py --removals 3 6 --methods sleb shortgpt evop "evop 1+λ"
    python benchmarks/evop_zero_shot.py --limit 0 --name evop_zero_shot_full \
        --tasks arc_easy,arc_challenge,boolq,hellaswag,piqa,winogrande,openbookqa     # a GPU

EvoP's second claim is that calibration windows drawn by cluster sampling choose better blocks to
remove than random windows of the same token count. ``benchmarks/evop_budget.py`` (results/SOURCE.json)
chose blocks per method, seed and sampling and reports held-out perplexity; this script runs
lm-evaluation-harness 0-shot (``optishear_moo.evaluation.zero_shot``, the offline task files) on the
model with each chosen set of blocks removed (``remove_blocks_``, what ``EvoPResult.apply`` does),
and compares, seed by seed, each method's cluster-sampled choice with its random-window one.

Block removal changes no weights, so a set of blocks has one accuracy whichever method or draw
chose it: each distinct set is evaluated once, saved as it comes (results/NAME.json), and a rerun
with the same tasks and limit skips the sets it has. Methods are taken in the order given, each
seed's random and cluster choices together, so an interrupted run still holds whole pairs. The
table shows every draw whose two choices have been evaluated, whichever run's flags asked for them.
Writes results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    check_saved_settings,
    device_label,
    environment,
    markdown_table,
    save_figure,
    save_json,
    summary,
)
from evop_budget import METHODS  # noqa: E402
from zero_shot import check_task_flag, row_average  # noqa: E402

from optishear_moo import load_model  # noqa: E402
from optishear_moo.evaluation.zero_shot import zero_shot  # noqa: E402
from optishear_moo.evop.blocks import remove_blocks_  # noqa: E402

TASKS = "arc_easy,arc_challenge,piqa,winogrande,openbookqa"
"""The five tasks results/zero_shot_500 first ran (its rows now hold HellaSwag and BoolQ too)."""
DEFAULT_METHODS = ["sleb", "shortgpt", "evop 1+λ", "evop+sleb 1+λ"]


def pairs(source_rows: list[dict], removals: list[int], methods: list[str]) -> list[dict]:
    """The (removal, method, seed) draws that have both a random and a cluster choice, in the
    order of ``methods`` then seed, each with both choices' blocks and held-out perplexities."""
    by_key = {(r["n_removed"], r["method"], r["seed"], r["sampling"]): r for r in source_rows}
    found = []
    for method in methods:
        for n_remove in removals:
            for seed in sorted({r["seed"] for r in source_rows}):
                random_, cluster = (by_key.get((n_remove, method, seed, s)) for s in ("random", "cluster"))
                if random_ and cluster:
                    found.append({"n_removed": n_remove, "method": method, "seed": seed,
                                  "random": random_["removed_blocks"], "cluster": cluster["removed_blocks"],
                                  "random_ppl": random_["test_ppl"], "cluster_ppl": cluster["test_ppl"]})
    return found


def key(blocks: list[int]) -> str:
    return ",".join(str(b) for b in sorted(blocks))


def finished(draws: list[dict], accuracy: dict[str, dict]) -> list[dict]:
    """The draws whose random and cluster choices both have an accuracy."""
    return [d for d in draws if key(d["random"]) in accuracy and key(d["cluster"]) in accuracy]


def groups(draws: list[dict]) -> list[tuple[int, str]]:
    """The draws' (removal, method) pairs, by removal then in evop_budget's method order."""
    return sorted({(d["n_removed"], d["method"]) for d in draws}, key=lambda g: (g[0], METHODS.index(g[1])))


def comparisons(draws: list[dict], accuracy: dict[str, dict]) -> tuple[list[list], list[str]]:
    """The table's rows (per removal, method and sampling: accuracy median and range over seeds)
    and a line per (removal, method): in how many seeds the cluster-sampled choice scores a higher
    average accuracy than the random one, the median difference, and the held-out ppl ratio."""
    table, lines = [], []
    evaluated = finished(draws, accuracy)
    for n_remove, method in groups(evaluated):
        done = [d for d in evaluated if (d["n_removed"], d["method"]) == (n_remove, method)]
        for sampling in ("random", "cluster"):
            averages = [row_average(accuracy[key(d[sampling])]) for d in done]
            table.append([n_remove, method, sampling, len(done),
                          summary([d[f"{sampling}_ppl"] for d in done]),
                          summary([a["acc"] for a in averages], 3),
                          summary([a["acc_norm"] for a in averages], 3)])
        parts = []
        for metric in ("acc", "acc_norm"):
            differences = [row_average(accuracy[key(d["cluster"])])[metric]
                           - row_average(accuracy[key(d["random"])])[metric] for d in done]
            higher, lower = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
            parts.append(f"{metric} higher in {higher}, lower in {lower} of {len(done)} seeds "
                         f"(median difference {statistics.median(differences):+.3f})")
        same = sum(key(d["random"]) == key(d["cluster"]) for d in done)
        ratio = statistics.median(d["cluster_ppl"] / d["random_ppl"] for d in done)
        lines.append(f"{n_remove} blocks, {method}: cluster sampling against random windows: "
                     f"{'; '.join(parts)}; test ppl ratio {ratio:.3f}; the same blocks in {same} of "
                     f"{len(done)} seeds")
    return table, lines


def write_table(payload: dict, draws: list[dict], name: str) -> str:
    accuracy = payload["sets"]
    if not accuracy:
        return "no block set evaluated yet"
    table, lines = comparisons(draws, accuracy)
    first = next(iter(accuracy.values()))
    counts = ", ".join(f"{task} {result['n']}" for task, result in first["tasks"].items())
    errors = [e for e in (row_average(row)["acc_norm_stderr"] for row in accuracy.values()) if e is not None]
    sets = [[row["n_removed"], row["blocks"], row["ppl"],
             *(f"{row_average(row)[metric]:.3f}" for metric in ("acc", "acc_norm"))]
            for row in sorted(accuracy.values(), key=lambda r: (r["n_removed"], r["ppl"]))]
    limit = payload["settings"]["limit"]
    text = (f"SmolLM2-135M with the blocks of results/{payload['settings']['source']}.json removed; 0-shot "
            f"lm-evaluation-harness, average acc and acc_norm over {len(first['tasks'])} tasks ({counts}"
            f"{f', the first {limit} at most' if limit else ''}); "
            f"{device_label(payload['environment'])}; median [min, max] over seeds"
            + (f"; an average's standard error is about {statistics.median(errors):.3f}" if errors else "")
            + "\n\n" + markdown_table(["removed", "method", "sampling", "seeds", "test ppl", "avg acc",
                                         "avg acc_norm"], table) + "\n"
            + ("\n" + "\n".join(f"- {line}" for line in lines) + "\n" if lines else "")
            + "\nEvery block set evaluated:\n\n"
            + markdown_table(["removed", "blocks", "test ppl", "avg acc", "avg acc_norm"], sets) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    return text


def plot(payload: dict, draws: list[dict], name: str) -> None:
    """Per method: each seed's random-window and cluster-sampled choice's average acc_norm, joined."""
    accuracy = payload["sets"]
    done = finished(draws, accuracy)
    if not done:
        return
    order = groups(done)
    fig, ax = plt.subplots(figsize=(1.6 * len(order) + 3, 4.5))
    for x, group in enumerate(order):
        for d in (d for d in done if (d["n_removed"], d["method"]) == group):
            values = [row_average(accuracy[key(d[s])])["acc_norm"] for s in ("random", "cluster")]
            ax.plot([x - 0.15, x + 0.15], values, color="gray", lw=0.8)
            ax.scatter([x - 0.15], values[:1], color="tab:blue", marker="o",
                       label="random windows" if x == 0 and d["seed"] == 0 else None)
            ax.scatter([x + 0.15], values[1:], color="tab:orange", marker="s",
                       label="cluster sampling" if x == 0 and d["seed"] == 0 else None)
    ax.set_xticks(range(len(order)), [f"{n} blocks\n{m}" for n, m in order], fontsize=8)
    ax.set(ylabel="average 0-shot acc_norm (a line per seed)",
           title="SmolLM2-135M block removal: calibration windows and zero-shot accuracy")
    save_figure(fig, ax, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="evop_budget", help="results/SOURCE.json of evop_budget.py")
    parser.add_argument("--removals", type=int, nargs="+", default=[6])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS, metavar="METHOD",
                        help=f"from {', '.join(METHODS)}, taken in this order")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--limit", type=int, default=500, help="examples per task (0: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--name", default="evop_zero_shot", help="results/NAME.{json,md,png}")
    args = parser.parse_args()
    if args.limit < 0:
        parser.error(f"--limit {args.limit}: give a number of examples per task, or 0 for all")
    check_task_flag(parser, args.tasks)
    source = RESULTS / f"{args.source}.json"
    if not source.is_file():
        parser.error(f"--source: {source} not found; run benchmarks/evop_budget.py first")
    source_rows = json.loads(source.read_text())["rows"]
    draws = pairs(source_rows, args.removals, args.methods)
    if not draws:
        parser.error(f"--source {args.source}: no draw with both samplings for removals {args.removals} "
                     f"and methods {args.methods}; run evop_budget.py with --samplings random cluster")

    path = RESULTS / f"{args.name}.json"
    payload = json.loads(path.read_text()) if path.is_file() else None
    settings = {"source": args.source, "tasks": args.tasks, "limit": args.limit}
    check_saved_settings(parser, path, payload and payload["settings"], settings)  # its sets' settings
    if payload is None:
        payload = {"benchmark": "evop_zero_shot", "model": "smollm2-135m", "settings": settings,
                   "environment": environment(), "sets": {}}
    todo = list(dict.fromkeys(key(d[s]) for d in draws for s in ("random", "cluster")))
    todo = [blocks for blocks in todo if blocks not in payload["sets"]]
    print(f"{len(draws)} draws, {len(todo)} block sets to evaluate ({len(payload['sets'])} done)", flush=True)

    model, tokenizer = load_model("smollm2-135m") if todo else (None, None)
    ppl_of = {key(d[s]): d[f"{s}_ppl"] for d in draws for s in ("random", "cluster")}
    for number, blocks in enumerate(todo, 1):
        started = time.perf_counter()
        removed = [int(b) for b in blocks.split(",")]
        pruned = remove_blocks_(copy.deepcopy(model), removed)
        result = zero_shot(pruned, tokenizer, args.tasks, args.limit or None, args.batch_size)
        del pruned
        row = {"blocks": blocks, "n_removed": len(removed), "ppl": ppl_of[blocks], **result,
               "seconds": time.perf_counter() - started}
        payload["sets"][blocks] = row
        save_json(args.name, payload)
        average = row_average(row)
        print(f"[{number}/{len(todo)}] blocks {blocks:<24} ppl {row['ppl']:7.2f}  acc {average['acc']:.4f}  "
              f"acc_norm {average['acc_norm']:.4f}  {row['seconds']:.0f} s", flush=True)
    if todo:
        payload["environment"] = environment()
        save_json(args.name, payload)
    # the table and plot show every draw whose two choices are evaluated, this run's or an earlier one's
    shown = pairs(source_rows, sorted({r["n_removed"] for r in source_rows}), METHODS)
    print(write_table(payload, shown, args.name))
    plot(payload, shown, args.name)


if __name__ == "__main__":
    main()
