"""DarwinLM on SmolLM2-135M: structured pruning at ~1.5x and ~2x block-weight compression.

    python benchmarks/darwinlm.py                       # the budget recorded in results/darwinlm.json
    python benchmarks/darwinlm.py --gens 10 --offspring 16 --finetune-tokens 1024 4096 16384
    python benchmarks/darwinlm.py --targets 1.5 --gens 1 --offspring 2 --post-train-tokens 512   # a smoke run

For each target: uniform structured pruning (the most uniform level allocation), and
``search_darwinlm`` (what ``optishear-moo darwinlm`` runs) with one-shot selection and with
training-aware selection (same number of generations and offspring). Each result is then
post-trained on the same number of tokens and evaluated on WikiText-2 test before and after;
speed is measured against the dense model.
Writes results/darwinlm.json, results/darwinlm.md and results/darwinlm.png.
"""

from __future__ import annotations

import argparse
import copy
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import RESULTS, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import (  # noqa: E402
    CalibrationSet,
    DarwinLMConfig,
    SearchRun,
    StructuredPruningProblem,
    load_calibration,
    load_model,
    search_darwinlm,
)
from optishear_moo.darwinlm import StructuredLevelDatabase, apply_levels_  # noqa: E402
from optishear_moo.evaluation import measure_speed, perplexity  # noqa: E402
from optishear_moo.finetuning import post_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--gens", type=int, default=6)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--finetune-tokens", type=int, nargs="+", default=[512, 1024],
                        help="tokens per selection stage; survivors halve per stage down to 1")
    parser.add_argument("--post-train-tokens", type=int, default=8192)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eval-segments", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, args.seed)
    n_train = max(args.finetune_tokens + [args.post_train_tokens]) // args.seq_len
    training = load_calibration(tokenizer, n_train, args.seq_len, args.seed + 1, source="wikitext2-valid")
    dense_ppl = perplexity(model, tokenizer, 1024, args.eval_segments, progress=False).perplexity
    dense_speed = measure_speed(model, seq_len=256, new_tokens=32, repeats=3)
    started = time.perf_counter()
    database = StructuredLevelDatabase.build(model, calibration, progress=True)  # the uniform rows'
    # (each search builds the same database again from the same windows)
    payload = {"environment": environment(), "settings": vars(args), "dense_ppl": dense_ppl,
               "dense_speed": dense_speed.to_dict(), "database_seconds": time.perf_counter() - started,
               "rows": []}
    print(f"dense ppl {dense_ppl:.2f}; level database in {payload['database_seconds']:.0f} s")
    for target in args.targets:
        problem = StructuredPruningProblem(model, calibration, target, database=database, training=training,
                                           finetune_learning_rate=args.learning_rate)
        uniform = problem.levels(problem.uniform_levels(target))
        candidates = {"uniform": (uniform, problem.evaluator.evaluate(uniform), 0.0, 0)}
        problem.restore_dense()
        for selection in ("one-shot", "training-aware"):
            label = f"search {selection}"
            started = time.perf_counter()  # what optishear-moo darwinlm runs
            config = DarwinLMConfig(target, selection, tuple(args.finetune_tokens), args.learning_rate,
                                    n_offsprings=args.offspring, n_gen=args.gens)
            choice = search_darwinlm(model, CalibrationSet(calibration, training=training), config,
                                     SearchRun(seed=args.seed))
            candidates[label] = (np.array(choice.levels), choice.calibration_kl,
                                 time.perf_counter() - started, choice.n_evaluations)
        for label, (levels, kl, seconds, n_eval) in candidates.items():
            pruned = apply_levels_(copy.deepcopy(model), database, levels)
            before = perplexity(pruned, tokenizer, 1024, args.eval_segments, progress=False).perplexity
            post_train(pruned, training[: args.post_train_tokens // args.seq_len], args.learning_rate)
            after = perplexity(pruned, tokenizer, 1024, args.eval_segments, progress=False).perplexity
            speed = measure_speed(pruned, seq_len=256, new_tokens=32, repeats=3)
            row = {"target": target, "method": label, "levels": levels.tolist(),
                   "compression": 1 / problem.kept_share(levels), "calibration_kl": kl, "ppl_before": before,
                   "ppl_after": after, "search_seconds": seconds, "evaluations": n_eval,
                   "parameters": speed.parameters,
                   "prefill_speedup": dense_speed.prefill_seconds / speed.prefill_seconds,
                   "decode_speedup": speed.decode_tokens_per_second / dense_speed.decode_tokens_per_second}
            payload["rows"].append(row)
            save_json("darwinlm", payload)
            print(f"{target}x {label:22s} KL {kl:.3f} ppl {before:9.2f} -> {after:9.2f} "
                  f"prefill x{row['prefill_speedup']:.2f} decode x{row['decode_speedup']:.2f}")

    table = markdown_table(
        ["target", "method", "compression", "calib. KL", "ppl one-shot", "ppl post-trained",
         "params (M)", "prefill speed-up", "decode speed-up"],
        [[f"{r['target']}x", r["method"], r["compression"], r["calibration_kl"], r["ppl_before"],
          r["ppl_after"], r["parameters"] / 1e6, r["prefill_speedup"], r["decode_speedup"]]
         for r in payload["rows"]])
    (RESULTS / "darwinlm.md").write_text(f"Dense WikiText-2 test ppl {dense_ppl:.2f}\n\n{table}\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("uniform", "s"), ("search one-shot", "o"), ("search training-aware", "^")):
        rows = [r for r in payload["rows"] if r["method"] == method]
        ax.plot([r["compression"] for r in rows], [r["ppl_after"] for r in rows], marker=marker, label=method)
    ax.set(xlabel="block-weight compression", ylabel="WikiText-2 ppl after post-training", yscale="log",
           title="SmolLM2-135M structured pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "darwinlm.png", dpi=120)
    print(table)


if __name__ == "__main__":
    main()
