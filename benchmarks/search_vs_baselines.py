"""OptiShear search against the baselines on SmolLM2-135M (WikiText-2 test perplexity).

    python benchmarks/baselines.py                  # first: the baseline rows it compares with
    python benchmarks/search_vs_baselines.py [--targets 0.5,0.6,0.7,2:4] [--pop 8 --gens 4]

For each target, an NSGA-II search (objectives KL + reconstruction, warm-started from the
baselines) on 8x128 calibration tokens; the front's lowest-KL plan is evaluated with the same
protocol as results/baselines.json. Writes results/search_vs_baselines.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import OptiShearProblem, load_calibration, load_model, perplexity  # noqa: E402
from optishear_moo.pruning import DenseSnapshot  # noqa: E402
from optishear_moo.search import make_algorithm, run_search  # noqa: E402

BASELINES = [("magnitude", "uniform"), ("wanda", "uniform"), ("ria", "uniform"),
             ("sparsegpt", "uniform"), ("wanda", "owl")]


def baseline_ppl(rows, target: str, method: str, allocation: str):
    for row in rows:
        label = row["nm"] or f"{row['target_sparsity']:g}"
        if label == target and row["method"] == method and row["allocation"] == allocation:
            return row["ppl"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.5,0.6,0.7,2:4")
    parser.add_argument("--pop", type=int, default=8)
    parser.add_argument("--gens", type=int, default=4)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    baselines_path = RESULTS / "baselines.json"
    if not baselines_path.exists():
        raise SystemExit("run benchmarks/baselines.py first: its rows are the comparison")
    baselines = json.loads(baselines_path.read_text())
    evaluation = baselines["evaluation"]

    model, tokenizer = load_model("smollm2-135m")
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed=0)
    payload = {"benchmark": "search_vs_baselines", "model": "smollm2-135m",
               "search": {"algorithm": "nsga2", "pop": args.pop, "gens": args.gens,
                          "objectives": ["kl", "reconstruction"],
                          "calibration": {"n_samples": args.n_samples, "seq_len": args.seq_len}},
               "evaluation": evaluation, "dense_ppl": baselines["dense_ppl"],
               "environment": environment(), "rows": []}
    for target in args.targets.split(","):
        nm = target if ":" in target else None
        start = time.perf_counter()
        problem = OptiShearProblem(model, calibration, 0.5 if nm else float(target), nm=nm)
        result = run_search(problem, make_algorithm("nsga2", problem, args.pop), ("n_gen", args.gens),
                            seed=0)
        search_seconds = time.perf_counter() - start
        plan = problem.decode(result.X[np.argmin(result.F[:, 0])])
        snapshot = DenseSnapshot.of(model)
        try:
            plan.apply(model)
            ppl = perplexity(model, tokenizer, evaluation["seq_len"], evaluation["segments"]).perplexity
        finally:
            snapshot.restore()
        row = {"target": target, "search_ppl": ppl, "plan": plan.to_dict(),
               "search_seconds": search_seconds,
               "evaluations": int(result.algorithm.evaluator.n_eval),
               "baselines": {f"{m} ({a})": baseline_ppl(baselines["rows"], target, m, a)
                             for m, a in BASELINES}}
        payload["rows"].append(row)
        save_json("search_vs_baselines", payload)
        print(f"{target}: search ppl {ppl:.2f} ({plan.metric.formula()}), "
              f"{search_seconds:.0f} s, {row['evaluations']} evaluations; baselines {row['baselines']}",
              flush=True)

    header = ["target", "OptiShear search", *[f"{m} ({a})" for m, a in BASELINES], "search s", "evals",
              "searched metric"]
    rows = [[r["target"], r["search_ppl"], *r["baselines"].values(), r["search_seconds"],
             r["evaluations"], r["plan"]["formula"]] for r in payload["rows"]]
    table = markdown_table(header, rows)
    (RESULTS / "search_vs_baselines.md").write_text(
        f"Dense: {baselines['dense_ppl']:.2f}\n\n{table}\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    positions = np.arange(len(rows))
    ax.bar(positions - 0.2, [r["search_ppl"] for r in payload["rows"]], 0.4, label="OptiShear search")
    ax.bar(positions + 0.2, [r["baselines"]["wanda (uniform)"] or np.nan for r in payload["rows"]],
           0.4, label="Wanda (uniform)")
    ax.set_xticks(positions, [r["target"] for r in payload["rows"]])
    ax.set(yscale="log", ylabel="WikiText-2 test perplexity", title="SmolLM2-135M")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "search_vs_baselines.png", dpi=120)
    print(table)


if __name__ == "__main__":
    main()
