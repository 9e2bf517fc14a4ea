"""Baseline pruning on SmolLM2-135M: WikiText-2 test perplexity and time per method.

    python benchmarks/baselines.py            # full grid (about 30 min on 2 CPU cores)
    python benchmarks/baselines.py --quick    # 50% and 2:4 only

Methods magnitude, Wanda, RIA and SparseGPT at 50/60/70% unstructured (uniform and OWL
allocation) and 2:4. Writes results/baselines.json, results/baselines.md and
results/baselines.png; results are saved after every configuration.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import load_calibration, load_model, prune_model  # noqa: E402
from optishear_moo.evaluation import perplexity  # noqa: E402
from optishear_moo.pruning import DenseSnapshot, PruningConfig  # noqa: E402

METHODS = ["magnitude", "wanda", "ria", "sparsegpt"]


def grid(quick: bool) -> list[PruningConfig]:
    configs = []
    for method in METHODS:
        for sparsity in [0.5] if quick else [0.5, 0.6, 0.7]:
            for allocation in ["uniform"] if quick else ["uniform", "owl"]:
                configs.append(PruningConfig(method, sparsity, allocation=allocation))
        configs.append(PruningConfig(method, nm=(2, 4)))
    return configs


def label(config: PruningConfig) -> str:
    return "2:4" if config.nm else f"{config.sparsity:.0%}"


def plot(rows: list[dict], dense: float, path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        for allocation, style in (("uniform", "-o"), ("owl", "--s")):
            points = [(r["target_sparsity"], r["ppl"]) for r in rows
                      if r["method"] == method and r["allocation"] == allocation and not r["nm"]]
            if points:
                ax.plot(*zip(*sorted(points)), style, label=f"{method} ({allocation})")
    ax.axhline(dense, color="black", lw=0.8, label="dense")
    ax.set(xlabel="sparsity", ylabel="WikiText-2 test perplexity", yscale="log",
           title="SmolLM2-135M, unstructured")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-seq-len", type=int, default=1024)
    parser.add_argument("--eval-segments", type=int, default=16)
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed=0)
    evaluate = lambda: perplexity(model, tokenizer, args.eval_seq_len, args.eval_segments)  # noqa: E731
    start = time.perf_counter()
    dense = evaluate()
    payload = {
        "benchmark": "baselines",
        "model": "smollm2-135m",
        "calibration": {"source": "gutenberg", "n_samples": args.n_samples, "seq_len": args.seq_len},
        "evaluation": {"corpus": "wikitext2-test", "seq_len": args.eval_seq_len,
                       "segments": dense.n_segments, "tokens": dense.n_tokens},
        "dense_ppl": dense.perplexity,
        "dense_eval_seconds": time.perf_counter() - start,
        "environment": environment(),
        "rows": [],
    }
    print(f"dense ppl {dense.perplexity:.2f}", flush=True)
    snapshot = DenseSnapshot.of(model)
    for config in grid(args.quick):
        result = prune_model(model, calibration, config=config, progress=False)
        ppl = evaluate().perplexity
        snapshot.restore()
        row = {"method": config.method, "target_sparsity": config.sparsity,
               "nm": "2:4" if config.nm else None, "allocation": config.allocation,
               "achieved_sparsity": result.report.total, "ppl": ppl,
               "prune_seconds": result.seconds}
        payload["rows"].append(row)
        save_json("baselines", payload)
        print(f"{config.method:9s} {label(config):>4s} {config.allocation:7s} ppl {ppl:10.2f} "
              f"sparsity {result.report.total:.4f} {result.seconds:6.1f}s", flush=True)

    columns = ["50%", "60%", "70%", "2:4"]
    table_rows = []
    for method in METHODS:
        for allocation in ("uniform", "owl"):
            cells = {label(PruningConfig(r["method"], r["target_sparsity"], r["nm"], r["allocation"])):
                     r for r in payload["rows"]
                     if r["method"] == method and r["allocation"] == allocation}
            if cells:
                seconds = sum(r["prune_seconds"] for r in cells.values()) / len(cells)
                table_rows.append([method, allocation]
                                  + [cells[c]["ppl"] if c in cells else None for c in columns]
                                  + [seconds])
    table = markdown_table(["method", "allocation", *columns, "prune s (mean)"], table_rows)
    table = f"Dense: {dense.perplexity:.2f}\n\n{table}\n"
    (RESULTS / "baselines.md").write_text(table)
    plot(payload["rows"], dense.perplexity, RESULTS / "baselines.png")
    print(table)


if __name__ == "__main__":
    main()
