"""Fitness evaluation speed of OptiShearProblem on SmolLM2-135M.

    python benchmarks/fitness_speed.py [--candidates 8] [--naive 3]
    python benchmarks/fitness_speed.py --table-only      # results/fitness_speed.md from the saved JSON

Compares candidate evaluations per second of (a) ``OptiShearProblem.evaluate`` on a population
(one walk over the blocks: each block's variants formed from cached statistics, distinct prefixes
run once), (b) the same candidates one at a time (whole-model masks applied in place to one
working model, a full forward, restored: how the problem scored before the walk), (c) a naive
loop (deep-copy the model, collect its activation statistics, prune with the candidate's
metric, forward, compare with the dense logits), and (d) one dense forward of the same
calibration batch, the floor. Writes results/fitness_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    device_label,
    environment,
    markdown_table,
    save_json,
    speed_arguments,
    speed_setup,
)

from optishear_moo import OptiShearProblem  # noqa: E402
from optishear_moo.activations import collect_input_statistics  # noqa: E402
from optishear_moo.models import get_adapter  # noqa: E402
from optishear_moo.optishear import MetaMetric, metric_masks  # noqa: E402
from optishear_moo.pruning import apply_masks_  # noqa: E402


@torch.no_grad()
def naive_kl(model, calibration, dense_log_probs, metric, block_sparsity, batch_size) -> float:
    candidate = copy.deepcopy(model)
    layers = get_adapter(candidate).prunable_layers(candidate)
    statistics = collect_input_statistics(candidate, calibration, batch_size, layers)
    apply_masks_(layers, metric_masks(metric, layers, block_sparsity, statistics))
    device = next(candidate.parameters()).device
    log_probs = F.log_softmax(candidate(input_ids=calibration.to(device), use_cache=False).logits, -1)
    return float(F.kl_div(log_probs.flatten(0, 1), dense_log_probs.flatten(0, 1), log_target=True,
                          reduction="sum")) / calibration.numel()


def one_at_a_time(problem, X) -> np.ndarray:
    """The candidates scored one model at a time: whole-model masks applied in place, a full
    forward, restored (grouped by metric, as the problem did before its block walk)."""
    F = np.empty((len(X), problem.n_obj))
    order = sorted(range(len(X)), key=lambda i: repr(problem.space.decode(X[i])[0]))
    for i in order:
        metric, sparsity, _ = problem.space.decode(X[i])
        values = problem.evaluator.evaluate(problem.mask_builder.masks(metric, sparsity), problem.fidelity,
                                            problem.space.decode_update(X[i]))
        F[i] = [values[name] for name in problem.objectives]
    return F


def write_table(payload: dict) -> None:
    floor = payload["dense_forward_seconds"]
    rows = [[key, value["seconds_per_candidate"], value["ratio_to_dense_forward"],
             value.get("one_at_a_time_seconds_per_candidate")]
            for key, value in payload["problem"].items()]
    rows.append(["naive loop (deep copy, statistics, prune, forward)", payload["naive_seconds_per_candidate"],
                 payload["naive_seconds_per_candidate"] / floor, None])
    device = device_label(payload["environment"])
    text = (f"SmolLM2-135M, {payload['calibration']['n_samples']} x {payload['calibration']['seq_len']} "
            f"calibration tokens, {device}; one dense forward: {floor:.2f} s\n\n"
            + markdown_table(["evaluation (population)", "s / candidate (one block walk)", "vs dense forward",
                              "s / candidate one at a time"], rows)
            + f"\n\nSpeed-up over the naive loop: {payload['speedup_vs_naive_kl_random']:.2f}x (random "
            f"population), {payload['speedup_vs_naive_kl_converged']:.2f}x (converged); KL agrees with "
            f"the naive loop to {payload['max_relative_kl_difference_naive_vs_problem']:.1e} (relative).\n")
    (RESULTS / "fitness_speed.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed_arguments(parser, candidates=16)
    parser.add_argument("--naive", type=int, default=3, help="candidates for the naive loop")
    args = parser.parse_args()
    if args.table_only:
        write_table(json.loads((RESULTS / "fitness_speed.json").read_text()))
        return

    model, calibration, floor = speed_setup(args)
    batch_size = args.n_samples

    results = {}
    rng = np.random.default_rng(0)
    for objectives in (("kl",), ("kl", "reconstruction")):
        start = time.perf_counter()
        problem = OptiShearProblem(model, calibration, 0.5, objectives, batch_size=batch_size)
        setup = time.perf_counter() - start
        # "random": every candidate a different metric (first generation, worst case for the
        # per-metric rank cache); "converged": two metrics (Wanda, RIA), each with several
        # layerwise profiles, as in a population after a few generations
        random_X = rng.uniform(problem.xl, problem.xu, (args.candidates, problem.n_var))
        converged_X = random_X.copy()
        for i, metric in enumerate([MetaMetric.wanda(), MetaMetric.ria()] * (args.candidates // 2)):
            converged_X[i, :5] = problem.encode(metric)[:5]
        for regime, X in (("random", random_X), ("converged", converged_X)):
            start = time.perf_counter()
            walked = problem.evaluate(X, return_values_of=["F"])
            seconds = (time.perf_counter() - start) / len(X)
            start = time.perf_counter()
            alone = one_at_a_time(problem, X)
            alone_seconds = (time.perf_counter() - start) / len(X)
            key = f"{'+'.join(objectives)} ({regime} population)"
            results[key] = {"setup_seconds": setup, "seconds_per_candidate": seconds,
                            "candidates_per_second": 1 / seconds,
                            "ratio_to_dense_forward": seconds / floor,
                            "one_at_a_time_seconds_per_candidate": alone_seconds,
                            "max_relative_difference_to_one_at_a_time": float(
                                np.max(np.abs(walked - alone) / np.maximum(np.abs(alone), 1e-12)))}
            print(f"problem {key}: {seconds:.2f} s/candidate ({seconds / floor:.2f}x a dense "
                  f"forward), one at a time {alone_seconds:.2f} s; setup {setup:.1f} s", flush=True)

    with torch.no_grad():
        device = next(model.parameters()).device
        dense_log_probs = F.log_softmax(model(input_ids=calibration.to(device), use_cache=False).logits, -1)
    problem_kl = OptiShearProblem(model, calibration, 0.5, ("kl",), batch_size=batch_size)
    X = converged_X[: args.naive]
    start = time.perf_counter()
    naive = []
    for x in X:
        metric, sparsity, _ = problem_kl.space.decode(x)
        naive.append(naive_kl(model, calibration, dense_log_probs, metric, sparsity, batch_size))
    naive_seconds = (time.perf_counter() - start) / len(X)
    ours_kl = problem_kl.evaluate(X, return_values_of=["F"])[:, 0]
    agreement = float(np.max(np.abs(np.array(naive) - ours_kl) / np.maximum(ours_kl, 1e-12)))
    random_seconds = results["kl (random population)"]["seconds_per_candidate"]
    best = results["kl (converged population)"]["seconds_per_candidate"]
    print(f"naive loop: {naive_seconds:.2f} s/candidate; dense forward {floor:.2f} s; speed-up of "
          f"the problem (kl) {naive_seconds / random_seconds:.2f}x random, "
          f"{naive_seconds / best:.2f}x converged; max relative KL difference {agreement:.2e}",
          flush=True)

    payload = {"benchmark": "fitness_speed", "model": "smollm2-135m",
               "calibration": {"n_samples": args.n_samples, "seq_len": args.seq_len},
               "candidates": args.candidates, "dense_forward_seconds": floor,
               "naive_seconds_per_candidate": naive_seconds, "problem": results,
               "speedup_vs_naive_kl_random": naive_seconds / random_seconds,
               "speedup_vs_naive_kl_converged": naive_seconds / best,
               "max_relative_kl_difference_naive_vs_problem": agreement,
               "environment": environment()}
    save_json("fitness_speed", payload)
    write_table(payload)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = ["dense forward", *results, "naive loop"]
    values = [floor, *[r["seconds_per_candidate"] for r in results.values()], naive_seconds]
    ax.barh(labels, values)
    ax.set_xlabel("seconds per candidate (SmolLM2, 8x128 tokens)")
    fig.tight_layout()
    fig.savefig(RESULTS / "fitness_speed.png", dpi=120)


if __name__ == "__main__":
    main()
