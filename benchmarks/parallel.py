"""Candidates per second with the population evaluated on 1, 2, ... Ray workers.

    python benchmarks/parallel.py                     # SmolLM2-135M, 1 and 2 CPU workers
    python benchmarks/parallel.py --workers 1 2 4 8   # on a machine with more cores or GPUs

Evaluates the same population of OptiShear candidates (KL objective, 8 x 128 calibration
tokens) in this process (its default threads, then one thread), then on pools of N workers
(``OptiShearProblem(..., workers=N)``, what ``--workers N`` gives), and checks the objectives
agree. Each worker is one CPU process with one torch thread, or one GPU when the cluster has
GPUs. Writes results/parallel.{json,md,png}.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, device_label, environment, markdown_table, save_json  # noqa: E402

from optishear_moo import OptiShearProblem, load_calibration, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    import ray

    model, tokenizer = load_model(args.model)
    calibration = load_calibration(tokenizer, args.n_samples, args.seq_len, seed=0)
    settings = dict(target_sparsity=0.5, objectives=("kl",))
    problem = OptiShearProblem(model, calibration, **settings)
    X = np.random.default_rng(0).uniform(problem.xl, problem.xu, (args.candidates, problem.n_var))
    X[: len(X) // 2, :5] = problem.encode()[:5]  # half the population shares Wanda's metric

    rows, local = [], None
    for threads in (torch.get_num_threads(), 1):  # what a user gets without workers; then per process
        torch.set_num_threads(threads)
        start = time.perf_counter()
        F = problem.evaluate(X, return_values_of=["F"])
        seconds = time.perf_counter() - start
        local = F if local is None else local
        difference = float(np.max(np.abs(F - local) / np.maximum(np.abs(local), 1e-12)))
        rows.append({"workers": 0, "label": f"this process, {threads} thread(s)", "seconds": seconds,
                     "candidates_per_second": len(X) / seconds, "max_relative_difference": difference})
        print(f"local, {threads} thread(s): {len(X) / seconds:.3f} candidates/s", flush=True)
    # each worker runs one torch thread, as the 1-thread row does

    ray.init(include_dashboard=False, log_to_driver=False)
    for workers in args.workers:
        pooled = OptiShearProblem(model, calibration, **settings, workers=workers)
        pooled.evaluate(X[:workers], return_values_of=["F"])  # warm up every replica
        start = time.perf_counter()
        F = pooled.evaluate(X, return_values_of=["F"])
        seconds = time.perf_counter() - start
        difference = float(np.max(np.abs(F - local) / np.maximum(np.abs(local), 1e-12)))
        rows.append({"workers": workers, "label": f"{workers} Ray worker(s)", "seconds": seconds,
                     "candidates_per_second": len(X) / seconds, "max_relative_difference": difference})
        print(f"{workers} workers: {len(X) / seconds:.3f} candidates/s (objectives agree to "
              f"{difference:.1e})", flush=True)
        pooled.pool.shutdown()
    ray.shutdown()

    base = next(row for row in rows if row["workers"] == min(args.workers))
    for row in rows:
        row["speedup_vs_one_worker"] = row["candidates_per_second"] / base["candidates_per_second"]
    payload = {"benchmark": "parallel", "model": args.model, "settings": vars(args), "rows": rows,
               "environment": environment()}
    save_json("parallel", payload)
    device = device_label(payload["environment"])
    table = markdown_table(["evaluation", "candidates / s", "speed-up vs 1 worker", "max rel. difference"],
                           [[r["label"], r["candidates_per_second"], r["speedup_vs_one_worker"],
                             f"{r['max_relative_difference']:.1e}"] for r in rows])
    text = (f"{args.model}, {len(X)} OptiShear candidates (KL, {args.n_samples} x {args.seq_len} tokens), "
            f"{device}\n\n{table}\n")
    (RESULTS / "parallel.md").write_text(text)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([r["label"] for r in rows], [r["candidates_per_second"] for r in rows])
    ax.set(ylabel="candidates per second", title=f"{args.model} on {device}")
    fig.tight_layout()
    fig.savefig(RESULTS / "parallel.png", dpi=120)
    print(text)


if __name__ == "__main__":
    main()
