"""Level-search fitness speed on SmolLM2-135M: one block-major walk per population against one
full forward per candidate.

    python benchmarks/level_fitness_speed.py [--candidates 16] [--n-samples 8] [--seq-len 128] [--stack 16]
    python benchmarks/level_fitness_speed.py --table-only   # results/level_fitness_speed.md from the JSON

Scores populations of ``LevelSearchProblem`` (EvoPress levels at 50 %, a SparseGPT database as
``search_evopress`` builds it) three ways: (a) the problem's own ``evaluate`` – one walk over the
blocks for the whole population, distinct prefixes run once; (b) one candidate at a time, its
levels stitched into the model and a full forward (how the problem scored before); (c) one
dense forward of the same tokens, the floor; and (a) again with ``--stack`` prefixes put through
a block in one pass (stacked weights, batched products; the evaluator's ``stack``, which
``"auto"`` sets to 1 on the CPU and from free memory on a GPU). Two populations: offspring of one
parent by level switches (what EvoPress's (1 + λ) search scores each generation) and independent random draws
on the budget (the first generation, worst case for sharing). Also the KL agreement of (a) and
(b) and the block passes (a) ran. Writes results/level_fitness_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    device_label,
    environment,
    markdown_table,
    peak_host_gib,
    save_json,
    speed_arguments,
    speed_setup,
)

from optishear_moo import LevelSearchProblem  # noqa: E402
from optishear_moo.evaluation import kl_to_dense  # noqa: E402
from optishear_moo.search.levels import BudgetSampling, LevelSwitchMutation  # noqa: E402


def populations(problem, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parent = BudgetSampling()._do(problem, 1, random_state=rng)
    offspring = LevelSwitchMutation()._do(problem, np.repeat(parent, n, axis=0), random_state=rng)
    return {"offspring of one parent": offspring,
            "random on the budget": BudgetSampling()._do(problem, n, random_state=rng)}


def write_table(payload: dict) -> None:
    floor = payload["dense_forward_seconds"]
    rows = []
    stacked = "stacked_seconds_per_candidate" in next(iter(payload["populations"].values()))
    for name, row in payload["populations"].items():
        walked, alone = row["block_major_seconds_per_candidate"], row["one_at_a_time_seconds_per_candidate"]
        rows.append([name, walked, walked / floor, alone, alone / floor, alone / walked,
                     f"{row['block_passes']} / {row['candidates'] * payload['n_blocks']}"]
                    + ([row["stacked_seconds_per_candidate"], row["stacked_seconds_per_candidate"] / floor]
                       if stacked else []))
    stack_columns = [f"stacked {payload['stack']} per pass s / cand.", "x forward"] if stacked else []
    device = device_label(payload["environment"])
    text = (f"SmolLM2-135M, EvoPress levels at 50 % ({payload['database_method']} database), "
            f"{payload['calibration']['n_samples']} x {payload['calibration']['seq_len']} calibration "
            f"tokens, {payload['candidates']} candidates per population, {device}; one dense forward: "
            f"{floor:.2f} s\n\n"
            + markdown_table(["population", "block-major s / cand.", "x forward", "one at a time s / cand.",
                              "x forward", "speed-up", "block passes run / needed one at a time",
                              *stack_columns], rows)
            + f"\n\nKL of the two paths agrees to {payload['max_relative_kl_difference']:.1e} (relative)"
            + (f", stacked and one prefix at a time to {payload['max_relative_kl_difference_stacked']:.1e}"
               if stacked else "") + "; "
            f"peak host memory {payload['peak_rss_gib']:.2f} GiB.\n")
    (RESULTS / "level_fitness_speed.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed_arguments(parser, candidates=16)
    parser.add_argument("--method", default="sparsegpt", help="the level database's pruning method")
    parser.add_argument("--stack", type=int, default=16,
                        help="prefixes per block pass in the stacked row (the evaluator's stack)")
    args = parser.parse_args()
    if args.table_only:
        write_table(json.loads((RESULTS / "level_fitness_speed.json").read_text()))
        return

    model, calibration, floor = speed_setup(args)
    batch_size = args.n_samples
    start = time.perf_counter()
    problem = LevelSearchProblem(model, calibration, 0.5, method=args.method, batch_size=batch_size,
                                 progress=True)
    print(f"problem with its database: {time.perf_counter() - start:.0f} s; dense forward {floor:.2f} s",
          flush=True)
    rows, agreement, stacked_agreement = {}, 0.0, 0.0
    for name, X in populations(problem, args.candidates).items():
        problem._scores.clear()
        forwards = problem.evaluator.n_block_forwards
        start = time.perf_counter()
        block_major = problem.evaluate(X, return_values_of=["F"])[:, 0]
        block_major_seconds = (time.perf_counter() - start) / len(X)
        passes = problem.evaluator.n_block_forwards - forwards
        problem._scores.clear()
        problem.evaluator.stack = args.stack
        start = time.perf_counter()
        stacked = problem.evaluate(X, return_values_of=["F"])[:, 0]
        stacked_seconds = (time.perf_counter() - start) / len(X)
        problem.evaluator.stack = "auto"
        stacked_agreement = max(stacked_agreement, float((np.abs(stacked - block_major) / block_major).max()))
        start = time.perf_counter()
        one_at_a_time = []
        for x in X:
            problem.stitch(problem.levels(x))
            one_at_a_time.append(kl_to_dense(model, problem.reference))
        one_seconds = (time.perf_counter() - start) / len(X)
        problem.restore_dense()
        difference = np.abs(block_major - one_at_a_time) / np.array(one_at_a_time)
        agreement = max(agreement, float(difference.max()))
        rows[name] = {"candidates": len(X), "distinct": len({tuple(x) for x in X}),
                      "block_major_seconds_per_candidate": block_major_seconds,
                      "one_at_a_time_seconds_per_candidate": one_seconds, "block_passes": passes,
                      "stacked_seconds_per_candidate": stacked_seconds}
        print(f"{name}: block-major {block_major_seconds:.2f} s/candidate ({passes} block passes), "
              f"stacked {args.stack} per pass {stacked_seconds:.2f}, one at a time {one_seconds:.2f} "
              "s/candidate", flush=True)
    payload = {"benchmark": "level_fitness_speed", "model": "smollm2-135m", "database_method": args.method,
               "calibration": {"n_samples": args.n_samples, "seq_len": args.seq_len},
               "candidates": args.candidates, "n_blocks": problem.evaluator.n_blocks,
               "dense_forward_seconds": floor, "populations": rows, "max_relative_kl_difference": agreement,
               "stack": args.stack, "max_relative_kl_difference_stacked": stacked_agreement,
               "peak_rss_gib": peak_host_gib(),
               "environment": environment()}
    save_json("level_fitness_speed", payload)
    write_table(payload)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(rows)
    y = np.arange(len(names))
    for shift, key, label in ((-0.27, "block_major", "block-major"), (0, "stacked", f"stacked {args.stack}"),
                              (0.27, "one_at_a_time", "one at a time")):
        ax.barh(y + shift, [rows[n][f"{key}_seconds_per_candidate"] for n in names], 0.27, label=label)
    ax.axvline(floor, color="k", ls="--", lw=0.8, label="dense forward")
    ax.set_yticks(y, names)
    ax.set_xlabel(f"seconds per candidate (SmolLM2, {args.n_samples}x{args.seq_len} tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "level_fitness_speed.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
